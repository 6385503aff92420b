package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/quickscale/quickscale/billing"
	"github.com/quickscale/quickscale/store"
)

// cliEnv is what an operator command needs: config, logger and a store.
type cliEnv struct {
	cfg    Config
	logger *slog.Logger
	pool   *pgxpool.Pool
	store  *store.Store
}

func (e *cliEnv) close() { e.pool.Close() }

func openEnv(ctx context.Context, getenv func(string) string, stderr io.Writer, name string) (*cliEnv, error) {
	cfg, err := loadConfig(getenv)
	if err != nil {
		return nil, fmt.Errorf("configuration: %w", err)
	}
	logger := newLogger(cfg, stderr)
	pool, err := store.OpenPool(ctx, cfg.DatabaseURL, store.PoolOptions{MaxConns: 4, AppName: "quickscale-" + name, Logger: logger})
	if err != nil {
		return nil, fmt.Errorf("database: %w", err)
	}
	if name != "migrate" {
		// An operator command on a database not yet migrated for this
		// binary (an upgrade whose `migrate up` has not run) would work
		// on an older schema, or fail halfway with a missing column.
		st, err := store.Status(ctx, pool)
		if err != nil {
			pool.Close()
			return nil, fmt.Errorf("database: read its migrations: %w", err)
		}
		if !st.Current() {
			pool.Close()
			return nil, fmt.Errorf("the database is not migrated for this binary: %s first (same DATABASE_URL)", st.Problem())
		}
		if st.Ahead() {
			fmt.Fprintln(stderr, "quickscale: warning: the database was migrated by a newer quickscale than this one ("+version+"); this command may fail on its schema")
		}
	}
	return &cliEnv{cfg: cfg, logger: logger, pool: pool, store: store.New(pool, logger)}, nil
}

// withUser opens the environment, finds the user named by --email and
// runs fn with both.
func withUser(ctx context.Context, getenv func(string) string, stderr io.Writer, email string, fn func(env *cliEnv, u store.User) error) error {
	// A missing flag is a usage error whether or not the database answers.
	email = strings.TrimSpace(email)
	if email == "" {
		return usageError{"--email is required"}
	}
	if !utf8.ValidString(email) {
		return usageError{"--email is not valid text (UTF-8)"}
	}
	return withEnv(ctx, getenv, stderr, func(env *cliEnv) error {
		u, err := env.userByEmail(ctx, email)
		if err != nil {
			return err
		}
		return fn(env, u)
	})
}

// withEnv runs fn with the configuration and a database pool, closed after.
func withEnv(ctx context.Context, getenv func(string) string, stderr io.Writer, fn func(env *cliEnv) error) error {
	env, err := openEnv(ctx, getenv, stderr, "cli")
	if err != nil {
		return err
	}
	defer env.close()
	return fn(env)
}

// userByEmail resolves --email for operator commands.
func (e *cliEnv) userByEmail(ctx context.Context, email string) (store.User, error) {
	if email == "" {
		return store.User{}, usageError{"--email is required"}
	}
	u, err := e.store.UserByEmail(ctx, email)
	if store.ErrorKind(err) == store.KindNotFound {
		return u, fmt.Errorf("no user with email %q", email)
	}
	return u, err
}

