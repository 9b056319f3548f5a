package main

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
)

func TestIndexTablesDoesNotRecreateADroppedDatabase(t *testing.T) {
	file := filepath.Join(t.TempDir(), "dropped.sqlite")
	logger := slog.New(slog.NewTextHandler(os.Stderr, nil))
	if err := indexTables(context.Background(), file, logger); err == nil {
		t.Fatal("indexing a missing database file succeeded")
	}
	if _, err := os.Stat(file); !os.IsNotExist(err) {
		t.Fatalf("a missing database file was created (stat: %v)", err)
	}
}
