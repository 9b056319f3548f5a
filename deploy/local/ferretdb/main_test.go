package main

import (
	"database/sql"
	"path/filepath"
	"strings"
	"testing"

	_ "modernc.org/sqlite"
)

// openLikeFerretDB opens one database of the directory URL the way FerretDB's SQLite
// pool does: the file inside the directory, the URL's query, and journal_mode(wal)
// added (FerretDB adds it when the URL does not set it).
func openLikeFerretDB(t *testing.T, dirURL string) *sql.DB {
	t.Helper()
	dir, query, _ := strings.Cut(dirURL, "?")
	db, err := sql.Open("sqlite", dir+"test.sqlite?"+query+"&_pragma=journal_mode(wal)")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })
	db.SetMaxOpenConns(1)
	return db
}

func pragma(t *testing.T, db *sql.DB, name string) string {
	t.Helper()
	var v string
	if err := db.QueryRow("PRAGMA " + name).Scan(&v); err != nil {
		t.Fatalf("PRAGMA %s: %v", name, err)
	}
	return v
}

func TestSQLiteURLKeepsStatementJournalsInMemoryAndCommitsDurable(t *testing.T) {
	db := openLikeFerretDB(t, sqliteURL(t.TempDir(), ""))
	for name, want := range map[string]string{
		"temp_store":         "2", // MEMORY: statement journals never reach a file
		"synchronous":        "2", // FULL: each COMMIT fsyncs the write-ahead log
		"journal_mode":       "wal",
		"wal_autocheckpoint": "10000",
	} {
		if got := pragma(t, db, name); got != want {
			t.Errorf("PRAGMA %s = %s, want %s", name, got, want)
		}
	}
}

func TestSQLiteParamsComeAfterOursAndOverrideThem(t *testing.T) {
	url := sqliteURL(filepath.Join(t.TempDir(), "x"), "_pragma=temp_store(file)")
	if !strings.HasSuffix(url, "&_pragma=temp_store(file)") {
		t.Fatalf("extra parameters not last: %s", url)
	}
	db := openLikeFerretDB(t, sqliteURL(t.TempDir(), "_pragma=temp_store(file)"))
	if got := pragma(t, db, "temp_store"); got != "1" {
		t.Errorf("PRAGMA temp_store = %s with temp_store(file) given, want 1", got)
	}
}

func TestTheCollectorTargetIsOursUnlessGOGCIsSet(t *testing.T) {
	unset := func(string) string { return "" }
	if percent, set := gcPercent(unset); !set || percent != 400 {
		t.Errorf("gcPercent without GOGC = %d, %v; want 400, true", percent, set)
	}
	given := func(name string) string {
		if name == "GOGC" {
			return "100"
		}
		return ""
	}
	if _, set := gcPercent(given); set {
		t.Error("gcPercent overrides a GOGC given in the environment")
	}
}

func TestTheSoftMemoryLimitIsOursUnlessGOMEMLIMITIsSet(t *testing.T) {
	unset := func(string) string { return "" }
	if limit, set := memoryLimit(unset); !set || limit != 256<<20 {
		t.Errorf("memoryLimit without GOMEMLIMIT = %d, %v; want 256 MiB, true", limit, set)
	}
	given := func(name string) string {
		if name == "GOMEMLIMIT" {
			return "1GiB"
		}
		return ""
	}
	if _, set := memoryLimit(given); set {
		t.Error("memoryLimit overrides a GOMEMLIMIT given in the environment")
	}
}