func runUsers(ctx context.Context, args []string, getenv func(string) string, stdin io.Reader, stdout, stderr io.Writer) error {
	sub, rest, err := subcommand("users", args, map[string]string{
		"create":  "create a user; the password is read from stdin, or generated and printed",
		"promote": "give a user the admin role",
		"demote":  "take the admin role away (the user stays, as a user)",
	}, stdout, stderr)
	if err != nil {
		return helpOK(err)
	}
	switch sub {
	case "create":
		fs := newFlags("users create", "users create --email E [--admin] [--verified] < password", stderr)
		email := fs.String("email", "", "the user's email address (required)")
		admin := fs.Bool("admin", false, "give the admin role")
		verified := fs.Bool("verified", false, "mark the email as confirmed")
		if err := parseFlags(fs, rest, stdout); err != nil {
			return helpOK(err)
		}
		addr, err := store.NormalizeNewEmail(*email)
		if err != nil {
			return usageError{"--email: " + err.Error()}
		}
		password, generated, err := readPassword(ctx, stdin)
		if err != nil {
			return err
		}
		if err := store.CheckPasswordRules(password); err != nil {
			// The command sees this itself: a usage mistake, exit 2.
			return usageError{"password: " + err.Error()}
		}
		env, err := openEnv(ctx, getenv, stderr, "cli")
		if err != nil {
			return err
		}
		defer env.close()
		hash, err := store.HashPassword(ctx, password)
		if err != nil {
			return err
		}
		role := store.RoleUser
		if *admin {
			role = store.RoleAdmin
		}
		// The user and its audit entry commit together: a user whose
		// creation failed halfway (and whose generated password was never
		// shown) would block the retry as "already exists".
		var u store.User
		if err := env.store.InTx(ctx, func(tx pgx.Tx) error {
			var err error
			if u, err = store.CreateUser(ctx, tx, addr, hash, role, *verified); err != nil {
				return err
			}
			return store.Audit(ctx, tx, nil, "user.create", &u.ID, map[string]any{"role": role, "verified": *verified, "via": "cli"})
		}); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "created user %d %s (role %s, verified %v)\n", u.ID, u.Email, u.Role, *verified)
		if generated {
			fmt.Fprintf(stdout, "password: %s\n", password)
		}
		return nil
	default:
		// promote or demote: the same change of role, either way audited
		// and ending the user's sessions (rights change at the next sign-in).
		role, was, is := store.RoleAdmin, "already an admin", "now an admin"
		if sub == "demote" {
			role, was, is = store.RoleUser, "not an admin", "no longer an admin"
		}
		fs := newFlags("users "+sub, "users "+sub+" --email E", stderr)
		email := fs.String("email", "", "the user's email address (required)")
		if err := parseFlags(fs, rest, stdout); err != nil {
			return helpOK(err)
		}
		return withUser(ctx, getenv, stderr, *email, func(env *cliEnv, u store.User) error {
			if u.Role == role {
				fmt.Fprintf(stdout, "%s is %s; nothing changed\n", u.Email, was)
				return nil
			}
			err := env.store.InTx(ctx, func(tx pgx.Tx) error {
				if role == store.RoleUser {
					// Never the last admin: nobody could reach the admin
					// pages after it.
					if err := store.RefuseLastAdmin(ctx, tx, u.ID); errors.Is(err, store.ErrLastAdmin) {
						return store.Errorf(store.KindConflict, "%s is the last admin; promote another user first.", u.Email)
					} else if err != nil {
						return err
					}
				}
				if err := store.SetRole(ctx, tx, u.ID, role); err != nil {
					return err
				}
				return store.Audit(ctx, tx, nil, "user."+sub, &u.ID, map[string]any{"role": role, "via": "cli"})
			})
			if err != nil {
				return err
			}
			fmt.Fprintf(stdout, "%s is %s (signed out everywhere)\n", u.Email, is)
			return nil
		})
	}
}

// cliWaitNotice is how long an operator command waits for a user's
// account before it says it is waiting.
var cliWaitNotice = 2 * time.Second

// maxPasswordLine bounds the line readPassword reads (the password rules
// then bound the password itself).
const maxPasswordLine = 4096

// readPassword takes the first line of stdin and nothing after it (a
// script's loop feeding one command per line keeps the rest). A terminal,
// or input that ends before its first byte (</dev/null), gets a generated
// password instead; an empty first line is refused, as it is usually an
// unset variable (echo "$PW"). It gives up when ctx ends (Ctrl-C), even
// while stdin has nothing to read.
func readPassword(ctx context.Context, stdin io.Reader) (string, bool, error) {
	if f, ok := stdin.(*os.File); ok {
		if fi, err := f.Stat(); err == nil && fi.Mode()&os.ModeCharDevice != 0 {
			return store.NewSecret()[:20], true, nil
		}
	}
	if stdin == nil {
		return store.NewSecret()[:20], true, nil
	}
	type result struct {
		line    []byte
		newline bool
		err     error
	}
	done := make(chan result, 1)
	go func() {
		var r result
		b := make([]byte, 1)
		for len(r.line) <= maxPasswordLine {
			n, err := stdin.Read(b)
			if n == 1 {
				if b[0] == '\n' {
					r.newline = true
					break
				}
				r.line = append(r.line, b[0])
			}
			if err != nil {
				if !errors.Is(err, io.EOF) {
					r.err = err
				}
				break
			}
		}
		done <- r
	}()
	var r result
	select {
	case <-ctx.Done():
		return "", false, fmt.Errorf("read password from stdin: %w", ctx.Err())
	case r = <-done:
	}
	switch {
	case r.err != nil:
		return "", false, fmt.Errorf("read password from stdin: %w", r.err)
	case len(r.line) > maxPasswordLine:
		return "", false, usageError{fmt.Sprintf("the password on stdin is longer than %d bytes", maxPasswordLine)}
	case len(r.line) == 0 && !r.newline:
		return store.NewSecret()[:20], true, nil
	}
	line := strings.TrimSuffix(string(r.line), "\r")
	if strings.TrimSpace(line) == "" {
		return "", false, usageError{"the first line of stdin is empty: pipe the password in, or give no input at all (</dev/null) to have one generated"}
	}
	return line, false, nil
}

