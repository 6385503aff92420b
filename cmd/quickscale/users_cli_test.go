package main

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/quickscale/quickscale/store"
	"github.com/quickscale/quickscale/store/storetest"
)

// acctCLI runs the quickscale command in-process on one isolated database.
type acctCLI struct {
	t     *testing.T
	env   map[string]string
	store *store.Store
}

func acctNewCLI(t *testing.T) *acctCLI {
	t.Helper()
	dbURL := storetest.NewDatabase(t)
	pool, err := store.OpenPool(context.Background(), dbURL, store.PoolOptions{MaxConns: 4, AppName: "quickscale-cli-test"})
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	return &acctCLI{t: t, env: map[string]string{"DATABASE_URL": dbURL, "LOG_LEVEL": "warn"}, store: store.New(pool, slog.New(slog.DiscardHandler))}
}

// run executes quickscale with args and stdin, returning stdout, stderr
// and the process exit code main would use.
func (c *acctCLI) run(stdin io.Reader, args ...string) (stdout, stderr string, code int) {
	c.t.Helper()
	var out, errb bytes.Buffer
	err := run(context.Background(), append([]string{"quickscale"}, args...), func(k string) string { return c.env[k] }, stdin, &out, &errb)
	code = exitCode(err, &errb)
	return out.String(), errb.String(), code
}

// user reads a live user by address.
func (c *acctCLI) user(email string) store.User {
	c.t.Helper()
	u, err := c.store.UserByEmail(context.Background(), email)
	require.NoError(c.t, err, "user %s", email)
	return u
}

func TestUsersCreateReadsPasswordFromStdin(t *testing.T) {
	t.Parallel()
	cli := acctNewCLI(t)

	out, errOut, code := cli.run(strings.NewReader("typed on stdin 123\n"), "users", "create", "--email", "ops@example.com")

	require.Equal(t, 0, code, "stderr: %s", errOut)
	require.NotContains(t, out, "password:", "a given password was printed")
	u := cli.user("ops@example.com")
	ok, rehash, err := store.VerifyPassword(t.Context(), "typed on stdin 123", u.PasswordHash)
	require.NoError(t, err)
	require.True(t, ok, "stored password is not the one from stdin")
	require.False(t, rehash, "stored with other than the OWASP parameters")
	require.Equal(t, store.RoleUser, u.Role)
	require.False(t, u.Verified())
}

func TestUsersCreateGeneratesAndPrintsPasswordWithoutStdin(t *testing.T) {
	t.Parallel()
	cli := acctNewCLI(t)

	out, errOut, code := cli.run(strings.NewReader(""), "users", "create", "--email", "generated@example.com")

	require.Equal(t, 0, code, "stderr: %s", errOut)
	m := regexp.MustCompile(`(?m)^password: (\S+)$`).FindStringSubmatch(out)
	require.NotNil(t, m, "no generated password printed in:\n%s", out)
	require.GreaterOrEqual(t, len(m[1]), store.MinPasswordLen)
	ok, _, err := store.VerifyPassword(t.Context(), m[1], cli.user("generated@example.com").PasswordHash)
	require.NoError(t, err)
	require.True(t, ok, "the printed password does not sign in")
}

func TestUsersCreateWithAdminAndVerifiedFlags(t *testing.T) {
	t.Parallel()
	cli := acctNewCLI(t)

	_, errOut, code := cli.run(strings.NewReader("admin password 1\n"), "users", "create", "--email", "root@example.com", "--admin", "--verified")

	require.Equal(t, 0, code, "stderr: %s", errOut)
	u := cli.user("root@example.com")
	require.Equal(t, store.RoleAdmin, u.Role)
	require.True(t, u.Verified())
}

func TestUsersCreateRejectsTooShortPassword(t *testing.T) {
	t.Parallel()
	cli := acctNewCLI(t)

	_, errOut, code := cli.run(strings.NewReader("short\n"), "users", "create", "--email", "weak@example.com")

	require.Equal(t, 2, code, "a password the command can judge itself is a usage mistake")
	require.Contains(t, errOut, "password")
	_, err := cli.store.UserByEmail(context.Background(), "weak@example.com")
	require.Equal(t, store.KindNotFound, store.ErrorKind(err), "a user was created with a short password")
}

func TestUsersCreateRefusesAddressTakenInAnotherCase(t *testing.T) {
	t.Parallel()
	cli := acctNewCLI(t)
	storetest.NewUser(t, cli.store, storetest.UserOpts{Email: "Dup@Example.com"})

	_, errOut, code := cli.run(strings.NewReader("another password\n"), "users", "create", "--email", "dup@example.com")

	require.Equal(t, 1, code)
	require.Contains(t, errOut, "already exists")
}

