// Package observability holds logging, Prometheus metrics and the HTTP and
// River instrumentation. Nothing in it is global: callers pass the registry
// and logger they own.
package observability

import (
	"io"
	"log/slog"
)

// NewLogger returns a structured logger writing text or JSON at level.
func NewLogger(w io.Writer, level slog.Level, format string) *slog.Logger {
	opts := &slog.HandlerOptions{Level: level}
	if format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}
