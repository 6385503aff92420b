package store_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/quickscale/quickscale/store"
	"github.com/quickscale/quickscale/store/storetest"
)

// The ledger benchmarks run once each (make bench uses -benchtime=1x),
// measure for a fixed time and print a row next to a pgbench reference
// measured in the same run on the same server.

const benchClients = 8

// consumeSizes bounds the batch-size histogram; larger batches count in
// its last bucket.
const consumeSizes = 40

// benchRounds is how many times a measurement alternates with its
// reference (each round a third of BENCH_DURATION).
const benchRounds = 3

func benchDuration() time.Duration {
	if d, err := time.ParseDuration(os.Getenv("BENCH_DURATION")); err == nil && d > 0 {
		return d
	}
	return 10 * time.Second
}

// seedUsers inserts n verified users, each with a big subscription grant
// (spent first) and a big pack grant, in bulk SQL, and returns their ids.
func seedUsers(b *testing.B, pool *pgxpool.Pool, n int, tag string) []int64 {
	b.Helper()
	ctx := context.Background()
	tx, err := pool.Begin(ctx)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := tx.Exec(ctx, `SELECT set_config('quickscale.ledger', 'on', true)`); err != nil {
		b.Fatal(err)
	}
	for _, q := range []string{
		`INSERT INTO users (email, password_hash, email_verified_at)
		 SELECT $1 || g || '@bench.example.com', 'not-a-hash', now() FROM generate_series(1, $2::int) g`,
		`INSERT INTO accounts (user_id) SELECT id FROM users WHERE email LIKE $1 || '%@bench.example.com' AND $2::int > 0`,
		`INSERT INTO grants (user_id, kind, amount, remaining, expires_at, source_kind, source_id)
		 SELECT user_id, 'subscription', 1000000000, 1000000000, now() + interval '30 days', 'bench-sub-' || $1, user_id::text
		   FROM accounts a JOIN users u ON u.id = a.user_id WHERE u.email LIKE $1 || '%@bench.example.com' AND $2::int > 0`,
		`INSERT INTO grants (user_id, kind, amount, remaining, source_kind, source_id)
		 SELECT user_id, 'pack', 1000000000, 1000000000, 'bench-pack-' || $1, user_id::text
		   FROM accounts a JOIN users u ON u.id = a.user_id WHERE u.email LIKE $1 || '%@bench.example.com' AND $2::int > 0`,
		`INSERT INTO ledger_entries (user_id, grant_id, kind, amount)
		 SELECT user_id, id, 'grant', amount FROM grants WHERE source_kind IN ('bench-sub-' || $1, 'bench-pack-' || $1) AND $2::int > 0`,
	} {
		if _, err := tx.Exec(ctx, q, tag, n); err != nil {
			b.Fatalf("seed: %v", err)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		b.Fatal(err)
	}
	rows, err := pool.Query(ctx, `SELECT id FROM users WHERE email LIKE $1 || '%@bench.example.com' ORDER BY id`, tag)
	if err != nil {
		b.Fatal(err)
	}
	var ids []int64
	for rows.Next() {
		var id int64
		_ = rows.Scan(&id)
		ids = append(ids, id)
	}
	rows.Close()
	// Set hint bits and the visibility map, as a database in service has.
	if _, err := pool.Exec(ctx, `VACUUM ANALYZE`); err != nil {
		b.Fatal(err)
	}
	return ids
}

// referenceTables creates the pgbench reference schema: one account row per
// user and a history table.
func referenceTables(b *testing.B, pool *pgxpool.Pool, n int) {
	b.Helper()
	ctx := context.Background()
	for _, q := range []string{
		`CREATE TABLE bench_accounts (id bigint PRIMARY KEY, balance bigint NOT NULL)`,
		`INSERT INTO bench_accounts SELECT g, 0 FROM generate_series(1, $1::int) g`,
		`CREATE TABLE bench_history (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, account_id bigint NOT NULL, delta bigint NOT NULL, created_at timestamptz NOT NULL DEFAULT now())`,
	} {
		var err error
		if q[0] == 'I' {
			_, err = pool.Exec(ctx, q, n)
		} else {
			_, err = pool.Exec(ctx, q)
		}
		if err != nil {
			b.Fatal(err)
		}
	}
}

const pgbenchSpread = `\set aid random(1, 10000)
BEGIN;
UPDATE bench_accounts SET balance = balance - 1 WHERE id = :aid;
INSERT INTO bench_history (account_id, delta) VALUES (:aid, -1);
END;
`

const pgbenchHot = `BEGIN;
UPDATE bench_accounts SET balance = balance - 1 WHERE id = 1;
INSERT INTO bench_history (account_id, delta) VALUES (1, -1);
END;
`

// consumeLoad runs clients goroutines consuming for d on users picked by
// pick, and returns throughput and latencies.
func consumeLoad(b *testing.B, st *store.Store, service string, clients int, d time.Duration, pick func(r *rand.Rand) int64, stop <-chan struct{}) (float64, *storetest.Latencies) {
	b.Helper()
	var lat storetest.Latencies
	var ops atomic.Int64
	var failed atomic.Value
	deadline := time.Now().Add(d)
	var wg sync.WaitGroup
	start := time.Now()
	for c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(c), uint64(time.Now().UnixNano())))
			for i := 0; ; i++ {
				if stop != nil {
					select {
					case <-stop:
						return
					default:
					}
				} else if time.Now().After(deadline) {
					return
				}
				t0 := time.Now()
				_, _, err := st.Consume(context.Background(), store.ConsumeRequest{
					UserID: pick(r), Service: service, IdempotencyKey: fmt.Sprintf("b-%d-%d-%d", c, i, t0.UnixNano()),
				})
				if err != nil {
					failed.Store(err)
					return
				}
				lat.Add(time.Since(t0))
				ops.Add(1)
			}
		}()
	}
	wg.Wait()
	if err, ok := failed.Load().(error); ok {
		b.Fatalf("consume: %v", err)
	}
	return float64(ops.Load()) / time.Since(start).Seconds(), &lat
}

