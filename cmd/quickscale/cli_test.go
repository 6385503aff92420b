package main

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/quickscale/quickscale/store"
	"github.com/quickscale/quickscale/store/storetest"
)

// cliStore opens a store on the database the CLI will use.
func cliStore(t *testing.T) (*store.Store, map[string]string) {
	t.Helper()
	dbURL := storetest.NewDatabase(t)
	pool, err := store.OpenPool(context.Background(), dbURL, store.PoolOptions{MaxConns: 4})
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	return store.New(pool, discardLogger()), map[string]string{"DATABASE_URL": dbURL}
}

func TestCreditsGrantAddsCreditsWithReasonAndAudit(t *testing.T) {
	t.Parallel()
	st, env := cliStore(t)
	u := storetest.NewUser(t, st, storetest.UserOpts{})
	code, stdout, stderr := runCmd(t, env, "", "credits", "grant", "--email", strings.ToUpper(u.Email),
		"--amount", "250", "--kind", "subscription", "--expires", "2099-01-31T00:00:00Z", "--reason", "migration from old system")
	require.Equal(t, 0, code, stderr)
	require.Contains(t, stdout, "granted 250 subscription credits")
	bal, err := st.Balance(context.Background(), u.ID)
	require.NoError(t, err)
	if bal.ByKind[store.GrantSubscription] != 250 || bal.NextExpiry == nil || bal.NextExpiry.Year() != 2099 {
		t.Fatalf("balance after grant: %+v", bal)
	}
	audit, err := st.AuditFor(context.Background(), u.ID, 5)
	require.NoError(t, err)
	if len(audit) != 1 || audit[0].ActorUserID != nil || audit[0].Details["reason"] != "migration from old system" {
		t.Fatalf("audit: %+v", audit)
	}
	code, stdout, _ = runCmd(t, env, "", "credits", "balance", "--email", u.Email)
	require.Equal(t, 0, code)
	for _, want := range []string{"250 credits", "subscription  250", "next expiry   250 credits at 2099-01-31T00:00:00Z"} {
		if !strings.Contains(stdout, want) {
			t.Errorf("balance output lacks %q:\n%s", want, stdout)
		}
	}
	code, stdout, stderr = runCmd(t, env, "", "credits", "grant", "--email", u.Email, "--amount", "1", "--kind", "promo", "--reason", "one for luck")
	require.Equal(t, 0, code, stderr)
	require.Contains(t, stdout, "granted 1 promo credit to")
	// A zero-padded amount is decimal (Go's flags read 010 as octal 8), and
	// an address pasted with spaces around it is found.
	code, stdout, stderr = runCmd(t, env, "", "credits", "grant", "--email", " "+u.Email+" ", "--amount", "010", "--kind", "promo", "--reason", "padded")
	require.Equal(t, 0, code, stderr)
	require.Contains(t, stdout, "granted 10 promo credits to")
	// One credit is "1 credit" in the balance too.
	other := storetest.NewUser(t, st, storetest.UserOpts{})
	storetest.NewGrant(t, st, other.ID, storetest.GrantOpts{Amount: 1})
	code, stdout, _ = runCmd(t, env, "", "credits", "balance", "--email", other.Email)
	require.Equal(t, 0, code)
	require.Contains(t, stdout, other.Email+": 1 credit\n")
}

