package main

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
)

// formatCounter counts how often slog formats it.
type formatCounter struct{ n *int }

func (c formatCounter) LogValue() slog.Value {
	*c.n++
	return slog.StringValue("formatted")
}

func TestLazyHandlerDefersWithAttrs(t *testing.T) {
	var out bytes.Buffer
	text := slog.NewTextHandler(&out, &slog.HandlerOptions{
		Level: slog.LevelWarn,
		ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
			if a.Key == slog.TimeKey {
				return slog.Attr{}
			}
			return a
		},
	})
	logger := slog.New(newLazyHandler(text))

	formats := 0
	quiet := logger.With("args", formatCounter{&formats})
	quiet.Debug("not written")
	if formats != 0 {
		t.Fatalf("attributes of an unwritten record were formatted %d times", formats)
	}
	if out.Len() != 0 {
		t.Fatalf("a debug record was written at warn level: %q", out.String())
	}

	// Written records carry every attribute and group, in order, as the plain handler does.
	parent := logger.With("a", 1).WithGroup("g")
	parent.With("b", 2).Warn("first", "c", 3)
	parent.With("d", 4).Warn("second")
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	want := []string{
		`level=WARN msg=first a=1 g.b=2 g.c=3`,
		`level=WARN msg=second a=1 g.d=4`,
	}
	if len(lines) != len(want) {
		t.Fatalf("got %d lines %q, want %q", len(lines), lines, want)
	}
	for i := range want {
		if lines[i] != want[i] {
			t.Errorf("line %d: got %q, want %q", i, lines[i], want[i])
		}
	}
}
