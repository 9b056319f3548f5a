// Command runstore-ferretdb runs FerretDB v1 as a local, Docker-free
// MongoDB-protocol server for development and tests: on its SQLite backend (the
// default), or on PostgreSQL with --handler postgresql --postgresql-url URL (an
// existing database; see docs/local-store.md for how the two compare).
//
// FerretDB is embedded through its public github.com/FerretDB/FerretDB/ferretdb
// package instead of `go install`-ing its own command: a main package in its own
// module path skips FerretDB's build/version/version.txt check, so no build tags,
// ldflags or generated files are needed.
//
// Build (from this directory; see deploy/local/README.md):
//
//	GOTOOLCHAIN=local GOFLAGS=-mod=mod go build -trimpath -o <out> .
//
// Logs go to stderr; once the listener is bound the MongoDB URI is printed as a
// single line on stdout. SIGINT/SIGTERM cancel the run context, which closes the
// listener and the SQLite databases cleanly.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net/http"
	_ "net/http/pprof" // served on --debug-addr only
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strings"
	"syscall"

	"github.com/FerretDB/FerretDB/ferretdb"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintf(os.Stderr, "runstore-ferretdb: %v\n", err)
		os.Exit(1)
	}
}

func run() error {
	addr := flag.String("addr", "127.0.0.1:27017", "TCP listen address (port 0 picks a free port)")
	dataDir := flag.String("data-dir", ".local/data/ferretdb", "directory holding one <database>.sqlite file per MongoDB database")
	logLevel := flag.String("log-level", "warn", "log level: debug, info, warn or error")
	handler := flag.String("handler", "sqlite", "storage backend: sqlite or postgresql")
	postgresURL := flag.String("postgresql-url", "", "with --handler postgresql: the database, e.g. postgres://user@127.0.0.1:5432/ferretdb")
	sqliteParams := flag.String("sqlite-params", "", "extra query parameters of the SQLite URL, e.g. _pragma=mmap_size(268435456)")
	debugAddr := flag.String("debug-addr", "", "if set, serve Go's profiles (/debug/pprof/) on this address, e.g. 127.0.0.1:6060")
	flag.Parse()

	if percent, set := gcPercent(os.Getenv); set {
		debug.SetGCPercent(percent)
	}
	if limit, set := memoryLimit(os.Getenv); set {
		debug.SetMemoryLimit(limit)
	}

	switch *handler {
	case "sqlite":
	case "postgresql", "pg":
		if *postgresURL == "" {
			return fmt.Errorf("--handler postgresql needs --postgresql-url")
		}
	default:
		return fmt.Errorf("bad --handler %q: sqlite or postgresql", *handler)
	}

	var level slog.Level
	if err := level.UnmarshalText([]byte(strings.ToUpper(*logLevel))); err != nil {
		return fmt.Errorf("bad --log-level %q: %w", *logLevel, err)
	}
	// See lazylog.go: FerretDB logs each SQL statement with attributes that slog would
	// otherwise format eagerly, even when the statement is never logged.
	logger := slog.New(newLazyHandler(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level})))

	// The SQLite backend requires the URL to name an existing directory and to end with "/".
	absDir, err := filepath.Abs(*dataDir)
	if err != nil {
		return fmt.Errorf("resolve data dir: %w", err)
	}
	if err = os.MkdirAll(absDir, 0o755); err != nil {
		return fmt.Errorf("create data dir: %w", err)
	}

	config := &ferretdb.Config{
		Listener:  ferretdb.ListenerConfig{TCP: *addr},
		Logger:    logger,
		Handler:   "sqlite",
		SQLiteURL: sqliteURL(absDir, *sqliteParams),
	}
	if *handler != "sqlite" {
		config.Handler = "postgresql"
		config.SQLiteURL = ""
		config.PostgreSQLURL = *postgresURL
	}
	if *debugAddr != "" {
		// Profiles of the server under load: CPU, goroutines, and where goroutines wait on
		// each other's mutexes (sampled 1 in 10 contention events).
		runtime.SetMutexProfileFraction(10)
		go func() {
			if err := http.ListenAndServe(*debugAddr, nil); err != nil { //nolint:gosec // local debugging only
				logger.Warn("debug handler stopped", "error", err)
			}
		}()
	}

	f, err := ferretdb.New(config)
	if err != nil {
		return err
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	// New has already bound the listener, so the URI (with the real port) is valid now.
	fmt.Println(f.MongoDBURI())

	if config.Handler == "sqlite" {
		go keepIDIndexes(ctx, absDir, logger) // see idindex.go
	}

	if err = f.Run(ctx); err != nil {
		return err
	}
	logger.Info("runstore-ferretdb stopped")

	return nil
}

