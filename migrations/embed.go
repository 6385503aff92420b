// Package migrations embeds QuickScale's forward-only, numbered goose SQL
// migrations. River's own tables come from rivermigrate, not from here.
package migrations

import "embed"

// FS holds every migration file.
//
//go:embed *.sql
var FS embed.FS
