package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/quickscale/quickscale/store"
	"github.com/quickscale/quickscale/store/storetest"
)

// embeddedScript runs `quickscale dev` with no PostgreSQL reachable (a new
// network namespace has none), waits for /readyz, sends SIGTERM and checks
// that the embedded PostgreSQL stopped with it.
const embeddedScript = `
set -u
cd "$DIR"
./quickscale dev >out.txt 2>err.txt &
pid=$!
ready=no
for i in $(seq 1 120); do
  if wget -qO- http://127.0.0.1:8080/readyz 2>/dev/null | grep -q ready; then ready=yes; break; fi
  sleep 0.5
done
echo "ready=$ready"
wget -qO- http://127.0.0.1:8080/ 2>/dev/null | grep -q '<title>' && echo "home=ok"
kill -TERM $pid
wait $pid
echo "exit=$?"
if pgrep -f "$DIR/.data/postgres" >/dev/null; then echo "postgres=running"; else echo "postgres=stopped"; fi
`

func TestDevStartsEmbeddedPostgresWhenNoneAnswers(t *testing.T) {
	t.Parallel()
	for _, tool := range []string{"unshare", "su", "wget", "pgrep", "ip"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("this test needs %s: %v", tool, err)
		}
	}
	if postgresBinaries() == "" {
		t.Fatal("no PostgreSQL binaries under /usr/lib/postgresql (install Debian's postgresql)")
	}
	// Not t.TempDir: its parent is private to root, and nobody must reach it.
	dir, err := os.MkdirTemp("", "quickscale-embedded-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "quickscale")
	build := exec.Command("go", "build", "-o", bin, ".")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var cmd *exec.Cmd
	script := "DIR=" + dir + "\n" + embeddedScript
	if os.Geteuid() == 0 {
		// PostgreSQL refuses to run as root: run as nobody, in a network
		// namespace where nothing listens on 5432.
		inner := "ip link set lo up && su nobody -s /bin/sh -c " + shellQuote(script)
		cmd = exec.CommandContext(ctx, "unshare", "-n", "sh", "-c", inner)
	} else {
		cmd = exec.CommandContext(ctx, "unshare", "-rn", "sh", "-c", "ip link set lo up && sh -c "+shellQuote(script))
	}
	out, err := cmd.CombinedOutput()
	logs, _ := os.ReadFile(filepath.Join(dir, "err.txt"))
	stdout, _ := os.ReadFile(filepath.Join(dir, "out.txt"))
	if err != nil {
		t.Fatalf("script: %v\n%s\nstdout:\n%s\nlog:\n%s", err, out, stdout, tail(string(logs), 30))
	}
	for _, want := range []string{"ready=yes", "home=ok", "exit=0", "postgres=stopped"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("want %s in:\n%s\nstdout:\n%s\nlog:\n%s", want, out, stdout, tail(string(logs), 30))
		}
	}
	if !strings.Contains(string(stdout), "Started an embedded PostgreSQL") {
		t.Errorf("dev did not say it started an embedded PostgreSQL:\n%s", stdout)
	}
	if _, err := os.Stat(filepath.Join(dir, ".data", "postgres", "PG_VERSION")); err != nil {
		t.Errorf("no data directory under ./.data: %v", err)
	}
}

func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'"'"'`) + "'" }

