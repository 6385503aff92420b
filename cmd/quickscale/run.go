package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/quickscale/quickscale/store"
)

// version is set at build time with -ldflags "-X main.version=…".
var version = "dev"

// usageError is a command-line mistake: usage is printed and the exit code is 2.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

const usageText = `QuickScale: a credit-billing backend for SaaS products.

Usage:
  quickscale <command> [flags]

Processes:
  dev                     everything in one process on local defaults (site, workers, simulator, dev mailbox)
  api                     the HTTP server (insert-only River client)
  worker                  River workers and periodic jobs; /metrics, /healthz, /readyz on METRICS_ADDR
  migrate up|status       apply or show app (goose) and River migrations

Operators:
  users create|promote|demote  manage accounts and the admin role
  credits grant|balance   adjust and inspect credit balances
  apikeys create|list|revoke  issue, list and revoke a user's API keys
  services set|list       manage the services users spend credits on
  stripe sync             create or update the Stripe products and prices of the credit packs
  version                 print the version

Configuration is read from environment variables only; see README.md.
Run "quickscale <command> --help" for a command's flags.
`

// run is the whole program: main only calls it. Tests call it in-process.
func run(ctx context.Context, args []string, getenv func(string) string, stdin io.Reader, stdout, stderr io.Writer) error {
	if len(args) < 2 {
		fmt.Fprint(stderr, usageText)
		return usageError{"no command given"}
	}
	cmd, rest := args[1], args[2:]
	switch cmd {
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, usageText)
		return nil
	case "dev", "api", "worker":
		return runServe(ctx, cmd, rest, getenv, stdout, stderr)
	}
	// An operator command's output is what a script reads (an API key or a
	// generated password is shown only there): output that could not be
	// written fails the command.
	out := &checkedWriter{w: stdout}
	var err error
	switch cmd {
	case "version", "--version":
		err = runVersion(rest, out, stderr)
	case "migrate":
		err = runMigrate(ctx, rest, getenv, out, stderr)
	case "users":
		err = runUsers(ctx, rest, getenv, stdin, out, stderr)
	case "credits":
		err = runCredits(ctx, rest, getenv, out, stderr)
	case "apikeys":
		err = runAPIKeys(ctx, rest, getenv, out, stderr)
	case "services":
		err = runServices(ctx, rest, getenv, out, stderr)
	case "stripe":
		err = runStripe(ctx, rest, getenv, out, stderr)
	default:
		fmt.Fprint(stderr, usageText)
		return usageError{fmt.Sprintf("unknown command %q", cmd)}
	}
	if err == nil && out.err != nil {
		return fmt.Errorf("could not write the output (%w); what the command did stands — an API key or a generated password that was to be shown is lost: revoke the key, or reset the password", out.err)
	}
	if err != nil && !errors.Is(err, context.Canceled) && store.IsUnavailable(err) {
		// A script may retry this one (the database was down or the
		// connection lost), unlike a refusal: its own exit code.
		return unavailableError{err}
	}
	return err
}

// unavailableError is an operator command that failed because the database
// could not be reached or the connection was lost: exit exitUnavailable.
type unavailableError struct{ err error }

func (e unavailableError) Error() string { return e.err.Error() }
func (e unavailableError) Unwrap() error { return e.err }

// checkedWriter remembers the first error writing to w.
type checkedWriter struct {
	w   io.Writer
	err error
}

func (c *checkedWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	if err != nil && c.err == nil {
		c.err = err
	}
	return n, err
}

// exitWith ends a command with a particular exit code, having said why on
// stdout already.
type exitWith struct{ code int }

func (e exitWith) Error() string { return fmt.Sprintf("exit status %d", e.code) }

// exitNotCurrent is `migrate status`'s exit code when migrations are
// pending.
const exitNotCurrent = 3

// exitAhead is `migrate status`'s exit code when the database holds
// migrations this binary does not know.
const exitAhead = 4

// exitUnavailable is an operator command's exit code when the database
// could not be reached or the connection was lost: EX_TEMPFAIL of
// sysexits.h, "try again later". A transaction under way was rolled back,
// or (a lost connection at its commit) may have been applied: operator
// commands that change things say so on a retry (credits grant --key).
const exitUnavailable = 75

// exitInterrupted is the exit code of a command stopped by SIGINT or
// SIGTERM before it finished (128 + SIGINT, as shells report Ctrl-C).
const exitInterrupted = 130

