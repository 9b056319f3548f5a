package main

// FerretDB v1.24 (SQLite backend) answers a `{_id: <string or ObjectId>}` filter with
// `WHERE _ferretdb_sjson->'$._id' = ?`, but builds its own unique `_id` index on the
// expression `_ferretdb_sjson->"_id"`. SQLite only uses an expression index whose
// expression is written the same way, so every `_id` point read scans the whole table
// (measured: 200 reads over 4,000 documents took 19.8 s; with the index below, 0.13 s).
//
// Runstore's storage rules make `_id` reads the hot path, so this wrapper adds a plain
// (non-unique) index on the exact pushdown expression to every collection table, soon
// after FerretDB creates it. FerretDB does not know about this index: it never lists or
// drops it, and dropping the collection drops the table together with its indexes.

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

const idIndexSuffix = "_runstore_id"

// keepIDIndexes watches dir's database files and indexes new tables until ctx ends.
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
	db, err := sql.Open("sqlite", "file:"+filepath.ToSlash(file)+"?_pragma=busy_timeout(10000)")
	if err != nil {
		return err
	}
	defer db.Close()

	rows, err := db.QueryContext(ctx,
		`SELECT name FROM sqlite_master
		 WHERE type = 'table' AND sql LIKE '%_ferretdb_sjson%'
		 AND name NOT IN (SELECT tbl_name FROM sqlite_master WHERE type = 'index' AND name LIKE ?)`,
		"%"+idIndexSuffix,
	)
	if err != nil {
		return err
	}
	var tables []string
	for rows.Next() {
		var name string
		if err = rows.Scan(&name); err != nil {
			rows.Close()
			return err
		}
		tables = append(tables, name)
	}
	rows.Close()
	if err = rows.Err(); err != nil {
		return err
	}

	for _, table := range tables {
		q := fmt.Sprintf(`CREATE INDEX IF NOT EXISTS %q ON %q (_ferretdb_sjson->'$._id')`,
			table+idIndexSuffix, table)
		if _, err = db.ExecContext(ctx, q); err != nil {
			return fmt.Errorf("%s: %w", table, err)
		}
		logger.Debug("added _id index", "file", filepath.Base(file), "table", table)
	}
	return nil
}
