package main

import (
	"context"
	"fmt"
	"io"
	"strings"

	"github.com/quickscale/quickscale/store"
)

func runMigrate(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	sub, rest, err := subcommand("migrate", args, map[string]string{
		"up":     "apply pending app and River migrations (safe to run from several processes at once)",
		"status": "show applied and pending migrations of both sets",
	}, stdout, stderr)
	if err != nil {
		return helpOK(err)
	}
	fs := newFlags("migrate "+sub, "migrate "+sub, stderr)
	if err := parseFlags(fs, rest, stdout); err != nil {
		return helpOK(err)
	}
	env, err := openEnv(ctx, getenv, stderr, "migrate")
	if err != nil {
		return err
	}
	defer env.close()
	switch sub {
	case "up":
		res, err := store.Migrate(ctx, env.pool, env.logger)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "app migrations applied: %d %s\n", len(res.App), strings.Join(res.App, " "))
		fmt.Fprintf(stdout, "river migrations applied: %d %v\n", len(res.River), res.River)
		return nil
	default:
		st, err := store.Status(ctx, env.pool)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "app migrations:   %d applied, %d pending (target version %d)\n", len(st.AppApplied), len(st.AppPending), st.AppTarget)
		for _, p := range st.AppPending {
			fmt.Fprintf(stdout, "  pending: %s\n", p)
		}
		fmt.Fprintf(stdout, "river migrations: version %d of %d\n", st.RiverCurrent, st.RiverTarget)
		for _, v := range st.AppUnknown {
			fmt.Fprintf(stdout, "  unknown to this binary: app migration %d\n", v)
		}
		if st.Current() && st.Ahead() {
			// A rolled-back binary on a schema migrated by a newer one:
			// the processes run (an upgrade migrates before it replaces
			// them), but a deploy's check should see it.
			fmt.Fprintln(stdout, "status: AHEAD of this binary: the database was migrated by a newer quickscale (this is", version+"); run the binary that migrated it, or check that this one still works on its schema")
			return exitWith{code: exitAhead}
		}
		if st.Current() {
			fmt.Fprintln(stdout, "status: current")
			return nil
		}
		fmt.Fprintln(stdout, "status: NOT current:", st.Problem())
		// A script (a deploy's check) sees it in the exit code too.
		return exitWith{code: exitNotCurrent}
	}
}