func runCredits(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	sub, rest, err := subcommand("credits", args, map[string]string{
		"grant":   "add credits to a user (written to the ledger and the audit log)",
		"balance": "show a user's balance",
	}, stdout, stderr)
	if err != nil {
		return helpOK(err)
	}
	switch sub {
	case "grant":
		fs := newFlags("credits grant", "credits grant --email E --amount N [--kind subscription|pack|admin|promo] [--expires RFC3339] --reason TEXT [--key K]", stderr)
		email := fs.String("email", "", "the user's email address (required)")
		amount := new(int64)
		fs.Var((*decimalFlag)(amount), "amount", "credits to add, a positive whole number in decimal (required)")
		kind := fs.String("kind", store.GrantAdmin, "subscription, pack, admin or promo")
		expires := fs.String("expires", "", "expiry as RFC 3339, e.g. 2026-12-31T23:59:59Z (required for subscription, not allowed for pack)")
		reason := fs.String("reason", "", "why, kept in the ledger and the audit log (required)")
		key := fs.String("key", "", "an idempotency key: the same grant run again with it changes nothing (for scripts that retry)")
		if err := parseFlags(fs, rest, stdout); err != nil {
			return helpOK(err)
		}
		// Every mistake in the flags is a usage error (exit 2), checked here
		// before the ledger, which checks the same rules again.
		if *amount <= 0 || *amount > store.MaxGrantCredits {
			return usageError{"--amount must be a whole number from 1 to 1000000000"}
		}
		if !store.ValidGrantKind(*kind) {
			return usageError{fmt.Sprintf("--kind %q: want subscription, pack, admin or promo", *kind)}
		}
		if store.BlankText(*reason) {
			return usageError{"--reason is required"}
		}
		if !utf8.ValidString(*reason) || utf8.RuneCountInString(strings.TrimSpace(*reason)) > 500 || store.UnsafeLine(strings.TrimSpace(*reason)) {
			return usageError{"--reason must be one line of visible text (no tabs, control or hidden characters) of at most 500 characters"}
		}
		var exp *time.Time
		if *expires != "" {
			t, err := time.Parse(time.RFC3339, *expires)
			if err != nil {
				return usageError{fmt.Sprintf("--expires %q: want RFC 3339, e.g. 2026-12-31T23:59:59Z", *expires)}
			}
			if !t.After(time.Now()) {
				return usageError{fmt.Sprintf("--expires %q is not in the future", *expires)}
			}
			if store.ExpiryTooFar(t, time.Now()) {
				return usageError{fmt.Sprintf("--expires %q is too far ahead: at most %d years less a day (leave it out for admin or promo credits that never expire)", *expires, store.MaxExpiryYears)}
			}
			exp = &t
		}
		keyGiven := false
		fs.Visit(func(f *flag.Flag) { keyGiven = keyGiven || f.Name == "key" })
		// Given but empty is an unset variable in a script (--key "$K"):
		// refused, not a grant that a retry would repeat.
		if keyGiven && !validCLIKey(*key) {
			return usageError{"--key must be 1 to 90 letters, digits or . _ : - characters"}
		}
		switch {
		case *kind == store.GrantSubscription && exp == nil:
			return usageError{"--kind subscription needs --expires (subscription credits expire at the end of their period)"}
		case *kind == store.GrantPack && exp != nil:
			return usageError{"--kind pack takes no --expires (pack credits never expire)"}
		}
		return withUser(ctx, getenv, stderr, *email, func(env *cliEnv, u store.User) error {
			adj := store.Adjustment{UserID: u.ID, Delta: *amount, Kind: *kind, ExpiresAt: exp, Reason: *reason, Via: "cli"}
			if *key != "" {
				adj.Key = "cli:" + *key
			}
			// The grant waits for the account, which another operation
			// may hold for long (an admin's removal, a stuck session):
			// say so rather than hang silently. Ctrl-C gives up.
			// The notice is written, if at all, before the answer: the
			// waiter ends before anything else is printed.
			done, ended := make(chan struct{}), make(chan struct{})
			go func() {
				defer close(ended)
				select {
				case <-done:
				case <-time.After(cliWaitNotice):
					fmt.Fprintf(stderr, "quickscale: still waiting for %s's account, probably held by another operation (Ctrl-C gives up; nothing is granted then)…\n", u.Email)
				}
			}()
			res, err := env.store.Adjust(ctx, adj)
			close(done)
			<-ended
			if err != nil {
				return err
			}
			noun := "credits"
			if *amount == 1 {
				noun = "credit"
			}
			if res.Replayed {
				fmt.Fprintf(stdout, "already granted under --key %s: nothing changed; %s's balance %d\n", *key, u.Email, res.Balance)
				return nil
			}
			fmt.Fprintf(stdout, "granted %d %s %s to %s (grant %d); balance %d\n", *amount, *kind, noun, u.Email, res.GrantID, res.Balance)
			return nil
		})
	default:
		fs := newFlags("credits balance", "credits balance --email E", stderr)
		email := fs.String("email", "", "the user's email address (required)")
		if err := parseFlags(fs, rest, stdout); err != nil {
			return helpOK(err)
		}
		return withUser(ctx, getenv, stderr, *email, func(env *cliEnv, u store.User) error {
			b, err := env.store.Balance(ctx, u.ID)
			if err != nil {
				return err
			}
			fmt.Fprintf(stdout, "%s: %s\n", u.Email, countCredits(b.Total))
			for _, k := range store.GrantKinds() {
				fmt.Fprintf(stdout, "  %-13s %d\n", k, b.ByKind[k])
			}
			if b.NextExpiry != nil {
				fmt.Fprintf(stdout, "  next expiry   %s at %s\n", countCredits(b.ExpiringNext), b.NextExpiry.UTC().Format(time.RFC3339Nano))
			}
			return nil
		})
	}
}