// A script that runs the same grant again with its --key (it lost the
// answer, it retries) grants once; the key with other values is refused.
func TestCreditsGrantWithAKeyGrantsOnce(t *testing.T) {
	t.Parallel()
	st, env := cliStore(t)
	u := storetest.NewUser(t, st, storetest.UserOpts{})
	args := []string{"credits", "grant", "--email", u.Email, "--amount", "40", "--kind", "promo", "--reason", "spring campaign", "--key", "spring-2026:user-1"}
	code, stdout, stderr := runCmd(t, env, "", args...)
	require.Equal(t, 0, code, stderr)
	require.Contains(t, stdout, "granted 40 promo credits")
	code, stdout, stderr = runCmd(t, env, "", args...)
	require.Equal(t, 0, code, stderr)
	require.Contains(t, stdout, "already granted under --key spring-2026:user-1: nothing changed")
	bal, err := st.Balance(context.Background(), u.ID)
	require.NoError(t, err)
	require.EqualValues(t, 40, bal.Total)

	other := append(append([]string{}, args[:5]...), "41", "--kind", "promo", "--reason", "spring campaign", "--key", "spring-2026:user-1")
	code, _, stderr = runCmd(t, env, "", other...)
	require.Equal(t, 1, code, stderr)
	require.NotEmpty(t, strings.TrimSpace(stderr))
	bal, err = st.Balance(context.Background(), u.ID)
	require.NoError(t, err)
	require.EqualValues(t, 40, bal.Total, "the key reused with another amount changed the balance")
	require.Contains(t, stderr, "Use another key")

	// One key per campaign, for every user: each user gets the grant once.
	second := storetest.NewUser(t, st, storetest.UserOpts{})
	for range 2 {
		code, _, stderr = runCmd(t, env, "", append([]string{"credits", "grant", "--email", second.Email}, args[4:]...)...)
		require.Equal(t, 0, code, stderr)
	}
	bal, err = st.Balance(context.Background(), second.ID)
	require.NoError(t, err)
	require.EqualValues(t, 40, bal.Total, "the second user of the same key")
}

func TestCreditsGrantRefusesBadInput(t *testing.T) {
	t.Parallel()
	st, env := cliStore(t)
	u := storetest.NewUser(t, st, storetest.UserOpts{})
	// Each case: its flags and what stderr must say. A mistake in the
	// flags is a usage error (2); an unknown user is not (1).
	cases := map[string]struct {
		args []string
		says string
	}{
		"no reason":          {[]string{"--email", u.Email, "--amount", "5"}, "--reason is required"},
		"zero amount":        {[]string{"--email", u.Email, "--amount", "0", "--reason", "x"}, "--amount must be"},
		"bad kind":           {[]string{"--email", u.Email, "--amount", "5", "--kind", "gift", "--reason", "x"}, `--kind "gift"`},
		"bad expiry":         {[]string{"--email", u.Email, "--amount", "5", "--kind", "promo", "--expires", "tomorrow", "--reason", "x"}, "want RFC 3339"},
		"pack with expiry":   {[]string{"--email", u.Email, "--amount", "5", "--kind", "pack", "--expires", "2099-01-01T00:00:00Z", "--reason", "x"}, "takes no --expires"},
		"sub without expiry": {[]string{"--email", u.Email, "--amount", "5", "--kind", "subscription", "--reason", "x"}, "needs --expires"},
		"unknown user":       {[]string{"--email", "nobody@example.com", "--amount", "5", "--reason", "x"}, "no user with email"},
		"huge amount":        {[]string{"--email", u.Email, "--amount", "9223372036854775807", "--reason", "x"}, "--amount must be"},
		// Go's own int flags read these as 16 and 1000.
		"hex amount":          {[]string{"--email", u.Email, "--amount", "0x10", "--reason", "x"}, "want a whole number in decimal"},
		"underscored amount":  {[]string{"--email", u.Email, "--amount", "1_000", "--reason", "x"}, "want a whole number in decimal"},
		"over the cap":        {[]string{"--email", u.Email, "--amount", "1000000001", "--reason", "x"}, "from 1 to 1000000000"},
		"past expiry":         {[]string{"--email", u.Email, "--amount", "5", "--kind", "promo", "--expires", "2001-01-01T00:00:00Z", "--reason", "x"}, "not in the future"},
		"expiry after 9999":   {[]string{"--email", u.Email, "--amount", "5", "--kind", "promo", "--expires", "9999-12-31T23:59:59-01:00", "--reason", "x"}, "at most 100 years less a day"},
		"expiry in 101 years": {[]string{"--email", u.Email, "--amount", "5", "--kind", "admin", "--expires", time.Now().UTC().AddDate(101, 0, 0).Format(time.RFC3339), "--reason", "x"}, "at most 100 years less a day"},
		"email not UTF-8":     {[]string{"--email", u.Email + "\xff", "--amount", "5", "--reason", "x"}, "--email is not valid text"},
		"long reason":         {[]string{"--email", u.Email, "--amount", "5", "--reason", strings.Repeat("é", 501)}, "at most 500 characters"},
		"bad key":             {[]string{"--email", u.Email, "--amount", "5", "--reason", "x", "--key", "two words"}, "--key must be"},
		"empty key":           {[]string{"--email", u.Email, "--amount", "5", "--reason", "x", "--key", ""}, "--key must be"}, // an unset variable
	}
	for name, c := range cases {
		code, _, stderr := runCmd(t, env, "", append([]string{"credits", "grant"}, c.args...)...)
		if want := map[bool]int{true: 1, false: 2}[name == "unknown user"]; code != want {
			t.Errorf("%s: exit %d, want %d (%s)", name, code, want, stderr)
		}
		if !strings.Contains(stderr, c.says) {
			t.Errorf("%s: stderr %q does not say %q", name, stderr, c.says)
		}
		if strings.Contains(stderr, "panic") {
			t.Errorf("%s: %s", name, stderr)
		}
	}
	bal, err := st.Balance(context.Background(), u.ID)
	require.NoError(t, err)
	require.Zero(t, bal.Total)
}