func TestUsersCreateWithoutEmailIsAUsageError(t *testing.T) {
	t.Parallel()
	cli := acctNewCLI(t)

	_, errOut, code := cli.run(strings.NewReader("some password\n"), "users", "create")

	require.Equal(t, 2, code, "stderr: %s", errOut)
	require.Contains(t, errOut, "--email")
}

func TestUsersPromoteMakesAdmin(t *testing.T) {
	t.Parallel()
	cli := acctNewCLI(t)
	storetest.NewUser(t, cli.store, storetest.UserOpts{Email: "promoted@example.com"})

	out, errOut, code := cli.run(nil, "users", "promote", "--email", "PROMOTED@example.com")

	require.Equal(t, 0, code, "stderr: %s", errOut)
	require.Contains(t, out, "promoted@example.com is now an admin")
	u := cli.user("promoted@example.com")
	require.Equal(t, store.RoleAdmin, u.Role)

	// Promoting an admin changes nothing and records nothing.
	out, errOut, code = cli.run(nil, "users", "promote", "--email", "promoted@example.com")
	require.Equal(t, 0, code, "stderr: %s", errOut)
	require.Contains(t, out, "already an admin")
	audit, err := cli.store.AuditFor(context.Background(), u.ID, 10)
	require.NoError(t, err)
	require.Len(t, audit, 1, "one promotion, one audit entry")
}

// An admin's role can be taken back: audited, and the sessions end so the
// rights go at once.
func TestUsersDemoteTakesTheAdminRoleAway(t *testing.T) {
	t.Parallel()
	cli := acctNewCLI(t)
	admin := storetest.NewUser(t, cli.store, storetest.UserOpts{Email: "former@example.com", Admin: true})
	storetest.NewUser(t, cli.store, storetest.UserOpts{Email: "remaining@example.com", Admin: true})

	out, errOut, code := cli.run(nil, "users", "demote", "--email", "former@example.com")

	require.Equal(t, 0, code, "stderr: %s", errOut)
	require.Contains(t, out, "former@example.com is no longer an admin (signed out everywhere)")
	u := cli.user("former@example.com")
	require.Equal(t, store.RoleUser, u.Role)
	require.Greater(t, u.SessionEpoch, admin.SessionEpoch, "the admin's sessions end")
	audit, err := cli.store.AuditFor(context.Background(), u.ID, 10)
	require.NoError(t, err)
	require.Len(t, audit, 1)
	require.Equal(t, "user.demote", audit[0].Action)

	out, _, code = cli.run(nil, "users", "demote", "--email", "former@example.com")
	require.Equal(t, 0, code)
	require.Contains(t, out, "not an admin; nothing changed")

	// The last admin stays one: nobody could reach the admin pages after.
	_, errOut, code = cli.run(nil, "users", "demote", "--email", "remaining@example.com")
	require.Equal(t, 1, code)
	require.Contains(t, errOut, "the last admin")
	require.Equal(t, store.RoleAdmin, cli.user("remaining@example.com").Role)
}

func TestUsersPromoteUnknownEmailFails(t *testing.T) {
	t.Parallel()
	cli := acctNewCLI(t)

	_, errOut, code := cli.run(nil, "users", "promote", "--email", "nobody@example.com")

	require.Equal(t, 1, code)
	require.Contains(t, errOut, `no user with email "nobody@example.com"`)
}

func TestUserCreatedByCLISignsInOnTheSite(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{})
	env := map[string]string{"DATABASE_URL": ta.app.cfg.DatabaseURL, "LOG_LEVEL": "warn"}
	var out, errb bytes.Buffer
	err := run(context.Background(), []string{"quickscale", "users", "create", "--email", "cli@example.com", "--admin", "--verified"},
		func(k string) string { return env[k] }, strings.NewReader("from the command line\n"), &out, &errb)
	require.NoError(t, err, "stderr: %s", errb.String())

	b := acctSignIn(ta, "cli@example.com", "from the command line")

	require.Equal(t, "/admin", b.get("/dashboard").Doc(t).Find("nav #nav-admin").AttrOr("href", ""))
}

