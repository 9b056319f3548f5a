package main

// FerretDB v1.24 (SQLite backend) answers a `{_id: <string or ObjectId>}` filter with
// `WHERE _ferretdb_sjson->'$._id' = ?`, but builds its own unique `_id` index on the
// expression `_ferretdb_sjson->"_id"`. SQLite only uses an expression index whose
// expression is written the same way, so every `_id` point read scans the whole table
// (measured: 200 reads over 4,000 documents took 19.8 s; with the fix below, 0.13 s).
//
// Runstore's storage rules make `_id` reads the hot path, so soon after FerretDB
// creates a collection table this wrapper rebuilds that table's unique `_id` index,
// under the same name, on the exact pushdown expression. Both expressions give the
// same JSON value for every document, so uniqueness (and FerretDB's duplicate-key
// error) is unchanged, and the table keeps a single `_id` index: an earlier version
// added a second, non-unique one, which every insert had to maintain as well (dropped
// here when found). FerretDB keeps its index list in its own metadata and never
// rebuilds this index; dropping the collection drops the table with its indexes.

import (
	"context"
	"database/sql"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	_ "modernc.org/sqlite" // the SQLite driver FerretDB itself uses
)

// FerretDB names a collection table's `_id` index `<table>__id_`.
const ferretIDIndexSuffix = "__id_"

// An earlier version's extra index, `<table>_runstore_id`.
const extraIDIndexSuffix = "_runstore_id"

// pushdownID is the expression FerretDB's `_id` filters use.
const pushdownID = `_ferretdb_sjson->'$._id'`

// keepIDIndexes watches dir's database files and fixes new tables' `_id` indexes until
// ctx ends.
func keepIDIndexes(ctx context.Context, dir string, logger *slog.Logger) {
	seen := map[string]string{} // database file -> stamp of its last check
	ticker := time.NewTicker(200 * time.Millisecond)
	defer ticker.Stop()

	for {
		files, _ := filepath.Glob(filepath.Join(dir, "*.sqlite"))
		for _, file := range files {
			stamp := fileStamp(file)
			if seen[file] == stamp {
				continue
			}
			if err := indexTables(ctx, file, logger); err != nil {
				logger.Warn("could not add _id indexes", "file", file, "error", err)
				continue // tried again at the next tick
			}
			seen[file] = stamp
		}

		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		}
	}
}

// fileStamp changes whenever the database or its write-ahead log is written to.
func fileStamp(file string) string {
	var parts []string
	for _, f := range []string{file, file + "-wal"} {
		if st, err := os.Stat(f); err == nil {
			parts = append(parts, fmt.Sprintf("%d:%d", st.ModTime().UnixNano(), st.Size()))
		}
	}
	return strings.Join(parts, "|")
}

func indexTables(ctx context.Context, file string, logger *slog.Logger) error {
	// mode=rw: a database dropped since the directory was listed must stay gone; the
	// default (rwc) would create an empty file that FerretDB then fails to open.
	db, err := sql.Open("sqlite", "file:"+filepath.ToSlash(file)+"?mode=rw&_pragma=busy_timeout(10000)")
	if err != nil {
		return err
	}
	defer db.Close()

	rows, err := db.QueryContext(ctx,
		`SELECT name, tbl_name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL`)
	if err != nil {
		return err
	}
	type index struct{ name, table string }
	var indexes []index // `_id` indexes not on the pushdown expression yet, extra ones
	for rows.Next() {
		var ix index
		var def string
		if err = rows.Scan(&ix.name, &ix.table, &def); err != nil {
			rows.Close()
			return err
		}
		stale := ix.name == ix.table+ferretIDIndexSuffix && !strings.Contains(def, pushdownID)
		if stale || ix.name == ix.table+extraIDIndexSuffix {
			indexes = append(indexes, ix)
		}
	}
	rows.Close()
	if err = rows.Err(); err != nil {
		return err
	}

	for _, ix := range indexes {
		if err = fixIndex(ctx, db, ix.name, ix.table); err != nil {
			return fmt.Errorf("%s: %w", ix.name, err)
		}
		logger.Debug("fixed _id index", "file", filepath.Base(file), "index", ix.name)
	}
	return nil
}

// fixIndex rebuilds FerretDB's `_id` index on the pushdown expression, or drops an
// extra index of an earlier version, in one transaction.
func fixIndex(ctx context.Context, db *sql.DB, name, table string) error {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback() //nolint:errcheck // a no-op after Commit

	if _, err = tx.ExecContext(ctx, fmt.Sprintf(`DROP INDEX %q`, name)); err != nil {
		return err
	}
	if strings.HasSuffix(name, ferretIDIndexSuffix) {
		q := fmt.Sprintf(`CREATE UNIQUE INDEX %q ON %q (%s)`, name, table, pushdownID)
		if _, err = tx.ExecContext(ctx, q); err != nil {
			return err
		}
	}
	return tx.Commit()
}