func TestAPIKeysCreatePrintsAWorkingKeyOnce(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{NoWorkers: true})
	u := storetest.NewUser(t, ta.store, storetest.UserOpts{})
	code, stdout, stderr := runCmd(t, map[string]string{"DATABASE_URL": ta.app.cfg.DatabaseURL}, "", "apikeys", "create", "--email", u.Email, "--name", "ci")
	require.Equal(t, 0, code, stderr)
	key := strings.TrimSpace(stdout)
	require.True(t, strings.HasPrefix(key, store.APIKeyPrefix), "stdout is the key alone: %q", stdout)
	req, _ := http.NewRequest(http.MethodGet, ta.URL+"/api/v1/balance", nil)
	req.Header.Set("Authorization", "Bearer "+key)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	keys, _, err := ta.store.APIKeys(context.Background(), u.ID)
	require.NoError(t, err)
	if len(keys) != 1 || keys[0].Name != "ci" || keys[0].LastUsedAt == nil {
		t.Fatalf("keys after use: %+v", keys)
	}
	var stored int
	require.NoError(t, ta.store.Pool().QueryRow(context.Background(), `SELECT count(*) FROM api_keys WHERE position($1 in encode(hash, 'escape')) > 0`, key).Scan(&stored))
	require.Zero(t, stored, "the key is stored in clear")
	// An unconfirmed user gets no key (it could not spend), as on the website.
	unconfirmed := storetest.NewUser(t, ta.store, storetest.UserOpts{Unverified: true})
	code, _, stderr = runCmd(t, map[string]string{"DATABASE_URL": ta.app.cfg.DatabaseURL}, "", "apikeys", "create", "--email", unconfirmed.Email, "--name", "ci")
	require.Equal(t, 1, code)
	require.Contains(t, stderr, "has not confirmed")
	// A name the store would refuse is a flag mistake (exit 2), found
	// before the database is asked.
	for _, bad := range []string{"c\ti", strings.Repeat("k", 101)} {
		code, _, stderr := runCmd(t, map[string]string{"DATABASE_URL": ta.app.cfg.DatabaseURL}, "", "apikeys", "create", "--email", u.Email, "--name", bad)
		require.Equal(t, 2, code, "name %q: %s", bad, stderr)
	}
	audit, err := ta.store.AuditFor(context.Background(), u.ID, 5)
	require.NoError(t, err)
	if len(audit) != 1 || audit[0].Action != "apikey.issue" || audit[0].Details["name"] != "ci" || audit[0].Details["via"] != "cli" {
		t.Fatalf("audit after issuing a key from the CLI: %+v", audit)
	}
}