// A script creating one user per line of a file feeds every command the
// same stdin: each must take its own line and leave the rest.
func TestUsersCreateReadsOnlyTheFirstLineOfStdin(t *testing.T) {
	t.Parallel()
	cli := acctNewCLI(t)
	stdin := strings.NewReader("first password 123\nsecond password 456\n")

	_, errOut, code := cli.run(stdin, "users", "create", "--email", "one@example.com")
	require.Equal(t, 0, code, "stderr: %s", errOut)
	rest, err := io.ReadAll(stdin)
	require.NoError(t, err)
	require.Equal(t, "second password 456\n", string(rest), "the command read past its line")
	ok, _, err := store.VerifyPassword(t.Context(), "first password 123", cli.user("one@example.com").PasswordHash)
	require.NoError(t, err)
	require.True(t, ok)
}

// An empty first line is an unset variable (echo "$PW"), not a request for
// a generated password: refused, nothing created.
func TestUsersCreateRefusesAnEmptyPasswordLine(t *testing.T) {
	t.Parallel()
	cli := acctNewCLI(t)

	out, errOut, code := cli.run(strings.NewReader("\n"), "users", "create", "--email", "unset@example.com")

	require.Equal(t, 2, code, "stdout: %s", out)
	require.Contains(t, errOut, "first line of stdin is empty")
	_, errOut, code = cli.run(strings.NewReader("   \t \n"), "users", "create", "--email", "unset@example.com")
	require.Equal(t, 2, code)
	require.Contains(t, errOut, "first line of stdin is empty", "a line of spaces is empty too")
	_, err := cli.store.UserByEmail(context.Background(), "unset@example.com")
	require.Equal(t, store.KindNotFound, store.ErrorKind(err), "a user was created without the password meant")
}

// Ctrl-C while the command waits for a password that never comes ends it.
func TestUsersCreateGivesUpWaitingForStdinWhenInterrupted(t *testing.T) {
	t.Parallel()
	cli := acctNewCLI(t)
	r, w := io.Pipe() // a writer that holds the pipe open and writes nothing
	t.Cleanup(func() { w.Close() })
	ctx, cancel := context.WithCancel(context.Background())
	cancel()

	var out, errb bytes.Buffer
	err := run(ctx, []string{"quickscale", "users", "create", "--email", "waits@example.com"}, func(k string) string { return cli.env[k] }, r, &out, &errb)

	require.ErrorIs(t, err, context.Canceled)
	require.Equal(t, exitInterrupted, exitCode(err, &errb))
	_, err = cli.store.UserByEmail(context.Background(), "waits@example.com")
	require.Equal(t, store.KindNotFound, store.ErrorKind(err))
}

// The user and its audit entry are one transaction: when the audit entry
// cannot be written there is no user either, and a retry is not refused
// as "already exists".
func TestUsersCreateWritesNoUserWithoutItsAuditEntry(t *testing.T) {
	t.Parallel()
	cli := acctNewCLI(t)
	ctx := context.Background()
	_, err := cli.store.Pool().Exec(ctx, `
CREATE FUNCTION test_refuse_audit() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'audit refused'; END $$;
CREATE TRIGGER test_refuse_audit BEFORE INSERT ON audit_log FOR EACH ROW EXECUTE FUNCTION test_refuse_audit();`)
	require.NoError(t, err)

	_, errOut, code := cli.run(strings.NewReader("a password 1234\n"), "users", "create", "--email", "atomic@example.com")
	require.Equal(t, 1, code)
	require.Contains(t, errOut, "audit refused")
	_, err = cli.store.UserByEmail(ctx, "atomic@example.com")
	require.Equal(t, store.KindNotFound, store.ErrorKind(err), "the user was written without its audit entry")

	_, err = cli.store.Pool().Exec(ctx, `DROP TRIGGER test_refuse_audit ON audit_log`)
	require.NoError(t, err)
	_, errOut, code = cli.run(strings.NewReader("a password 1234\n"), "users", "create", "--email", "atomic@example.com")
	require.Equal(t, 0, code, "the retry: %s", errOut)
}

// An API key printed to a stdout that cannot take it is lost: the command
// fails (exit 1) and says so, instead of reporting success.
func TestAPIKeyCreateFailsWhenTheKeyCannotBePrinted(t *testing.T) {
	t.Parallel()
	cli := acctNewCLI(t)
	storetest.NewUser(t, cli.store, storetest.UserOpts{Email: "full@example.com"})

	var errb bytes.Buffer
	err := run(context.Background(), []string{"quickscale", "apikeys", "create", "--email", "full@example.com", "--name", "ci"},
		func(k string) string { return cli.env[k] }, strings.NewReader(""), failingWriter{}, &errb)

	require.Equal(t, 1, exitCode(err, &errb))
	require.Contains(t, errb.String(), "could not write the output")
	require.Contains(t, errb.String(), "revoke the key")
}