// decimalFlag is an int64 flag written in decimal only: Go's own reads
// "010" as octal 8, "0x10" as 16 and "1_000" as 1000, and an operator's
// zero-padded amount must not grant another number of credits.
type decimalFlag int64

func (d *decimalFlag) String() string { return strconv.FormatInt(int64(*d), 10) }

func (d *decimalFlag) Set(s string) error {
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return errors.New("want a whole number in decimal, e.g. 500")
	}
	*d = decimalFlag(n)
	return nil
}

// countCredits is "1 credit" or "N credits".
func countCredits(n int64) string {
	if n == 1 {
		return "1 credit"
	}
	return fmt.Sprintf("%d credits", n)
}

func runAPIKeys(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	sub, rest, err := subcommand("apikeys", args, map[string]string{
		"create": "issue an API key for a user and print it (it is shown only once)",
		"list":   "list a user's keys (live ones, and the newest revoked)",
		"revoke": "revoke one of a user's keys (audited)",
	}, stdout, stderr)
	if err != nil {
		return helpOK(err)
	}
	switch sub {
	case "list":
		fs := newFlags("apikeys list", "apikeys list --email E", stderr)
		email := fs.String("email", "", "the user's email address (required)")
		if err := parseFlags(fs, rest, stdout); err != nil {
			return helpOK(err)
		}
		return withUser(ctx, getenv, stderr, *email, func(env *cliEnv, u store.User) error {
			keys, older, err := env.store.APIKeys(ctx, u.ID)
			if err != nil {
				return err
			}
			if len(keys) == 0 {
				fmt.Fprintf(stderr, "%s has no API keys\n", u.Email)
				return nil
			}
			// One key a line: id, prefix, state, created, last used, name
			// (last: it may hold spaces).
			for _, k := range keys {
				state, used := "live", "never"
				if k.RevokedAt != nil {
					state = "revoked:" + k.RevokedAt.UTC().Format(time.RFC3339)
				}
				if k.LastUsedAt != nil {
					used = k.LastUsedAt.UTC().Format(time.RFC3339)
				}
				fmt.Fprintf(stdout, "%d\t%s…\t%s\t%s\t%s\t%s\n", k.ID, k.Prefix, state, k.CreatedAt.UTC().Format(time.RFC3339), used, k.Name)
			}
			if older {
				fmt.Fprintf(stderr, "(older revoked keys are not listed)\n")
			}
			return nil
		})
	case "revoke":
		fs := newFlags("apikeys revoke", "apikeys revoke --email E --id N", stderr)
		email := fs.String("email", "", "the user's email address (required)")
		id := fs.Int64("id", 0, "the key's id, as apikeys list prints it (required)")
		if err := parseFlags(fs, rest, stdout); err != nil {
			return helpOK(err)
		}
		if *id <= 0 {
			return usageError{"--id must be a key's id (a positive number), as `quickscale apikeys list` prints it"}
		}
		return withUser(ctx, getenv, stderr, *email, func(env *cliEnv, u store.User) error {
			key, already, err := env.store.RevokeAPIKeyAsOperator(ctx, nil, u.ID, *id, "cli")
			if err != nil {
				return err
			}
			if already {
				fmt.Fprintf(stdout, "key %d %q of %s was revoked already (%s); nothing changed\n", key.ID, key.Name, u.Email, key.RevokedAt.UTC().Format(time.RFC3339))
				return nil
			}
			fmt.Fprintf(stdout, "revoked key %d %q of %s: programs using it can no longer call the API\n", key.ID, key.Name, u.Email)
			return nil
		})
	}
	fs := newFlags("apikeys create", "apikeys create --email E --name N", stderr)
	email := fs.String("email", "", "the user's email address (required)")
	name := fs.String("name", "", "a name for the key (required)")
	if err := parseFlags(fs, rest, stdout); err != nil {
		return helpOK(err)
	}
	if strings.TrimSpace(*name) == "" {
		return usageError{"--name is required"}
	}
	if err := store.CheckAPIKeyName(*name); err != nil {
		return usageError{"--name: " + err.Error()}
	}
	return withUser(ctx, getenv, stderr, *email, func(env *cliEnv, u store.User) error {
		if !u.Verified() {
			// As on the website: such a key could read but never spend.
			return store.Errorf(store.KindInvalid, "%s has not confirmed their email address; an API key of theirs could not spend. Confirm the address first.", u.Email)
		}
		raw, key, err := env.store.IssueAPIKey(ctx, nil, u.ID, *name, "cli")
		if err != nil {
			return err
		}
		fmt.Fprintf(stderr, "created key %d %q for %s; it is printed once, on stdout:\n", key.ID, key.Name, u.Email)
		fmt.Fprintln(stdout, raw)
		return nil
	})
}