// exitCode prints err for people and maps it to the process exit code:
// 0 on success, 2 for usage mistakes, an exitWith's own code, 1 for
// everything else.
func exitCode(err error, stderr io.Writer) int {
	if err == nil {
		return 0
	}
	var ew exitWith
	if errors.As(err, &ew) {
		return ew.code
	}
	var ue usageError
	if errors.As(err, &ue) {
		fmt.Fprintln(stderr, "quickscale:", ue.msg)
		return 2
	}
	// The command's context ends only on SIGINT or SIGTERM (main): the
	// transaction it was in is rolled back.
	if errors.Is(err, context.Canceled) {
		fmt.Fprintln(stderr, "quickscale: interrupted:", err)
		return exitInterrupted
	}
	var ue2 unavailableError
	if errors.As(err, &ue2) {
		fmt.Fprintln(stderr, "quickscale: error:", err)
		fmt.Fprintln(stderr, "quickscale: the database is unavailable; try again later (exit 75)")
		return exitUnavailable
	}
	fmt.Fprintln(stderr, "quickscale: error:", err)
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "42P01" { // undefined_table
		fmt.Fprintln(stderr, "quickscale: the database has no QuickScale tables yet: run `quickscale migrate up` first (same DATABASE_URL)")
	}
	return 1
}

// newFlags makes a flag set that reports mistakes as usage errors and
// prints its help on --help.
func newFlags(name, synopsis string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		out := fs.Output()
		fmt.Fprintf(out, "Usage: quickscale %s\n", synopsis)
		var b strings.Builder
		fs.SetOutput(&b)
		fs.PrintDefaults()
		fs.SetOutput(out)
		if b.Len() > 0 {
			fmt.Fprintf(out, "\nFlags:\n%s", b.String())
		}
	}
	return fs
}

// parseFlags parses args; --help prints usage to stdout and ends the
// command successfully (errHelp), mistakes are usage errors.
func parseFlags(fs *flag.FlagSet, args []string, stdout io.Writer) error {
	// Parse quietly: the flag package would print its error and the usage
	// itself (to stderr, even for --help); each is printed once, below.
	stderr, usage := fs.Output(), fs.Usage
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	// A flag given twice is a mistake, not "the last one wins": on a
	// command that moves credits, --amount 5 … --amount 500 must not
	// quietly grant 500.
	// (Wrapped for the parse only: the help text reads the values' types.)
	var twice string
	fs.VisitAll(func(f *flag.Flag) { f.Value = &onceValue{Value: f.Value, name: f.Name, twice: &twice} })
	err := fs.Parse(args)
	fs.VisitAll(func(f *flag.Flag) { f.Value = f.Value.(*onceValue).Value })
	if err != nil && twice != "" {
		err = fmt.Errorf("--%s is given twice: give each flag once", twice)
	}
	fs.SetOutput(stderr)
	fs.Usage = usage
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.SetOutput(stdout)
			fs.Usage()
			fs.SetOutput(stderr)
			return errHelp
		}
		fs.Usage()
		return usageError{err.Error()}
	}
	if fs.NArg() > 0 {
		fs.Usage()
		return usageError{fmt.Sprintf("unexpected argument %q", fs.Arg(0))}
	}
	return nil
}

// onceValue is a flag's value that can be set once.
type onceValue struct {
	flag.Value
	name  string
	twice *string // set to name when it is given again
	set   bool
}

func (o *onceValue) Set(s string) error {
	if o.set {
		*o.twice = o.name
		return errors.New("given twice")
	}
	o.set = true
	return o.Value.Set(s)
}

// IsBoolFlag keeps a boolean flag usable without a value (--verified).
func (o *onceValue) IsBoolFlag() bool {
	b, ok := o.Value.(interface{ IsBoolFlag() bool })
	return ok && b.IsBoolFlag()
}

// errHelp ends a command after printing its help.
var errHelp = errors.New("help requested")

// helpOK turns errHelp into success.
func helpOK(err error) error {
	if errors.Is(err, errHelp) {
		return nil
	}
	return err
}

func runVersion(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("version", "version", stderr)
	if err := parseFlags(fs, args, stdout); err != nil {
		return helpOK(err)
	}
	fmt.Fprintln(stdout, "quickscale", version)
	return nil
}

// subcommand splits "migrate up" style commands.
func subcommand(group string, args []string, subs map[string]string, stdout, stderr io.Writer) (string, []string, error) {
	help := func(w io.Writer) {
		fmt.Fprintf(w, "Usage: quickscale %s <%s> [flags]\n\n", group, strings.Join(sortedKeys(subs), "|"))
		for _, n := range sortedKeys(subs) {
			fmt.Fprintf(w, "  %-10s %s\n", n, subs[n])
		}
	}
	if len(args) == 0 {
		help(stderr)
		return "", nil, usageError{fmt.Sprintf("%s needs a subcommand", group)}
	}
	switch args[0] {
	case "-h", "-help", "--help", "help":
		help(stdout)
		return "", nil, errHelp
	}
	if _, ok := subs[args[0]]; !ok {
		help(stderr)
		return "", nil, usageError{fmt.Sprintf("unknown %s subcommand %q", group, args[0])}
	}
	return args[0], args[1:], nil
}

func sortedKeys(m map[string]string) []string { return slices.Sorted(maps.Keys(m)) }