// An operator lists a user's keys and revokes one (audited): the key stops
// working at once; revoking it again changes nothing and says so.
func TestAPIKeysListAndRevoke(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{NoWorkers: true})
	env := map[string]string{"DATABASE_URL": ta.app.cfg.DatabaseURL}
	u, raw := ta.userWithKey(storetest.UserOpts{})
	other, _ := ta.userWithKey(storetest.UserOpts{})
	keys, _, err := ta.store.APIKeys(context.Background(), u.ID)
	require.NoError(t, err)
	require.Len(t, keys, 1)
	k := keys[0]
	balance := func() int { return v1Do(t, ta, http.MethodGet, "/api/v1/balance", raw, "").Status }
	require.Equal(t, http.StatusOK, balance())

	code, stdout, stderr := runCmd(t, env, "", "apikeys", "list", "--email", u.Email)
	require.Equal(t, 0, code, stderr)
	fields := strings.Split(strings.TrimSpace(stdout), "\t")
	require.Len(t, fields, 6, stdout)
	require.Equal(t, fmt.Sprint(k.ID), fields[0])
	require.Equal(t, k.Prefix+"…", fields[1])
	require.Equal(t, "live", fields[2])
	require.Equal(t, k.Name, fields[5])

	// Another user's key is not theirs to revoke.
	code, _, stderr = runCmd(t, env, "", "apikeys", "revoke", "--email", other.Email, "--id", fmt.Sprint(k.ID))
	require.Equal(t, 1, code)
	require.Contains(t, stderr, "has no API key")
	require.Equal(t, http.StatusOK, balance())

	code, stdout, stderr = runCmd(t, env, "", "apikeys", "revoke", "--email", u.Email, "--id", fmt.Sprint(k.ID))
	require.Equal(t, 0, code, stderr)
	require.Contains(t, stdout, fmt.Sprintf("revoked key %d", k.ID))
	require.Equal(t, http.StatusUnauthorized, balance())
	code, stdout, _ = runCmd(t, env, "", "apikeys", "revoke", "--email", u.Email, "--id", fmt.Sprint(k.ID))
	require.Equal(t, 0, code)
	require.Contains(t, stdout, "revoked already")
	require.Equal(t, 1, whCount(t, ta, `SELECT count(*) FROM audit_log WHERE action = 'apikey.revoke' AND target_user_id = `+fmt.Sprint(u.ID)+` AND details->>'via' = 'cli'`))
	code, stdout, _ = runCmd(t, env, "", "apikeys", "list", "--email", u.Email)
	require.Equal(t, 0, code)
	require.Contains(t, stdout, "\trevoked:")

	code, _, stderr = runCmd(t, env, "", "apikeys", "revoke", "--email", u.Email)
	require.Equal(t, 2, code)
	require.Contains(t, stderr, "--id must be a key's id")
	code, _, stderr = runCmd(t, env, "", "apikeys", "revoke", "--email", u.Email, "--id", "-5")
	require.Equal(t, 2, code)
	require.Contains(t, stderr, "a positive number")
	fresh := storetest.NewUser(t, ta.store, storetest.UserOpts{})
	code, stdout, stderr = runCmd(t, env, "", "apikeys", "list", "--email", fresh.Email)
	require.Equal(t, 0, code)
	require.Empty(t, stdout)
	require.Contains(t, stderr, "has no API keys")
}

func TestStripeSyncWithoutAKeySaysPaymentsAreSimulated(t *testing.T) {
	t.Parallel()
	_, env := cliStore(t)
	code, stdout, _ := runCmd(t, env, "", "stripe", "sync")
	if code != 0 || !strings.Contains(stdout, "simulated") {
		t.Fatalf("exit %d: %s", code, stdout)
	}
}