func runStripe(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	_, rest, err := subcommand("stripe", args, map[string]string{
		"sync": "create or update the Stripe products and prices of the credit packs and plans (idempotent)",
	}, stdout, stderr)
	if err != nil {
		return helpOK(err)
	}
	fs := newFlags("stripe sync", "stripe sync", stderr)
	if err := parseFlags(fs, rest, stdout); err != nil {
		return helpOK(err)
	}
	return withEnv(ctx, getenv, stderr, func(env *cliEnv) error { return stripeSync(ctx, env, stdout) })
}

func stripeSync(ctx context.Context, env *cliEnv, stdout io.Writer) error {
	if env.cfg.Simulated() {
		fmt.Fprintln(stdout, "STRIPE_SECRET_KEY is not set: payments are simulated and there is no Stripe catalog to sync.")
		return nil
	}
	gw := billing.NewStripe(billing.StripeConfig{SecretKey: env.cfg.StripeSecretKey, APIURL: env.cfg.StripeAPIURL})
	packs, err := env.store.Packs(ctx)
	if err != nil {
		return err
	}
	prices, err := gw.SyncCatalog(ctx, packs)
	if err != nil {
		return err
	}
	for _, p := range packs {
		if err := env.store.SetPackPriceID(ctx, p.Code, prices[p.Code]); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "%-10s %-14s lookup_key=%s price=%s\n", p.Code, billing.FormatMoney(p.PriceMinor, p.Currency), p.LookupKey, prices[p.Code])
	}
	plans, err := env.store.Plans(ctx)
	if err != nil {
		return err
	}
	planPrices, err := gw.SyncPlans(ctx, plans)
	if err != nil {
		return err
	}
	for _, p := range plans {
		if err := env.store.SetPlanPriceID(ctx, p.Code, planPrices[p.Code]); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "%-10s %-14s lookup_key=%s price=%s\n", p.Code, billing.FormatMoney(p.PriceMinor, p.Currency)+"/mo", p.LookupKey, planPrices[p.Code])
	}
	return nil
}