// sqliteURL is the SQLite backend's URL: the data directory, our pragmas, then the
// --sqlite-params (applied after ours, so they can override them). FerretDB adds
// busy_timeout, journal_mode(wal) and auto_vacuum(none) to it; `synchronous` is left
// at the driver's compiled default for WAL, FULL (docs/local-store.md).
func sqliteURL(absDir, extra string) string {
	url := "file:" + filepath.ToSlash(absDir) + "/?" + strings.Join([]string{
		// Checkpoint the write-ahead log every 10,000 pages instead of SQLite's 1,000:
		// random-key index pages are rewritten by many transactions between two
		// checkpoints, and copied back once each. Inserts of commit-shaped documents
		// with random ids went from ~3,900 to ~4,600 docs/s.
		"_pragma=wal_autocheckpoint(10000)",
		// Statement journals in memory. FerretDB inserts up to 100 rows per INSERT
		// inside a transaction, and a statement that can fail half-way (a duplicate
		// `_id`) must be undoable on its own, so SQLite journals the pages it changes;
		// with the default temp_store that journal spills to a temporary file past
		// 64 KiB: an open, a pwrite per page and a close for nearly every statement
		// (15 % of FerretDB's CPU under the HTTP start bench). It only ever undoes a
		// statement of an open transaction, never read at recovery, so keeping it in
		// memory changes nothing that is on disk when a COMMIT returns. temp_store also
		// covers temporary tables and sorts: FerretDB's SQLite backend makes no
		// temporary tables, and its only ORDER BY (capped collections) walks the rowid.
		// Two things do use it, in memory now: `compact` with `full: true` (VACUUM
		// builds its copy of the database there) and an index built over a collection
		// that holds data (its sort). Runstore does neither on large collections; pass
		// `--sqlite-params _pragma=temp_store(file)` where it matters.
		"_pragma=temp_store(memory)",
	}, "&")
	if extra != "" {
		url += "&" + extra
	}
	return url
}

// defaultGCPercent is the Go collector's target (GOGC) the server runs with unless the
// environment sets GOGC: a collection when the heap has grown by 4x its live size, not
// Go's 2x. FerretDB allocates a few copies of every document it writes (BSON, its
// types.Document, the sjson text, SQLite's arguments), and with the default the
// collector's marking was ~5 % of its CPU and its write barriers and assists more:
// under bench/ferretdb_starts.py 400 cut FerretDB's CPU per start by ~15 % for ~10 MB
// more peak memory (docs/local-store.md, ninth session). The extra memory grows with the
// live heap: under inserts of 20,000 documents of 2 KB the peak went from ~210-230 MB to
// 455-525 MB, hence the soft limit below.
const defaultGCPercent = 400

// defaultMemoryLimit is the soft limit of the Go heap (GOMEMLIMIT) the server runs with
// unless the environment sets GOMEMLIMIT: near it the collector runs as often as it must
// instead of letting GOGC 400 grow the heap to 5x a large live heap. Above what the
// start benches use (~55 MB peak), so it changes nothing there.
const defaultMemoryLimit = 256 << 20

// memoryLimit is the soft memory limit to set, and whether to set one: none when
// GOMEMLIMIT is in the environment (the runtime has read it already).
func memoryLimit(getenv func(string) string) (int64, bool) {
	if getenv("GOMEMLIMIT") != "" {
		return 0, false
	}

	return defaultMemoryLimit, true
}

// gcPercent is the GOGC to set, and whether to set one: none when GOGC is in the
// environment (the runtime has read it already).
func gcPercent(getenv func(string) string) (int, bool) {
	if getenv("GOGC") != "" {
		return 0, false
	}

	return defaultGCPercent, true
}