// A production stack has no seeded services: operators add them with the
// CLI, and users can spend on them at once.
func TestServicesSetMakesAServiceUsersCanSpendOn(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{NoWorkers: true})
	env := map[string]string{"DATABASE_URL": ta.app.cfg.DatabaseURL}
	code, stdout, stderr := runCmd(t, env, "", "services", "list")
	require.Equal(t, 0, code, stderr)
	require.Empty(t, stdout, "an empty list is empty for a script; the hint is on stderr")
	require.Contains(t, stderr, "no services yet")

	code, stdout, stderr = runCmd(t, env, "", "services", "set", "--slug", "ocr-scan", "--name", "OCR scan", "--cost", "7", "--description", "Text from an image")
	require.Equal(t, 0, code, stderr)
	require.Contains(t, stdout, "service ocr-scan: OCR scan, 7 credits per use, active")
	u, key := ta.userWithKey(storetest.UserOpts{})
	storetest.NewGrant(t, ta.store, u.ID, storetest.GrantOpts{Amount: 10})
	r := v1Spend(t, ta, key, "ocr-scan", "first")
	require.Equal(t, http.StatusCreated, r.Status, r.Body)
	require.EqualValues(t, 7, v1Decode[v1Usage](t, r).Credits)

	// Changing it (here: retiring it) keeps past usages and stops new ones.
	code, _, stderr = runCmd(t, env, "", "services", "set", "--slug", "ocr-scan", "--name", "OCR scan", "--cost", "7", "--inactive")
	require.Equal(t, 0, code, stderr)
	require.Equal(t, http.StatusNotFound, v1Spend(t, ta, key, "ocr-scan", "second").Status)
	code, stdout, _ = runCmd(t, env, "", "services", "list")
	require.Equal(t, 0, code)
	require.Regexp(t, `ocr-scan\s+7 credits\s+inactive\s+OCR scan`, stdout)
	require.Equal(t, 2, whCount(t, ta, `SELECT count(*) FROM audit_log WHERE action = 'service.set' AND details->>'slug' = 'ocr-scan'`))

	// Changing one field keeps the others: the description stays and the
	// service stays retired; the audit entry keeps the values before.
	code, stdout, stderr = runCmd(t, env, "", "services", "set", "--slug", "ocr-scan", "--cost", "9")
	require.Equal(t, 0, code, stderr)
	require.Contains(t, stdout, "service ocr-scan: OCR scan, 9 credits per use, inactive")
	svcs, err := ta.store.Services(context.Background())
	require.NoError(t, err)
	require.Len(t, svcs, 1)
	require.Equal(t, "Text from an image", svcs[0].Description)
	require.Equal(t, 1, whCount(t, ta, `SELECT count(*) FROM audit_log WHERE action = 'service.set' AND details->'before'->>'credit_cost' = '7'
 AND details->>'credit_cost' = '9' AND details->'before'->>'description' = 'Text from an image'`))
	code, stdout, stderr = runCmd(t, env, "", "services", "set", "--slug", "ocr-scan", "--active")
	require.Equal(t, 0, code, stderr)
	require.Contains(t, stdout, "service ocr-scan: OCR scan, 9 credits per use, active")
	// --active=false retires it, as --inactive does; --inactive=false brings it back.
	code, stdout, stderr = runCmd(t, env, "", "services", "set", "--slug", "ocr-scan", "--active=false")
	require.Equal(t, 0, code, stderr)
	require.Contains(t, stdout, "9 credits per use, inactive")
	code, stdout, stderr = runCmd(t, env, "", "services", "set", "--slug", "ocr-scan", "--inactive=false")
	require.Equal(t, 0, code, stderr)
	require.Contains(t, stdout, "9 credits per use, active")
	// A change to what is already so writes nothing, and says so.
	audits := whCount(t, ta, `SELECT count(*) FROM audit_log WHERE action = 'service.set'`)
	code, stdout, stderr = runCmd(t, env, "", "services", "set", "--slug", "ocr-scan", "--cost", "9", "--name", " OCR scan ", "--active")
	require.Equal(t, 0, code, stderr)
	require.Contains(t, stdout, "nothing changed")
	require.Equal(t, audits, whCount(t, ta, `SELECT count(*) FROM audit_log WHERE action = 'service.set'`), "an unchanged service was audited as set")
	code, _, stderr = runCmd(t, env, "", "services", "set", "--slug", "new-one", "--cost", "1")
	require.Equal(t, 1, code)
	require.Contains(t, stderr, "A new service needs a name and a cost.")

	for name, args := range map[string][]string{
		"bad slug":                            {"--slug", "OCR Scan", "--name", "x", "--cost", "1"},
		"no slug":                             {"--name", "x", "--cost", "1"},
		"empty name":                          {"--slug", "ocr-scan", "--name", " ", "--cost", "1"},
		"both states":                         {"--slug", "ocr-scan", "--inactive", "--active"},
		"both states, one false":              {"--slug", "ocr-scan", "--inactive=false", "--active"},
		"no change":                           {"--slug", "ocr-scan"},
		"negative cost":                       {"--slug", "ocr-scan", "--name", "x", "--cost", "-1"},
		"text cost":                           {"--slug", "ocr-scan", "--name", "x", "--cost", "seven"},
		"hidden name":                         {"--slug", "ocr-scan", "--name", "OC\u200bR"},
		"long name":                           {"--slug", "ocr-scan", "--name", strings.Repeat("n", 101)},
		"two-line description":                {"--slug", "ocr-scan", "--description", "one\ntwo"},
		"description with direction override": {"--slug", "ocr-scan", "--description", "Free \u202egnp.exe"},
	} {
		if code, _, _ := runCmd(t, env, "", append([]string{"services", "set"}, args...)...); code != 2 {
			t.Errorf("%s: exit %d, want 2", name, code)
		}
	}
	// An amount out of range is a flag mistake (exit 2), as for credits grant.
	if code, _, stderr := runCmd(t, env, "", "services", "set", "--slug", "big", "--name", "Big", "--cost", "1000000001"); code != 2 || !strings.Contains(stderr, "1,000,000,000") {
		t.Errorf("cost over the cap: exit %d %s", code, stderr)
	}
}

