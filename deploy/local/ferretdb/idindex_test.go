package main

import (
	"context"
	"database/sql"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestACheckDoesNotRecreateADroppedDatabase(t *testing.T) {
	file := filepath.Join(t.TempDir(), "dropped.sqlite")
	w := newIDIndexWatch(slog.New(slog.NewTextHandler(os.Stderr, nil)))
	defer w.close()
	if err := w.check(context.Background(), file); err == nil {
		t.Fatal("checking a missing database file succeeded")
	}
	if _, err := os.Stat(file); !os.IsNotExist(err) {
		t.Fatalf("a missing database file was created (stat: %v)", err)
	}
}

// ferretTable makes a collection table as FerretDB does: its unique `_id` index on an
// expression that is not the pushdown one.
func ferretTable(t *testing.T, file, table string) {
	t.Helper()
	db, err := sql.Open("sqlite", "file:"+file+"?_pragma=journal_mode(wal)")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	for _, q := range []string{
		fmt.Sprintf(`CREATE TABLE %q (_ferretdb_sjson TEXT)`, table),
		fmt.Sprintf(`CREATE UNIQUE INDEX %q ON %q (_ferretdb_sjson->"_id")`, table+ferretIDIndexSuffix, table),
		fmt.Sprintf(`INSERT INTO %q VALUES ('{"_id": 1}')`, table),
	} {
		if _, err = db.Exec(q); err != nil {
			t.Fatal(err)
		}
	}
}

// idIndexOnPushdown says whether table's `_id` index is on the pushdown expression.
func idIndexOnPushdown(t *testing.T, file, table string) bool {
	t.Helper()
	db, err := sql.Open("sqlite", "file:"+file+"?mode=ro")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var def string
	q := `SELECT sql FROM sqlite_master WHERE type = 'index' AND name = ?`
	if err = db.QueryRow(q, table+ferretIDIndexSuffix).Scan(&def); err != nil {
		t.Fatal(err)
	}
	return strings.Contains(def, pushdownID)
}

func TestTablesMadeAfterACheckAreFixedAtTheNext(t *testing.T) {
	ctx := context.Background()
	file := filepath.Join(t.TempDir(), "runstore.sqlite")
	w := newIDIndexWatch(slog.New(slog.NewTextHandler(os.Stderr, nil)))
	defer w.close()

	ferretTable(t, file, "runs")
	if err := w.check(ctx, file); err != nil {
		t.Fatal(err)
	}
	if !idIndexOnPushdown(t, file, "runs") {
		t.Fatal("the first table's _id index was not fixed")
	}
	for range 2 { // settles: the check after a fix reads the schema once more
		if err := w.check(ctx, file); err != nil {
			t.Fatal(err)
		}
	}

	ferretTable(t, file, "commits") // a schema change on the connection kept open
	if err := w.check(ctx, file); err != nil {
		t.Fatal(err)
	}
	if !idIndexOnPushdown(t, file, "commits") {
		t.Fatal("a table made after the schema was recorded was not fixed")
	}
}

func TestADatabaseDroppedAndMadeAgainIsCheckedAgain(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	file := filepath.Join(dir, "runstore.sqlite")
	w := newIDIndexWatch(slog.New(slog.NewTextHandler(os.Stderr, nil)))
	defer w.close()

	ferretTable(t, file, "runs")
	for range 3 {
		w.tick(ctx, dir)
	}
	if !idIndexOnPushdown(t, file, "runs") {
		t.Fatal("the table's _id index was not fixed")
	}

	for _, f := range []string{file, file + "-wal", file + "-shm"} {
		if err := os.Remove(f); err != nil && !os.IsNotExist(err) {
			t.Fatal(err)
		}
	}
	ferretTable(t, file, "runs") // the same name and schema version, a new file
	w.tick(ctx, dir)
	if !idIndexOnPushdown(t, file, "runs") {
		t.Fatal("the new database's _id index was not fixed")
	}
}