// dev creates its database from either form of connection string, as the
// other subcommands accept both.
func TestEnsureDatabaseTakesKeyValueConnectionStrings(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	server, err := pgx.ParseConfig(storetest.ServerURL())
	if err != nil {
		t.Fatal(err)
	}
	name := fmt.Sprintf("qs_kv_%d", time.Now().UnixNano())
	dsn := fmt.Sprintf("host=%s port=%d user=%s dbname=%s sslmode=disable", server.Host, server.Port, server.User, name)
	if server.Password != "" {
		dsn += " password=" + server.Password
	}
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	if err := ensureDatabase(ctx, dsn, logger); err != nil {
		t.Fatalf("ensureDatabase(%s): %v", store.RedactURL(dsn), err)
	}
	admin, err := pgx.Connect(ctx, storetest.ServerURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_, _ = admin.Exec(context.Background(), "DROP DATABASE IF EXISTS "+name)
		admin.Close(context.Background())
	})
	var exists bool
	if err := admin.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)`, name).Scan(&exists); err != nil || !exists {
		t.Fatalf("database %s exists: %v (%v)", name, exists, err)
	}
	// Twice is fine: it exists.
	if err := ensureDatabase(ctx, dsn, logger); err != nil {
		t.Fatalf("second ensureDatabase: %v", err)
	}
}

// dev prints a new demo admin password at each start; sessions signed in
// with the old one end, as with any password change.
func TestDevSeedNewPasswordEndsOldSessions(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	ta := newTestApp(t, testAppOpts{NoWorkers: true})
	first, err := seedDev(ctx, ta.store)
	if err != nil {
		t.Fatal(err)
	}
	b := ta.browser()
	mustRedirect(t, acctLogin(b, first.AdminEmail, first.AdminPassword), "/dashboard")
	if !acctSignedIn(b) {
		t.Fatal("the demo admin could not sign in")
	}
	second, err := seedDev(ctx, ta.store)
	if err != nil {
		t.Fatal(err)
	}
	if second.AdminPassword == first.AdminPassword {
		t.Fatal("the password did not change")
	}
	if acctSignedIn(b) {
		t.Error("a session signed in with the old password survived the new one")
	}
}

// dev adds the demo services that are missing at each start, and leaves
// one an operator changed or retired as they left it.
func TestDevSeedKeepsAnOperatorsChangesToDemoServices(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	ta := newTestApp(t, testAppOpts{NoWorkers: true})
	_, err := seedDev(ctx, ta.store)
	require.NoError(t, err)
	demo := demoServices()
	require.GreaterOrEqual(t, len(demo), 2)
	cost, off := int64(7777), false
	_, _, err = ta.store.SetService(ctx, nil, store.ServiceChange{Slug: demo[0].Slug, CreditCost: &cost}, "test")
	require.NoError(t, err)
	_, _, err = ta.store.SetService(ctx, nil, store.ServiceChange{Slug: demo[1].Slug, Active: &off}, "test")
	require.NoError(t, err)
	_, err = ta.store.Pool().Exec(ctx, `DELETE FROM services WHERE slug = $1`, demo[len(demo)-1].Slug)
	require.NoError(t, err)

	_, err = seedDev(ctx, ta.store)
	require.NoError(t, err)
	svcs, err := ta.store.Services(ctx)
	require.NoError(t, err)
	bySlug := map[string]store.Service{}
	for _, sv := range svcs {
		bySlug[sv.Slug] = sv
	}
	require.EqualValues(t, 7777, bySlug[demo[0].Slug].CreditCost, "the operator's cost was put back")
	require.False(t, bySlug[demo[1].Slug].Active, "the retired demo service came back")
	require.Contains(t, bySlug, demo[len(demo)-1].Slug, "a missing demo service was not added")

	// The demo admin, demoted, is an admin again at the next start, and
	// the audit log says so.
	admin, err := ta.store.UserByEmail(ctx, demoAdminEmail)
	require.NoError(t, err)
	require.NoError(t, ta.store.InTx(ctx, func(tx pgx.Tx) error { return store.SetRole(ctx, tx, admin.ID, store.RoleUser) }))
	_, err = seedDev(ctx, ta.store)
	require.NoError(t, err)
	admin, err = ta.store.UserByEmail(ctx, demoAdminEmail)
	require.NoError(t, err)
	require.True(t, admin.IsAdmin())
	var audited int
	require.NoError(t, ta.store.Pool().QueryRow(ctx, `SELECT count(*) FROM audit_log WHERE action = 'user.promote' AND target_user_id = $1`, admin.ID).Scan(&audited))
	require.Equal(t, 1, audited, "the demo admin's promotion was not audited")
}