// A grant whose account another operation holds says it is waiting (it
// used to hang silently for as long), and goes through once the account
// is free.
func TestCreditsGrantSaysItWaitsForAHeldAccount(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{NoWorkers: true})
	u := storetest.NewUser(t, ta.store, storetest.UserOpts{})
	ctx := context.Background()
	holder, err := ta.store.Pool().Begin(ctx)
	require.NoError(t, err)
	defer func() { _ = holder.Rollback(ctx) }()
	_, err = holder.Exec(ctx, `SELECT 1 FROM accounts WHERE user_id = $1 FOR UPDATE`, u.ID)
	require.NoError(t, err)

	var stdout, stderr syncBuffer
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"quickscale", "credits", "grant", "--email", u.Email, "--amount", "5", "--reason", "held"},
			envFrom(map[string]string{"DATABASE_URL": ta.app.cfg.DatabaseURL}), strings.NewReader(""), &stdout, &stderr)
	}()
	eventually(t, 30*time.Second, "the grant to say it waits", func() bool { return strings.Contains(stderr.String(), "still waiting for "+u.Email+"'s account") })
	require.NoError(t, holder.Commit(ctx))
	select {
	case err := <-done:
		require.NoError(t, err, stderr.String())
	case <-time.After(30 * time.Second):
		t.Fatal("the grant never finished")
	}
	require.Contains(t, stdout.String(), "granted 5 admin credits")
}
