package main

// FerretDB v1.24 logs every SQL statement it runs as
//
//	tx.l.With(slog.Any("args", args)).DebugContext(ctx, ...)
//
// twice per statement (internal/util/fsql). slog's built-in handlers format the
// attributes given to With right away, whatever the level, so every insert had its
// documents' JSON quoted into a string that was then thrown away: a third of FerretDB's
// CPU under the engine's load (CPU profile of an engine benchmark run), twice that
// counting the garbage collection it caused.
//
// lazyHandler keeps With's attributes (and groups) as they are and applies them to the
// real handler only when a record is actually written.

import (
	"context"
	"log/slog"
	"slices"
)

type lazyHandler struct {
	inner slog.Handler
	// steps are the WithAttrs/WithGroup calls made on this handler, oldest first.
	steps []func(slog.Handler) slog.Handler
}

func newLazyHandler(inner slog.Handler) *lazyHandler {
	return &lazyHandler{inner: inner}
}

func (h *lazyHandler) Enabled(ctx context.Context, level slog.Level) bool {
	return h.inner.Enabled(ctx, level)
}

func (h *lazyHandler) Handle(ctx context.Context, record slog.Record) error {
	handler := h.inner
	for _, step := range h.steps {
		handler = step(handler)
	}
	return handler.Handle(ctx, record)
}

func (h *lazyHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	if len(attrs) == 0 {
		return h
	}
	return h.with(func(inner slog.Handler) slog.Handler { return inner.WithAttrs(attrs) })
}

func (h *lazyHandler) WithGroup(name string) slog.Handler {
	if name == "" {
		return h
	}
	return h.with(func(inner slog.Handler) slog.Handler { return inner.WithGroup(name) })
}

func (h *lazyHandler) with(step func(slog.Handler) slog.Handler) *lazyHandler {
	// Clip so that siblings derived from one parent never share a backing array.
	return &lazyHandler{inner: h.inner, steps: append(slices.Clip(h.steps), step)}
}