// warmup makes every user spend once, with benchClients workers.
func warmup(b *testing.B, st *store.Store, svc string, users []int64) {
	b.Helper()
	var next atomic.Int64
	var wg sync.WaitGroup
	for range benchClients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := next.Add(1) - 1; int(i) < len(users); i = next.Add(1) - 1 {
				if _, _, err := st.Consume(context.Background(), store.ConsumeRequest{UserID: users[i], Service: svc, IdempotencyKey: fmt.Sprintf("warm-%d", i)}); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
}

func benchStore(b *testing.B, maxConns int32) (*store.Store, string) {
	b.Helper()
	url := storetest.NewDatabase(b)
	pool, err := store.OpenPool(context.Background(), url, store.PoolOptions{MaxConns: maxConns})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(pool.Close)
	return store.New(pool, nil), url
}

// BenchmarkConsume measures consume throughput and latency at 8 clients,
// (a) spread over 10,000 users and (b) all on one user, next to pgbench
// running BEGIN; UPDATE one account row; INSERT one history row; END.
func BenchmarkConsume(b *testing.B) {
	for _, tc := range []struct {
		name   string
		script string
		target string
		hot    bool
	}{
		{"spread over 10,000 users", pgbenchSpread, "ratio >= 1.0", false},
		{"all on one user", pgbenchHot, "ratio >= 0.8", true},
	} {
		b.Run(tc.name, func(b *testing.B) {
			st, url := benchStore(b, benchClients+2)
			// Spends per consume transaction, and how many transactions had
			// each size: throughput follows how full the batches are.
			var batches, batched atomic.Int64
			var sizes [consumeSizes]atomic.Int64
			st.ObserveConsumeBatches(func(n int) {
				batches.Add(1)
				batched.Add(int64(n))
				sizes[min(n, consumeSizes-1)].Add(1)
			})
			users := seedUsers(b, st.Pool(), 10_000, "c")
			referenceTables(b, st.Pool(), 10_000)
			svc := storetest.NewService(b, st, storetest.ServiceOpts{Slug: "bench", Cost: 1})
			pick := func(r *rand.Rand) int64 { return users[r.IntN(len(users))] }
			if tc.hot {
				pick = func(*rand.Rand) int64 { return users[0] }
			}
			// Warm up: every user spends once (their first usage grows the
			// per-user indexes), then both sides run briefly.
			warmup(b, st, svc, users)
			// Statistics as autovacuum would have them in a database in
			// service (empty-table statistics make the planner pick scans).
			if _, err := st.Pool().Exec(context.Background(), `VACUUM ANALYZE`); err != nil {
				b.Fatal(err)
			}
			consumeLoad(b, st, svc, benchClients, time.Second, pick, nil)
			storetest.Pgbench(b, url, tc.script, benchClients, time.Second)

			batches.Store(0)
			batched.Store(0)
			for i := range sizes {
				sizes[i].Store(0)
			}
			b.ResetTimer()
			ops, lat, ref := storetest.Compare(b, benchRounds, benchDuration(), func(d time.Duration) (float64, *storetest.Latencies) {
				return consumeLoad(b, st, svc, benchClients, d, pick, nil)
			}, url, tc.script, benchClients)
			b.StopTimer()
			storetest.Report(os.Stdout, "consume, 8 clients, "+tc.name, ops, lat.Quantile(.5), lat.Quantile(.99), &ref, tc.target)
			if n := batches.Load(); n > 0 {
				var shares []string
				for size := range sizes {
					if k := sizes[size].Load(); k*100 >= n {
						shares = append(shares, fmt.Sprintf("%.0f%% with %d", 100*float64(k)/float64(n), size))
					}
				}
				fmt.Fprintf(os.Stdout, "  (%.2f spends per consume transaction; transactions: %s)\n",
					float64(batched.Load())/float64(n), strings.Join(shares, ", "))
			}
			b.ReportMetric(ops, "consumes/s")
			b.ReportMetric(ref.TPS, "pgbench-tps")
			b.ReportMetric(ops/ref.TPS, "ratio")
			b.ReportMetric(float64(lat.Quantile(.99).Microseconds())/1000, "p99-ms")
		})
	}
}

// BenchmarkBalanceDeepHistory reads the balance of a user with 100,000
// ledger entries and of one with a handful: the cost must not depend on
// the length of the history.
func BenchmarkBalanceDeepHistory(b *testing.B) {
	st, _ := benchStore(b, 4)
	users := seedUsers(b, st.Pool(), 2, "h")
	deep, shallow := users[0], users[1]
	svc := storetest.NewService(b, st, storetest.ServiceOpts{Slug: "bench", Cost: 1})
	seedHistory(b, st.Pool(), deep, svc, 100_000)
	seedHistory(b, st.Pool(), shallow, svc, 10)
	ctx := context.Background()
	for _, u := range []struct {
		name string
		id   int64
	}{{"100,000 entries", deep}, {"10 entries", shallow}} {
		var lat storetest.Latencies
		start := time.Now()
		for range 5000 {
			t0 := time.Now()
			bal, err := st.Balance(ctx, u.id)
			if err != nil || bal.Total <= 0 {
				b.Fatalf("balance: %v %+v", err, bal)
			}
			lat.Add(time.Since(t0))
		}
		ops := 5000 / time.Since(start).Seconds()
		storetest.Report(os.Stdout, "balance read, user with "+u.name, ops, lat.Quantile(.5), lat.Quantile(.99), nil, "p99 < 20ms")
		b.ReportMetric(float64(lat.Quantile(.99).Microseconds())/1000, "p99-ms-"+map[bool]string{true: "deep", false: "shallow"}[u.id == deep])
	}
}

// BenchmarkAdminUserSearch searches 1,000,000 users the way /admin/users
// does (an address contains the query, newest first, 50 a page), with the
// trigram index of migration 00013 and, for comparison, without it.
func BenchmarkAdminUserSearch(b *testing.B) {
	st, _ := benchStore(b, 4)
	ctx := context.Background()
	const n = 1_000_000
	// Seeded without the index, then the index made again as the migration
	// made it: as on a database that had its users before 00013, and a
	// minute faster than a million index insertions.
	// (The definition leaves out the statistics target, set apart.)
	var indexDef string
	var target int
	if err := st.Pool().QueryRow(ctx, `SELECT pg_get_indexdef(i.indexrelid), a.attstattarget FROM pg_index i
  JOIN pg_attribute a ON a.attrelid = i.indexrelid AND a.attnum = 1 WHERE i.indexrelid = 'users_email_search_idx'::regclass`).Scan(&indexDef, &target); err != nil {
		b.Fatalf("the search index: %v", err)
	}
	if _, err := st.Pool().Exec(ctx, `DROP INDEX users_email_search_idx`); err != nil {
		b.Fatal(err)
	}
	_, err := st.Pool().Exec(ctx, `INSERT INTO users (email, password_hash, email_verified_at)
SELECT f || (ARRAY['.', '_', '', '.'])[1 + g % 4] || l || g || '@' ||
       CASE WHEN g % 5 < 3 THEN (ARRAY['gmail.com', 'yahoo.com', 'outlook.com', 'hotmail.com', 'icloud.com', 'proton.me'])[1 + g % 6]
            ELSE 'company' || ((g / 5) % 4000) || '.example' END,
       'not-a-hash', now()
  FROM generate_series(1, $1::int) g,
       LATERAL (SELECT (ARRAY['anna', 'ben', 'carla', 'dmitri', 'elena', 'farid', 'grace', 'hugo', 'ines', 'jonas', 'kim', 'lena',
                              'marco', 'nina', 'omar', 'paula', 'quinn', 'rosa', 'sam', 'tariq', 'uma', 'victor', 'wei', 'yusuf', 'zoë',
                              'maria', 'john', 'li', 'ana', 'david', 'sara', 'peter', 'chen', 'fatima', 'luca', 'mia', 'noah', 'emma', 'adam', 'eva'])[1 + (g * 7) % 40] AS f,
                       (ARRAY['smith', 'garcia', 'müller', 'rossi', 'kowalski', 'nguyen', 'kim', 'silva', 'jones', 'brown', 'dubois', 'novak',
                              'ivanova', 'yilmaz', 'khan', 'tanaka', 'olsen', 'murphy', 'peña', 'costa', 'wang', 'lee', 'martin', 'bernard',
                              'fischer', 'weber', 'moreau', 'lopez', 'ali', 'singh', 'cohen', 'walker', 'young', 'king', 'wright', 'scott',
                              'green', 'baker', 'adams', 'hall'])[1 + (g / 40) % 40] AS l) names`, n)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := st.Pool().Exec(ctx, indexDef); err != nil {
		b.Fatal(err)
	}
	if _, err := st.Pool().Exec(ctx, fmt.Sprintf(`ALTER INDEX users_email_search_idx ALTER COLUMN 1 SET STATISTICS %d`, target)); err != nil {
		b.Fatal(err)
	}
	if _, err := st.Pool().Exec(ctx, `VACUUM ANALYZE users`); err != nil {
		b.Fatal(err)
	}
	var first, last int64
	if err := st.Pool().QueryRow(ctx, `SELECT min(id), max(id) FROM users`).Scan(&first, &last); err != nil {
		b.Fatal(err)
	}
	r := rand.New(rand.NewPCG(1, 2))
	email := func() string {
		var e string
		if err := st.Pool().QueryRow(ctx, `SELECT email FROM users WHERE id = $1`, first+r.Int64N(last-first+1)).Scan(&e); err != nil {
			b.Fatal(err)
		}
		return e
	}
	run := func(name string, times int, query func() string, want func(int) bool) {
		var lat storetest.Latencies
		start := time.Now()
		for range times {
			q := query()
			t0 := time.Now()
			page, err := st.SearchUsers(ctx, q, 0, 0, 50)
			if err != nil || !want(len(page.Items)) {
				b.Fatalf("search %q: %v, %d users", q, err, len(page.Items))
			}
			lat.Add(time.Since(t0))
		}
		storetest.Report(os.Stdout, "admin user search, 1,000,000 users, "+name, float64(times)/time.Since(start).Seconds(),
			lat.Quantile(.5), lat.Quantile(.99), nil, "")
	}
	some := func(k int) bool { return k >= 1 }
	page := func(k int) bool { return k == 50 }
	none := func(k int) bool { return k == 0 }
	// Short fragments support might type: some match many users, some
	// (with these addresses) nobody.
	matching, matchless := []string{"a.c", "peña", "zoë", "ann", "1995"}, []string{"e@g", "n_s", "m@gmail.com"}
	pick := func(from []string) func() string { return func() string { return from[r.IntN(len(from))] } }
	anyCount := func(int) bool { return true }
	run("an address", 300, email, some)
	run("a name and number (anna.smith12)", 300, func() string { e := email(); return e[:strings.IndexByte(e, '@')] }, some)
	run("a company's domain", 300, func() string { return fmt.Sprintf("@company%d.example", r.IntN(4000)) }, some)
	run("a mail provider's domain", 300, func() string { return "gmail.com" }, page)
	run("fragments with matches ("+strings.Join(matching, " ")+")", 100, pick(matching), anyCount)
	run("fragments matching nobody ("+strings.Join(matchless, " ")+")", 30, pick(matchless), none)
	run("nobody (no match)", 300, func() string { return fmt.Sprintf("nobody%d@", r.IntN(1000)) }, none)
	run("everyone (the newest 50)", 300, func() string { return "" }, page)
	if _, err := st.Pool().Exec(ctx, `DROP INDEX users_email_search_idx`); err != nil {
		b.Fatal(err)
	}
	run("an address, without the index", 10, email, some)
	run("fragments with matches, without the index", 30, pick(matching), anyCount)
	run("fragments matching nobody, without the index", 10, pick(matchless), none)
	run("a company's domain, without the index", 10, func() string { return fmt.Sprintf("@company%d.example", r.IntN(4000)) }, some)
}

// seedHistory gives a user n usages of svc in bulk, with their entries
// drawn from the user's pack grant.
func seedHistory(b *testing.B, pool *pgxpool.Pool, userID int64, svc string, n int) {
	b.Helper()
	ctx := context.Background()
	_, err := pool.Exec(ctx, `
WITH cfg AS (SELECT set_config('quickscale.ledger', 'on', true)),
u AS (
    INSERT INTO usages (user_id, service_id, credits, idempotency_key, fingerprint, balance_after)
    SELECT $1, s.id, 1, 'seed-' || g, 'seed', 1000000000 - g
      FROM generate_series(1, $2::int) g, services s WHERE s.slug = $3
    RETURNING id
)
INSERT INTO ledger_entries (user_id, grant_id, kind, amount, usage_id)
SELECT $1, (SELECT id FROM grants WHERE user_id = $1 AND kind = 'pack'), 'consume', -1, u.id FROM u, cfg ORDER BY u.id`,
		userID, n, svc)
	if err != nil {
		b.Fatalf("seed history: %v", err)
	}
	_, _ = pool.Exec(ctx, `ANALYZE`)
}

// BenchmarkExpireSweep sweeps 1,000,000 overdue grants (200,000 users with
// five each) the way the expire_credits worker does, while 8 clients keep
// consuming on 10,000 other users, and compares consume p99 during the
// sweep with its idle value.
func BenchmarkExpireSweep(b *testing.B) {
	st, _ := benchStore(b, benchClients+4)
	ctx := context.Background()
	live := seedUsers(b, st.Pool(), 10_000, "live")
	svc := storetest.NewService(b, st, storetest.ServiceOpts{Slug: "bench", Cost: 1})
	setupStart := time.Now()
	tx, err := st.Pool().Begin(ctx)
	if err != nil {
		b.Fatal(err)
	}
	for _, q := range []string{
		`SELECT set_config('quickscale.ledger', 'on', true)`,
		`INSERT INTO users (email, password_hash, email_verified_at)
		 SELECT 'exp' || g || '@bench.example.com', 'not-a-hash', now() FROM generate_series(1, 200000) g`,
		`INSERT INTO accounts (user_id) SELECT id FROM users WHERE email LIKE 'exp%@bench.example.com'`,
		`INSERT INTO grants (user_id, kind, amount, remaining, expires_at, source_kind, source_id, created_at)
		 SELECT a.user_id, 'subscription', 100, 100, now() - interval '1 minute' * k, 'bench-exp', a.user_id || '-' || k, now() - interval '40 days'
		   FROM accounts a JOIN users u ON u.id = a.user_id, generate_series(1, 5) k
		  WHERE u.email LIKE 'exp%@bench.example.com'`,
		`INSERT INTO ledger_entries (user_id, grant_id, kind, amount)
		 SELECT user_id, id, 'grant', amount FROM grants WHERE source_kind = 'bench-exp'`,
	} {
		if _, err := tx.Exec(ctx, q); err != nil {
			b.Fatalf("seed overdue grants: %v", err)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		b.Fatal(err)
	}
	if _, err := st.Pool().Exec(ctx, `ANALYZE`); err != nil {
		b.Fatal(err)
	}
	var overdue int64
	if err := st.Pool().QueryRow(ctx, `SELECT count(*) FROM grants WHERE closed_at IS NULL AND expires_at <= now()`).Scan(&overdue); err != nil || overdue != 1_000_000 {
		b.Fatalf("seeded %d overdue grants (%v)", overdue, err)
	}
	fmt.Fprintf(os.Stdout, "(sweep setup: 1,000,000 overdue grants seeded in %s)\n", time.Since(setupStart).Round(time.Second))
	pick := func(r *rand.Rand) int64 { return live[r.IntN(len(live))] }
	consumeLoad(b, st, svc, benchClients, time.Second, pick, nil)

	b.ResetTimer()
	idleOps, idle := consumeLoad(b, st, svc, benchClients, 5*time.Second, pick, nil)

	stop := make(chan struct{})
	var busyOps float64
	var busy *storetest.Latencies
	done := make(chan struct{})
	go func() {
		busyOps, busy = consumeLoad(b, st, svc, benchClients, 0, pick, stop)
		close(done)
	}()
	sweepStart := time.Now()
	// As the expire_credits worker sweeps on its default one-minute
	// schedule: batches closing about 50 grants, resting up to twice a batch's
	// time after each unless that would take it past 90% of the period.
	res, err := st.ExpireOverdue(ctx, store.SweepOptions{BatchSize: 50, BatchGrants: 50, Pause: 2, Deadline: sweepStart.Add(54 * time.Second)}, nil)
	if err != nil {
		b.Fatalf("sweep: %v", err)
	}
	swept := res.Grants
	sweepTime := time.Since(sweepStart)
	close(stop)
	<-done
	b.StopTimer()
	if swept != 1_000_000 {
		b.Fatalf("swept %d grants, want 1,000,000", swept)
	}
	storetest.Report(os.Stdout, "consume p99 idle (8 clients)", idleOps, idle.Quantile(.5), idle.Quantile(.99), nil, "")
	storetest.Report(os.Stdout, "consume p99 during the sweep", busyOps, busy.Quantile(.5), busy.Quantile(.99), nil,
		fmt.Sprintf("p99 <= 2x idle: %.2fx", float64(busy.Quantile(.99))/float64(idle.Quantile(.99))))
	fmt.Fprintf(os.Stdout, "%-44s %10.0f/s  took %s (target: within 60s)\n", "sweep of 1,000,000 expiring grants", float64(swept)/sweepTime.Seconds(), sweepTime.Round(10*time.Millisecond))
	b.ReportMetric(sweepTime.Seconds(), "sweep-s")
	b.ReportMetric(float64(busy.Quantile(.99))/float64(idle.Quantile(.99)), "p99-busy/idle")
}
