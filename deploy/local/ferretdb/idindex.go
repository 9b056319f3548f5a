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
	"syscall"
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
	w := newIDIndexWatch(logger)
	defer w.close()
	ticker := time.NewTicker(200 * time.Millisecond)
	defer ticker.Stop()

	for {
		w.tick(ctx, dir)

		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		}
	}
}

// idIndexWatch keeps one connection per database file and reads its schema only when the
// schema changed. Opening a connection and reading sqlite_master at every tick after a
// write (as an earlier version did: under the HTTP start bench every tick follows a
// write) loads and parses the whole schema each time, about 5 % of FerretDB's CPU; a
// `PRAGMA schema_version` on an open connection reads a counter in the database header
// (through the WAL), and SQLite increments it at every CREATE or DROP.
type idIndexWatch struct {
	logger *slog.Logger
	dbs    map[string]*watchedDB // database file -> its connection and what was checked
}

type watchedDB struct {
	db      *sql.DB
	ino     uint64 // the file's inode: a database dropped and made again is a new file
	stamp   string // fileStamp at the last complete check
	version int64  // schema_version whose indexes were all found fixed; -1: none yet
}

func newIDIndexWatch(logger *slog.Logger) *idIndexWatch {
	return &idIndexWatch{logger: logger, dbs: map[string]*watchedDB{}}
}

func (w *idIndexWatch) close() {
	for file, d := range w.dbs {
		d.db.Close()
		delete(w.dbs, file)
	}
}

// tick checks every database file in dir once, and forgets the ones gone.
func (w *idIndexWatch) tick(ctx context.Context, dir string) {
	files, _ := filepath.Glob(filepath.Join(dir, "*.sqlite"))
	present := map[string]bool{}
	for _, file := range files {
		present[file] = true
		if err := w.check(ctx, file); err != nil {
			w.logger.Warn("could not add _id indexes", "file", file, "error", err)
			w.forget(file) // opened again and checked whole at the next tick
		}
	}
	for file := range w.dbs {
		if !present[file] {
			w.forget(file)
		}
	}
}

func (w *idIndexWatch) forget(file string) {
	if d, ok := w.dbs[file]; ok {
		d.db.Close()
		delete(w.dbs, file)
	}
}

// check fixes file's `_id` indexes if its schema changed since they were last all fixed.
func (w *idIndexWatch) check(ctx context.Context, file string) error {
	stamp := fileStamp(file)
	ino, err := fileInode(file)
	if err != nil {
		return err
	}
	d := w.dbs[file]
	if d != nil && d.ino != ino {
		w.forget(file) // dropped and made again since: its connection reads the old file
		d = nil
	}
	if d != nil && d.stamp == stamp {
		return nil // nothing written since the last check
	}
	if d == nil {
		// mode=rw: a database dropped since the directory was listed must stay gone; the
		// default (rwc) would create an empty file that FerretDB then fails to open.
		db, err := sql.Open("sqlite", "file:"+filepath.ToSlash(file)+"?mode=rw&_pragma=busy_timeout(10000)")
		if err != nil {
			return err
		}
		db.SetMaxOpenConns(1)
		d = &watchedDB{db: db, ino: ino, version: -1}
		w.dbs[file] = d
	}

	var version int64
	if err = d.db.QueryRowContext(ctx, `PRAGMA schema_version`).Scan(&version); err != nil {
		return err
	}
	if version != d.version {
		fixed, err := indexTables(ctx, d.db, filepath.Base(file), w.logger)
		if err != nil {
			return err
		}
		if fixed > 0 {
			// The schema changed under our own DROP and CREATE: the next check reads
			// sqlite_master once more, and records the version then.
			d.stamp = ""
			return nil
		}
		// Every index of this schema (or of a later one: the scan came after the read)
		// is right.
		d.version = version
	}
	d.stamp = stamp
	return nil
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

func fileInode(file string) (uint64, error) {
	st, err := os.Stat(file)
	if err != nil {
		return 0, err
	}
	sys, ok := st.Sys().(*syscall.Stat_t)
	if !ok {
		return 0, fmt.Errorf("%s: no inode", file)
	}
	return sys.Ino, nil
}

// indexTables fixes the `_id` indexes of db's tables that are not on the pushdown
// expression yet, and drops extra ones; it returns how many it changed.
func indexTables(ctx context.Context, db *sql.DB, name string, logger *slog.Logger) (int, error) {
	rows, err := db.QueryContext(ctx,
		`SELECT name, tbl_name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL`)
	if err != nil {
		return 0, err
	}
	type index struct{ name, table string }
	var indexes []index // `_id` indexes not on the pushdown expression yet, extra ones
	for rows.Next() {
		var ix index
		var def string
		if err = rows.Scan(&ix.name, &ix.table, &def); err != nil {
			rows.Close()
			return 0, err
		}
		stale := ix.name == ix.table+ferretIDIndexSuffix && !strings.Contains(def, pushdownID)
		if stale || ix.name == ix.table+extraIDIndexSuffix {
			indexes = append(indexes, ix)
		}
	}
	rows.Close()
	if err = rows.Err(); err != nil {
		return 0, err
	}

	for _, ix := range indexes {
		if err = fixIndex(ctx, db, ix.name, ix.table); err != nil {
			return 0, fmt.Errorf("%s: %w", ix.name, err)
		}
		logger.Debug("fixed _id index", "file", name, "index", ix.name)
	}
	return len(indexes), nil
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
