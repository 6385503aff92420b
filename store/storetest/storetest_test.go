package storetest

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// A template of other migrations is dropped only when no test process is
// using it: a run of another checkout may be cloning databases from it.
func TestDropStaleKeepsATemplateAnotherProcessUses(t *testing.T) {
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, ServerURL())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	name := fmt.Sprintf("qs_tmpl_%016x_%d", time.Now().UnixNano(), time.Now().Add(-48*time.Hour).Unix())
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c, err := pgx.Connect(context.Background(), ServerURL())
		if err != nil {
			return
		}
		defer c.Close(context.Background())
		_, _ = c.Exec(context.Background(), "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize())
	})
	// dropStale runs under the build lock, as buildTemplate calls it: no
	// other process is building or naming a template meanwhile.
	if _, err := conn.Exec(ctx, "SELECT pg_advisory_lock($1)", templateLockKey); err != nil {
		t.Fatal(err)
	}
	defer conn.Exec(context.Background(), "SELECT pg_advisory_unlock($1)", templateLockKey) //nolint:errcheck
	// The other process, using the template.
	user, err := pgx.Connect(ctx, ServerURL())
	if err != nil {
		t.Fatal(err)
	}
	defer user.Close(ctx)
	if _, err := user.Exec(ctx, "SELECT pg_advisory_lock_shared($1)", templateUseKey(name)); err != nil {
		t.Fatal(err)
	}
	// Keep this code's own template: only the fake one is at stake.
	sum, err := migrationsHash()
	if err != nil {
		t.Fatal(err)
	}
	keep := "qs_tmpl_" + sum + "_"
	exists := func() bool {
		var ok bool
		if err := conn.QueryRow(ctx, "SELECT EXISTS (SELECT FROM pg_database WHERE datname = $1)", name).Scan(&ok); err != nil {
			t.Fatal(err)
		}
		return ok
	}

	dropStale(ctx, conn, keep)
	if !exists() {
		t.Fatal("a template in use by another process was dropped")
	}
	if _, err := user.Exec(ctx, "SELECT pg_advisory_unlock_shared($1)", templateUseKey(name)); err != nil {
		t.Fatal(err)
	}
	dropStale(ctx, conn, keep)
	if exists() {
		t.Fatal("a template nobody uses was kept")
	}
}