func runServices(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	sub, rest, err := subcommand("services", args, map[string]string{
		"set":  "create a service or change the one with the same slug (audited)",
		"list": "list every service, inactive ones included",
	}, stdout, stderr)
	if err != nil {
		return helpOK(err)
	}
	if sub == "list" {
		fs := newFlags("services list", "services list", stderr)
		if err := parseFlags(fs, rest, stdout); err != nil {
			return helpOK(err)
		}
		return withEnv(ctx, getenv, stderr, func(env *cliEnv) error {
			svcs, err := env.store.Services(ctx)
			if err != nil {
				return err
			}
			if len(svcs) == 0 {
				// On stderr: a script reading the list reads nothing.
				fmt.Fprintln(stderr, "no services yet: add one with quickscale services set --slug S --name N --cost C")
				return nil
			}
			for _, sv := range svcs {
				fmt.Fprintf(stdout, "%-24s %21s  %-8s  %s\n", sv.Slug, creditsText(sv.CreditCost), serviceState(sv), sv.Name)
			}
			return nil
		})
	}
	fs := newFlags("services set", "services set --slug S [--name N] [--cost C] [--description D] [--inactive|--active]", stderr)
	slug := fs.String("slug", "", "the service's id in the API and URLs: lowercase letters, digits, dashes (required)")
	name := fs.String("name", "", "the name users see (required for a new service)")
	costFlag := fs.String("cost", "", "credits one use costs, a whole number from 0 (required for a new service)")
	description := fs.String("description", "", "one line users see under the name")
	inactive := fs.Bool("inactive", false, "retire the service: it can no longer be used (past usages stay)")
	active := fs.Bool("active", false, "bring a retired service back")
	if err := parseFlags(fs, rest, stdout); err != nil {
		return helpOK(err)
	}
	// Only the flags given change anything: the rest keep their values.
	change := store.ServiceChange{Slug: *slug}
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	if !given["slug"] || *slug == "" {
		return usageError{"--slug is required: 1-63 lowercase letters, digits and dashes, starting with a letter or digit"}
	}
	if !store.ValidSlug(*slug) {
		return usageError{"--slug " + strconv.Quote(*slug) + ": 1-63 lowercase letters, digits and dashes, starting with a letter or digit"}
	}
	if given["name"] {
		if err := store.CheckServiceName(*name); err != nil {
			return usageError{"--name: " + err.Error()}
		}
		change.Name = name
	}
	if given["cost"] {
		cost, err := strconv.ParseInt(*costFlag, 10, 64)
		if err != nil || cost < 0 || cost > store.MaxGrantCredits {
			return usageError{"--cost: a whole number of credits from 0 to 1,000,000,000"}
		}
		change.CreditCost = &cost
	}
	if given["description"] {
		if err := store.CheckServiceDescription(*description); err != nil {
			return usageError{"--description: " + err.Error()}
		}
		change.Description = description
	}
	switch {
	case len(given) == 1:
		return usageError{"nothing to change: give --name, --cost, --description, --inactive or --active"}
	case given["inactive"] && given["active"]:
		return usageError{"give one of --inactive and --active"}
	case given["inactive"]:
		// --inactive=false is --active, as an operator means it.
		on := !*inactive
		change.Active = &on
	case given["active"]:
		change.Active = active
	}
	return withEnv(ctx, getenv, stderr, func(env *cliEnv) error {
		sv, changed, err := env.store.SetService(ctx, nil, change, "cli")
		if err != nil {
			return err
		}
		unchanged := ""
		if !changed {
			unchanged = " (it was so already: nothing changed)"
		}
		fmt.Fprintf(stdout, "service %s: %s, %s per use, %s%s\n", sv.Slug, sv.Name, creditsText(sv.CreditCost), serviceState(sv), unchanged)
		return nil
	})
}

// creditsText is "1 credit", "2 credits", "1000000000 credits".
func creditsText(n int64) string {
	if n == 1 {
		return "1 credit"
	}
	return strconv.FormatInt(n, 10) + " credits"
}

func serviceState(sv store.Service) string {
	if sv.Active {
		return "active"
	}
	return "inactive"
}

// validCLIKey reports whether an operator's idempotency key is 1 to 90
// letters, digits or . _ : - (it is stored as "cli:" + key).
func validCLIKey(k string) bool {
	if len(k) == 0 || len(k) > 90 {
		return false
	}
	for _, c := range k {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.ContainsRune("._:-", c)) {
			return false
		}
	}
	return true
}
