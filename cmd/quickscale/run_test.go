package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	neturl "net/url"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"github.com/stretchr/testify/require"

	"github.com/quickscale/quickscale/jobs"
	"github.com/quickscale/quickscale/migrations"
	"github.com/quickscale/quickscale/store"
	"github.com/quickscale/quickscale/store/storetest"
)

// appMigrations counts the embedded goose migrations.
func appMigrations(t *testing.T) int {
	t.Helper()
	files, err := fs.Glob(migrations.FS, "*.sql")
	require.NoError(t, err)
	require.NotEmpty(t, files)
	return len(files)
}

// runCmd calls run in-process and returns its exit code and output.
func runCmd(t *testing.T, env map[string]string, stdin string, args ...string) (int, string, string) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	err := run(context.Background(), append([]string{"quickscale"}, args...), envFrom(env), strings.NewReader(stdin), &stdout, &stderr)
	code := exitCode(err, &stderr)
	return code, stdout.String(), stderr.String()
}

func TestRunWithoutCommandPrintsUsageAndExits2(t *testing.T) {
	t.Parallel()
	code, _, stderr := runCmd(t, nil, "")
	if code != 2 || !strings.Contains(stderr, "Usage:") {
		t.Fatalf("exit %d, stderr:\n%s", code, stderr)
	}
}

func TestRunUnknownCommandOrFlagExits2(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{
		{"serve"}, {"dev", "--port", "1"}, {"migrate"}, {"migrate", "sideways"}, {"users", "create", "--nope"},
		{"credits", "grant", "--amount", "x"}, {"api", "extra-arg"},
	} {
		code, _, stderr := runCmd(t, nil, "", args...)
		if code != 2 || !strings.Contains(stderr, "Usage") {
			t.Errorf("%v: exit %d, stderr:\n%s", args, code, stderr)
		}
	}
}

// A missing --email is a usage error (2) before any database work: with
// no database to answer it is still the flag that is reported.
func TestMissingEmailIsAUsageErrorWithoutADatabase(t *testing.T) {
	t.Parallel()
	env := map[string]string{"DATABASE_URL": "postgres://127.0.0.1:1/none?sslmode=disable&connect_timeout=2"}
	for _, args := range [][]string{
		{"credits", "balance"}, {"credits", "grant", "--amount", "5", "--reason", "x"},
		{"users", "promote"}, {"apikeys", "create", "--name", "ci"},
	} {
		code, _, stderr := runCmd(t, env, "", args...)
		if code != 2 || !strings.Contains(stderr, "--email is required") {
			t.Errorf("%v: exit %d, stderr %q; want 2 and --email is required", args, code, stderr)
		}
	}
}

func TestEverySubcommandHasHelp(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{
		{"dev"}, {"api"}, {"worker"}, {"migrate", "up"}, {"migrate", "status"}, {"migrate"}, {"version"},
		{"users", "create"}, {"users", "promote"}, {"users", "demote"}, {"credits", "grant"}, {"credits", "balance"},
		{"apikeys", "create"}, {"apikeys", "list"}, {"apikeys", "revoke"}, {"stripe", "sync"}, {"users"}, {"services", "set"}, {"services", "list"}, {"services"},
	} {
		code, stdout, stderr := runCmd(t, nil, "", append(args, "--help")...)
		if code != 0 || !strings.Contains(stdout, "Usage: quickscale "+args[0]) || stderr != "" || strings.Count(stdout, "Flags:") > 1 {
			t.Errorf("%v --help: exit %d (want all of the help once, on stdout)\nstdout:\n%s\nstderr:\n%s", args, code, stdout, stderr)
		}
	}
}

// A bad flag value is reported once, after the usage.
func TestBadFlagValueIsReportedOnce(t *testing.T) {
	t.Parallel()
	code, stdout, stderr := runCmd(t, nil, "", "credits", "grant", "--amount", "abc")
	require.Equal(t, 2, code)
	require.Empty(t, stdout)
	require.Equal(t, 1, strings.Count(stderr, `invalid value "abc"`), stderr)
	require.Equal(t, 1, strings.Count(stderr, "Usage: quickscale credits grant"), stderr)
}

// An operator command that cannot reach the database exits 75 (EX_TEMPFAIL:
// a script may retry), apart from a refusal, which is 1.
func TestOperatorCommandsWithoutADatabaseExit75(t *testing.T) {
	t.Parallel()
	down := map[string]string{"DATABASE_URL": "postgres://127.0.0.1:1/none?sslmode=disable&connect_timeout=2"}
	for _, args := range [][]string{
		{"services", "list"}, {"credits", "balance", "--email", "a@example.com"}, {"migrate", "status"},
		{"credits", "grant", "--email", "a@example.com", "--amount", "5", "--reason", "x", "--key", "k1"},
	} {
		code, stdout, stderr := runCmd(t, down, "", args...)
		if code != exitUnavailable || !strings.Contains(stderr, "try again later") || stdout != "" {
			t.Errorf("%v: exit %d, stdout %q, stderr:\n%s", args, code, stdout, stderr)
		}
	}
	_, env := cliStore(t)
	code, _, stderr := runCmd(t, env, "", "credits", "balance", "--email", "nobody@example.com")
	require.Equal(t, 1, code, stderr)
}

// A flag given twice is refused before anything is done, not "the last
// one wins" (--amount 5 … --amount 500 granted 500).
func TestAFlagGivenTwiceIsAUsageError(t *testing.T) {
	t.Parallel()
	env := map[string]string{"DATABASE_URL": "postgres://127.0.0.1:1/none?sslmode=disable&connect_timeout=2"}
	for _, args := range [][]string{
		{"credits", "grant", "--email", "a@example.com", "--amount", "5", "--reason", "x", "--amount", "500"},
		{"users", "create", "--email", "a@example.com", "--email=b@example.com"},
		{"users", "create", "--email", "a@example.com", "--verified", "--verified=false"},
		{"services", "set", "--slug", "ocr", "--inactive", "--inactive"},
	} {
		code, stdout, stderr := runCmd(t, env, "", args...)
		if code != 2 || !strings.Contains(stderr, "is given twice") || stdout != "" {
			t.Errorf("%v: exit %d, stdout %q, stderr:\n%s", args, code, stdout, stderr)
		}
	}
}

// failingWriter fails every write, as stdout redirected to a full disk.
type failingWriter struct{}

func (failingWriter) Write([]byte) (int, error) { return 0, errors.New("no space left on device") }

// Output that cannot be written fails the command, and says that what it
// did stands: an API key or a generated password shown nowhere is lost.
func TestAnOperatorCommandWhoseOutputCannotBeWrittenFails(t *testing.T) {
	t.Parallel()
	err := run(context.Background(), []string{"quickscale", "version"}, envFrom(nil), strings.NewReader(""), failingWriter{}, io.Discard)
	require.ErrorContains(t, err, "could not write the output", "version")
	err = run(context.Background(), []string{"quickscale", "services", "set", "--help"}, envFrom(nil), strings.NewReader(""), failingWriter{}, io.Discard)
	require.ErrorContains(t, err, "could not write the output")
	require.ErrorContains(t, err, "no space left on device")
	var stderr bytes.Buffer
	require.Equal(t, 1, exitCode(err, &stderr))
}

func TestVersionPrintsTheVersion(t *testing.T) {
	t.Parallel()
	code, stdout, _ := runCmd(t, nil, "", "version")
	if code != 0 || strings.TrimSpace(stdout) != "quickscale "+version {
		t.Fatalf("exit %d stdout %q", code, stdout)
	}
}

func TestBadConfigurationExitsNonZeroNamingTheVariable(t *testing.T) {
	t.Parallel()
	code, _, stderr := runCmd(t, map[string]string{"LOG_FORMAT": "yaml"}, "", "api")
	if code == 0 || !strings.Contains(stderr, "LOG_FORMAT") {
		t.Fatalf("exit %d stderr %q", code, stderr)
	}
}

// freeAddr returns a loopback address free right now. The port is picked
// below Linux's ephemeral range (32768 and up), so that no outgoing
// connection of a parallel test can take it before the program binds it.
func freeAddr(t *testing.T) string {
	t.Helper()
	for range 100 {
		addr := fmt.Sprintf("127.0.0.1:%d", 20000+rand.IntN(12000))
		if ln, err := net.Listen("tcp", addr); err == nil {
			ln.Close()
			return addr
		}
	}
	t.Fatal("no free port between 20000 and 32000")
	return ""
}

// startRun starts the real program through run() and returns a stop
// function that cancels it (as SIGTERM does) and reports its result.
func startRun(t *testing.T, env map[string]string, args ...string) (stop func() (time.Duration, error), stdout *syncBuffer) {
	t.Helper()
	stop, stdout, _ = startRunLogs(t, env, args...)
	return stop, stdout
}

// startRunLogs is startRun, also returning what the process logs (stderr).
func startRunLogs(t *testing.T, env map[string]string, args ...string) (stop func() (time.Duration, error), stdout, stderr *syncBuffer) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	out, errOut := &syncBuffer{}, &syncBuffer{}
	go func() {
		done <- run(ctx, append([]string{"quickscale"}, args...), envFrom(env), strings.NewReader(""), out, errOut)
	}()
	stopped := false
	stop = func() (time.Duration, error) {
		if stopped {
			return 0, nil
		}
		stopped = true
		start := time.Now()
		cancel()
		select {
		case err := <-done:
			return time.Since(start), err
		case <-time.After(30 * time.Second):
			t.Fatalf("%v did not stop within 30s; log:\n%s", args, tail(errOut.String(), 40))
			return 0, nil
		}
	}
	t.Cleanup(func() {
		_, _ = stop()
		if t.Failed() {
			t.Logf("%v log:\n%s", args, tail(errOut.String(), 40))
		}
	})
	return stop, out, errOut
}

func waitHTTP(t *testing.T, url string, want int, within time.Duration) string {
	t.Helper()
	var body string
	eventually(t, within, url+" to answer "+fmt.Sprint(want), func() bool {
		resp, err := http.Get(url)
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		body = string(b)
		return resp.StatusCode == want
	})
	return body
}

func TestDevStartsThroughRunServesAndShutsDownCleanly(t *testing.T) {
	t.Parallel()
	addr := freeAddr(t)
	env := map[string]string{"DATABASE_URL": storetest.NewDatabase(t), "ADDR": addr, "SHUTDOWN_TIMEOUT": "5s"}
	stop, stdout := startRun(t, env, "dev")
	waitHTTP(t, "http://"+addr+"/readyz", http.StatusOK, 30*time.Second)
	waitHTTP(t, "http://"+addr+"/healthz", http.StatusOK, time.Second)
	body := waitHTTP(t, "http://"+addr+"/", http.StatusOK, time.Second)
	if !strings.Contains(body, "QuickScale") {
		t.Fatalf("home page does not say QuickScale:\n%s", body)
	}
	if out := stdout.String(); !strings.Contains(out, "http://"+addr) || !strings.Contains(out, "demo admin") {
		t.Fatalf("dev did not print its URL and demo admin:\n%s", out)
	}
	took, err := stop()
	if err != nil {
		t.Fatalf("run returned %v after cancel", err)
	}
	if took > 10*time.Second {
		t.Fatalf("shutdown took %s", took)
	}
	if _, err := http.Get("http://" + addr + "/healthz"); err == nil {
		t.Fatal("still serving after shutdown")
	}
}

// ADDR with port 0 takes a free port, and the default BASE_URL (the
// banner, links in emails, redirects) names that port, not 0.
func TestDevOnPortZeroNamesThePortItTook(t *testing.T) {
	t.Parallel()
	env := map[string]string{"DATABASE_URL": storetest.NewDatabase(t), "ADDR": "127.0.0.1:0", "METRICS_ADDR": "off"}
	_, stdout := startRun(t, env, "dev")
	re := regexp.MustCompile(`QuickScale is running: (http://127\.0\.0\.1:(\d+))\n`)
	eventually(t, 30*time.Second, "the banner", func() bool { return re.MatchString(stdout.String()) })
	m := re.FindStringSubmatch(stdout.String())
	require.NotEqual(t, "0", m[2], stdout.String())
	waitHTTP(t, m[1]+"/healthz", http.StatusOK, 5*time.Second)
}

func TestApiAndWorkerStartThroughRunOnAMigratedDatabase(t *testing.T) {
	t.Parallel()
	dbURL := storetest.NewDatabase(t)
	apiAddr, apiMetrics, workerMetrics := freeAddr(t), freeAddr(t), freeAddr(t)
	stopAPI, _ := startRun(t, map[string]string{"DATABASE_URL": dbURL, "ADDR": apiAddr, "METRICS_ADDR": apiMetrics, "SIMULATE_PAYMENTS": "true"}, "api")
	stopWorker, _ := startRun(t, map[string]string{"DATABASE_URL": dbURL, "METRICS_ADDR": workerMetrics, "DEV_MAILBOX": "true", "SIMULATE_PAYMENTS": "true", "STRIPE_WEBHOOK_SECRET": "whsec_test_shared"}, "worker")
	waitHTTP(t, "http://"+apiAddr+"/readyz", http.StatusOK, 30*time.Second)
	waitHTTP(t, "http://"+workerMetrics+"/readyz", http.StatusOK, 30*time.Second)
	metrics := waitHTTP(t, "http://"+apiMetrics+"/metrics", http.StatusOK, 5*time.Second)
	if !strings.Contains(metrics, "quickscale_http_requests_total") {
		t.Fatalf("api metrics lack HTTP counters")
	}
	wm := waitHTTP(t, "http://"+workerMetrics+"/metrics", http.StatusOK, 5*time.Second)
	if !strings.Contains(wm, "go_goroutines") || !strings.Contains(wm, "quickscale_db_pool_total_connections") {
		t.Fatalf("worker metrics lack runtime or pool series")
	}
	// The api has no dev pages.
	resp, err := http.Get("http://" + apiAddr + "/dev/mailbox")
	require.NoError(t, err)
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Fatalf("/dev/mailbox on api: %d, want 404", resp.StatusCode)
	}
	for name, stop := range map[string]func() (time.Duration, error){"api": stopAPI, "worker": stopWorker} {
		if took, err := stop(); err != nil || took > 10*time.Second {
			t.Errorf("%s stop: %v after %s", name, err, took)
		}
	}
}

// stopInBackground stops a process started by startRun without waiting;
// the channel gets stop's error once it has stopped.
func stopInBackground(stop func() (time.Duration, error)) <-chan error {
	stopped := make(chan error, 1)
	go func() {
		_, err := stop()
		stopped <- err
	}()
	return stopped
}

// emptyDatabase returns the URL of a database with nothing in it.
func emptyDatabase(t *testing.T) string {
	t.Helper()
	dbURL := storetest.NewDatabase(t)
	conn, err := pgx.Connect(context.Background(), dbURL)
	require.NoError(t, err)
	defer conn.Close(context.Background())
	_, err = conn.Exec(context.Background(), `DROP SCHEMA public CASCADE; CREATE SCHEMA public`)
	require.NoError(t, err)
	return dbURL
}

// An operator command run before `migrate up` says what to do, not only
// that a relation is missing.
func TestOperatorCommandOnAnUnmigratedDatabaseSaysMigrateFirst(t *testing.T) {
	t.Parallel()
	code, _, stderr := runCmd(t, map[string]string{"DATABASE_URL": emptyDatabase(t)}, "", "credits", "balance", "--email", "a@example.com")
	require.Equal(t, 1, code)
	require.Contains(t, stderr, "run `quickscale migrate up` first")
}

func TestReadyzIs503UntilMigrationsAreCurrent(t *testing.T) {
	t.Parallel()
	dbURL := emptyDatabase(t)
	addr := freeAddr(t)
	startRun(t, map[string]string{"DATABASE_URL": dbURL, "ADDR": addr, "METRICS_ADDR": "off", "SIMULATE_PAYMENTS": "true"}, "api")
	body := waitHTTP(t, "http://"+addr+"/readyz", http.StatusServiceUnavailable, 30*time.Second)
	if !strings.Contains(body, "migrate up") {
		t.Fatalf("503 body does not give the reason: %q", body)
	}
	waitHTTP(t, "http://"+addr+"/healthz", http.StatusOK, time.Second)
	// Pages and the API answer 503 meanwhile, not 500.
	waitHTTP(t, "http://"+addr+"/", http.StatusServiceUnavailable, time.Second)
	req, err := http.NewRequest(http.MethodGet, "http://"+addr+"/api/v1/balance", nil)
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer "+store.APIKeyPrefix+"whatever")
	res, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	res.Body.Close()
	require.Equal(t, http.StatusServiceUnavailable, res.StatusCode)
	code, stdout, stderr := runCmd(t, map[string]string{"DATABASE_URL": dbURL}, "", "migrate", "up")
	if code != 0 {
		t.Fatalf("migrate up: exit %d\n%s", code, stderr)
	}
	if !strings.Contains(stdout, fmt.Sprintf("app migrations applied: %d ", appMigrations(t))) {
		t.Fatalf("migrate up output:\n%s", stdout)
	}
	waitHTTP(t, "http://"+addr+"/readyz", http.StatusOK, 10*time.Second)
}

// A request still running when the shutdown deadline passes is cut short
// by us, not abandoned by its client (h30): logged as cut short by the
// shutdown and answered 503, not logged as the client's 499 — which the
// 5xx alert does not count.
func TestRequestsCutByTheShutdownAreOursNotTheClients(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dbURL := storetest.NewDatabase(t)
	pool, err := pgxpool.New(ctx, dbURL)
	require.NoError(t, err)
	defer pool.Close()
	st := store.New(pool, discardLogger())
	u := storetest.NewUser(t, st, storetest.UserOpts{})
	storetest.NewGrant(t, st, u.ID, storetest.GrantOpts{Amount: 10})
	svc := storetest.NewService(t, st, storetest.ServiceOpts{Cost: 1})
	key, _, err := st.CreateAPIKey(ctx, u.ID, "cut")
	require.NoError(t, err)
	// The account is held, so the spend waits past the shutdown deadline.
	hold, err := pool.Begin(ctx)
	require.NoError(t, err)
	defer hold.Rollback(ctx) //nolint:errcheck
	_, err = hold.Exec(ctx, `SELECT 1 FROM accounts WHERE user_id = $1 FOR UPDATE`, u.ID)
	require.NoError(t, err)

	addr, metrics := freeAddr(t), freeAddr(t)
	stop, _, logs := startRunLogs(t, map[string]string{"DATABASE_URL": dbURL, "ADDR": addr, "METRICS_ADDR": metrics,
		"SIMULATE_PAYMENTS": "true", "SHUTDOWN_TIMEOUT": "1s"}, "api")
	waitHTTP(t, "http://"+metrics+"/readyz", http.StatusOK, 30*time.Second)
	answered := make(chan error, 1)
	go func() {
		req, _ := http.NewRequest(http.MethodPost, "http://"+addr+"/api/v1/usage", strings.NewReader(`{"service":"`+svc+`"}`))
		req.Header.Set("Authorization", "Bearer "+key)
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Idempotency-Key", "cut-1")
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			resp.Body.Close()
		}
		answered <- err
	}()
	eventually(t, 15*time.Second, "the spend to wait for its account", func() bool {
		return inFlight(metrics) == 1
	})
	_, err = stop()
	require.NoError(t, err)
	<-answered
	require.Contains(t, logs.String(), "request cut short by shutdown")
	require.NotContains(t, logs.String(), "request abandoned by the client")
	require.NoError(t, hold.Rollback(ctx))
	var charged int
	require.NoError(t, pool.QueryRow(ctx, `SELECT count(*) FROM usages WHERE user_id = $1`, u.ID).Scan(&charged))
	require.Zero(t, charged, "the cut spend was charged")
}

// While an api drains at shutdown (finishing a request in flight), its
// /readyz on METRICS_ADDR says it is shutting down, so that a load balancer
// sends it nothing more; it used to answer "ready" until the end.
func TestReadyzSaysShuttingDownWhileTheAPIDrains(t *testing.T) {
	t.Parallel()
	dbURL := storetest.NewDatabase(t)
	addr, metrics := freeAddr(t), freeAddr(t)
	stop, _ := startRun(t, map[string]string{"DATABASE_URL": dbURL, "ADDR": addr, "METRICS_ADDR": metrics,
		"SIMULATE_PAYMENTS": "true", "SHUTDOWN_TIMEOUT": "20s"}, "api")
	waitHTTP(t, "http://"+metrics+"/readyz", http.StatusOK, 30*time.Second)
	// A request in flight: its body promised and not sent.
	conn, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	defer conn.Close()
	_, err = fmt.Fprintf(conn, "POST /webhooks/stripe HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{")
	require.NoError(t, err)
	// Stop only once the api is serving it (the connection accepted and the
	// handler waiting for the body): before, a shutdown could close the
	// listener first and have nothing to drain.
	eventually(t, 15*time.Second, "the request to be in flight", func() bool {
		return inFlight(metrics) == 1
	})
	stopped := stopInBackground(stop)
	body := waitHTTP(t, "http://"+metrics+"/readyz", http.StatusServiceUnavailable, 15*time.Second)
	require.Contains(t, body, "shutting down")
	conn.Close() // the request in flight ends; the process finishes stopping
	require.NoError(t, <-stopped)
}

// A worker's /readyz keeps answering "shutting down" while its jobs in
// flight finish at shutdown: the metrics server used to close before River
// stopped, so a probe (and Prometheus) got connection refused instead.
func TestReadyzSaysShuttingDownWhileAWorkerFinishesItsJobs(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dbURL := storetest.NewDatabase(t)
	// An SMTP server that takes the connection and never greets: the
	// email job runs until the test lets it go.
	smtp, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer smtp.Close()
	accepted := make(chan net.Conn, 4)
	go func() {
		for {
			c, err := smtp.Accept()
			if err != nil {
				return
			}
			accepted <- c
		}
	}()
	metrics := freeAddr(t)
	stop, _ := startRun(t, map[string]string{"DATABASE_URL": dbURL, "METRICS_ADDR": metrics, "BASE_URL": "http://quickscale.example",
		"SMTP_URL": "smtp://" + smtp.Addr().String(), "SHUTDOWN_TIMEOUT": "20s", "SIMULATE_PAYMENTS": "true", "STRIPE_WEBHOOK_SECRET": "whsec_test_shared"}, "worker")
	waitHTTP(t, "http://"+metrics+"/readyz", http.StatusOK, 30*time.Second)

	pool, err := pgxpool.New(ctx, dbURL)
	require.NoError(t, err)
	defer pool.Close()
	client, err := river.NewClient(riverpgxv5.New(pool), &river.Config{})
	require.NoError(t, err)
	_, err = client.Insert(ctx, jobs.SendEmail{Template: jobs.EmailWelcome, To: "kim@example.com",
		Data: map[string]string{"DashboardLink": "http://quickscale.example/dashboard"}}, nil)
	require.NoError(t, err)
	var held net.Conn
	select {
	case held = <-accepted:
	case <-time.After(30 * time.Second):
		t.Fatal("the worker never connected to the SMTP server")
	}
	defer held.Close()

	stopped := stopInBackground(stop)
	body := waitHTTP(t, "http://"+metrics+"/readyz", http.StatusServiceUnavailable, 15*time.Second)
	require.Contains(t, body, "shutting down")
	// Still answering a moment later: the job is still running.
	var state string
	require.NoError(t, pool.QueryRow(ctx, `SELECT state FROM river_job WHERE kind = 'send_email'`).Scan(&state))
	require.Equal(t, "running", state)
	waitHTTP(t, "http://"+metrics+"/readyz", http.StatusServiceUnavailable, time.Second)
	held.Close() // the job fails (and will be retried); the worker finishes stopping
	require.NoError(t, <-stopped)
	_, err = http.Get("http://" + metrics + "/readyz")
	require.Error(t, err, "the metrics server closes once River has stopped")
}

// A worker started before `migrate up` (a deploy racing its migration job)
// waits with /readyz saying why, then starts working: it must not crash-loop.
func TestWorkerStartedBeforeMigrationsWaitsThenWorks(t *testing.T) {
	t.Parallel()
	dbURL := emptyDatabase(t)
	metrics := freeAddr(t)
	stop, _ := startRun(t, map[string]string{"DATABASE_URL": dbURL, "METRICS_ADDR": metrics, "DEV_MAILBOX": "true", "SIMULATE_PAYMENTS": "true", "STRIPE_WEBHOOK_SECRET": "whsec_test_shared"}, "worker")
	body := waitHTTP(t, "http://"+metrics+"/readyz", http.StatusServiceUnavailable, 30*time.Second)
	require.Contains(t, body, "migrate up")
	if code, _, stderr := runCmd(t, map[string]string{"DATABASE_URL": dbURL}, "", "migrate", "up"); code != 0 {
		t.Fatal(stderr)
	}
	waitHTTP(t, "http://"+metrics+"/readyz", http.StatusOK, 10*time.Second)
	conn, err := pgx.Connect(context.Background(), dbURL)
	require.NoError(t, err)
	defer conn.Close(context.Background())
	eventually(t, 30*time.Second, "the worker to start River and lead", func() bool {
		var leaders int
		return conn.QueryRow(context.Background(), `SELECT count(*) FROM river_leader`).Scan(&leaders) == nil && leaders == 1
	})
	_, err = stop()
	require.NoError(t, err)
}

func TestMigrateStatusShowsBothSets(t *testing.T) {
	t.Parallel()
	dbURL := emptyDatabase(t)
	code, stdout, _ := runCmd(t, map[string]string{"DATABASE_URL": dbURL}, "", "migrate", "status")
	// Pending migrations are exit code 3, for a deploy script's check.
	if code != exitNotCurrent || !strings.Contains(stdout, fmt.Sprintf(" %d pending", appMigrations(t))) || !strings.Contains(stdout, "river migrations: version 0") || !strings.Contains(stdout, "NOT current") {
		t.Fatalf("status before: exit %d\n%s", code, stdout)
	}
	if code, _, stderr := runCmd(t, map[string]string{"DATABASE_URL": dbURL}, "", "migrate", "up"); code != 0 {
		t.Fatal(stderr)
	}
	code, stdout, _ = runCmd(t, map[string]string{"DATABASE_URL": dbURL}, "", "migrate", "status")
	if code != 0 || !strings.Contains(stdout, "0 pending") || !strings.Contains(stdout, "status: current") {
		t.Fatalf("status after: exit %d\n%s", code, stdout)
	}
	// Re-running is a no-op.
	code, stdout, _ = runCmd(t, map[string]string{"DATABASE_URL": dbURL}, "", "migrate", "up")
	if code != 0 || !strings.Contains(stdout, "app migrations applied: 0") || !strings.Contains(stdout, "river migrations applied: 0") {
		t.Fatalf("second migrate up: exit %d\n%s", code, stdout)
	}
}

// Operator commands refuse a database whose migrations are behind the
// binary (an upgrade before its `migrate up`: they would work on the old
// schema or fail halfway), and warn on one migrated by a newer binary,
// which `migrate status` reports with its own exit code.
func TestOperatorCommandsAndMigrateStatusOnADatabaseOfAnotherVersion(t *testing.T) {
	t.Parallel()
	dbURL := emptyDatabase(t)
	env := map[string]string{"DATABASE_URL": dbURL}
	code, _, stderr := runCmd(t, env, "", "migrate", "up")
	require.Equal(t, 0, code, stderr)

	conn, err := pgx.Connect(context.Background(), dbURL)
	require.NoError(t, err)
	defer conn.Close(context.Background())
	// Partly migrated: the newest migration not applied.
	var last int64
	require.NoError(t, conn.QueryRow(context.Background(), `DELETE FROM goose_db_version WHERE version_id = (SELECT max(version_id) FROM goose_db_version) RETURNING version_id`).Scan(&last))
	code, _, stderr = runCmd(t, env, "", "services", "set", "--slug", "ocr", "--name", "OCR", "--cost", "3")
	require.Equal(t, 1, code)
	require.Contains(t, stderr, "not migrated for this binary: 1 app migration(s) pending")
	require.Contains(t, stderr, "run `quickscale migrate up` first")
	// Ahead: a version this binary has no file for.
	_, err = conn.Exec(context.Background(), `INSERT INTO goose_db_version (version_id, is_applied) VALUES ($1, true), ($2, true)`, last, last+1000)
	require.NoError(t, err)
	code, stdout, _ := runCmd(t, env, "", "migrate", "status")
	require.Equal(t, exitAhead, code, stdout)
	require.Contains(t, stdout, fmt.Sprintf("unknown to this binary: app migration %d", last+1000))
	require.Contains(t, stdout, "status: AHEAD of this binary")
	code, stdout, stderr = runCmd(t, env, "", "services", "list")
	require.Equal(t, 0, code, stderr)
	require.Contains(t, stderr, "migrated by a newer quickscale")
	require.NotContains(t, stdout, "newer", "the warning belongs on stderr")
}

func TestDevAsRootWithoutPostgresSaysWhatToDo(t *testing.T) {
	t.Parallel()
	cfg, err := loadConfig(envFrom(map[string]string{"DEV_DATA_DIR": t.TempDir()}))
	require.NoError(t, err)
	_, err = startEmbedded(&cfg, 0, "", io.Discard)
	if err == nil {
		t.Fatal("embedded PostgreSQL started as root")
	}
	for _, want := range []string{"root", "pg_ctlcluster", "DATABASE_URL", "non-root"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("message lacks %q:\n%s", want, err)
		}
	}
}

func TestDevCreatesItsDatabaseWhenMissing(t *testing.T) {
	t.Parallel()
	name := fmt.Sprintf("qs_t_%d_devcreate%d", time.Now().Unix(), rand.IntN(1e6))
	// The server's URL with the database replaced (its user may be named
	// postgres too).
	u, err := neturl.Parse(storetest.ServerURL())
	require.NoError(t, err)
	u.Path = "/" + name
	url := u.String()
	t.Cleanup(func() {
		c, err := pgx.Connect(context.Background(), storetest.ServerURL())
		if err == nil {
			_, _ = c.Exec(context.Background(), "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)")
			c.Close(context.Background())
		}
	})
	cfg, err := loadConfig(envFrom(map[string]string{"DATABASE_URL": url}))
	require.NoError(t, err)
	stop, err := prepareDevDatabase(context.Background(), &cfg, discardLogger(), io.Discard)
	require.NoError(t, err)
	stop()
	c, err := pgx.Connect(context.Background(), url)
	require.NoError(t, err, "the database was not created")
	c.Close(context.Background())
}

func discardLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }

// A process that cannot bind one of its ports stops with an error naming
// it, and serves nothing: it must not answer on its other port with the
// database pool already closed.
func TestApiWhoseMetricsPortIsTakenExitsAndServesNothing(t *testing.T) {
	t.Parallel()
	taken, err := net.Listen("tcp", freeAddr(t))
	require.NoError(t, err)
	defer taken.Close()
	addr := freeAddr(t)

	code, _, stderr := runCmd(t, map[string]string{
		"DATABASE_URL": storetest.NewDatabase(t), "ADDR": addr, "METRICS_ADDR": taken.Addr().String(), "SIMULATE_PAYMENTS": "true",
	}, "", "api")

	require.Equal(t, 1, code, stderr)
	require.Contains(t, stderr, "listen on "+taken.Addr().String())
	if c, err := net.Dial("tcp", addr); err == nil {
		c.Close()
		t.Fatalf("something still listens on %s", addr)
	}
}

// A dev whose address is taken (say, a second `make dev`) stops before it
// touches the database: the running one's demo admin password must keep
// working.
func TestDevWhoseAddressIsTakenTouchesNoDatabase(t *testing.T) {
	t.Parallel()
	taken, err := net.Listen("tcp", freeAddr(t))
	require.NoError(t, err)
	defer taken.Close()
	url := storetest.NewDatabase(t)

	code, _, stderr := runCmd(t, map[string]string{"DATABASE_URL": url, "ADDR": taken.Addr().String(), "METRICS_ADDR": "off"}, "", "dev")

	require.Equal(t, 1, code, stderr)
	require.Contains(t, stderr, "listen on "+taken.Addr().String())
	c, err := pgx.Connect(context.Background(), url)
	require.NoError(t, err)
	defer c.Close(context.Background())
	var users int
	require.NoError(t, c.QueryRow(context.Background(), `SELECT count(*) FROM users WHERE email = $1`, demoAdminEmail).Scan(&users))
	require.Zero(t, users, "dev seeded the database before finding its address taken")
}

// A production worker without SMTP_URL would keep every email, links in
// clear, in a table nothing reads; without BASE_URL its emails' links would
// point at 127.0.0.1. Either way it refuses to start unless told this is a
// demo (DEV_MAILBOX=true).
func TestWorkerRefusesToStartWithoutMailSettings(t *testing.T) {
	t.Parallel()
	for missing, env := range map[string]map[string]string{
		"SMTP_URL": {"BASE_URL": "https://billing.example.com"},
		"BASE_URL": {"SMTP_URL": "smtp://127.0.0.1:2525"},
	} {
		env["DATABASE_URL"], env["METRICS_ADDR"] = storetest.NewDatabase(t), "off"
		code, _, stderr := runCmd(t, env, "", "worker")
		require.Equal(t, 1, code, "without %s", missing)
		require.Contains(t, stderr, missing+" is not set")
	}
}

// The start line of api and worker: plain text by default, one JSON log
// line with LOG_FORMAT=json (stdout then holds no plain text); metrics
// turned off say "off", not nothing.
func TestStartLineFollowsTheLogFormat(t *testing.T) {
	t.Parallel()
	addr := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 8080}
	for _, mode := range []string{"api", "worker"} {
		for _, format := range []string{"text", "json"} {
			var stdout, logs bytes.Buffer
			a := &app{mode: mode, cfg: Config{LogFormat: format, BaseURL: "http://127.0.0.1:8080"}, logger: slog.New(slog.NewJSONHandler(&logs, nil))}
			a.printBanner(&stdout, addr, nil)
			if format == "json" {
				var line map[string]any
				if stdout.Len() != 0 || json.Unmarshal(logs.Bytes(), &line) != nil || line["metrics"] != "off" {
					t.Errorf("%s, json: stdout %q, log %q; want only a JSON log line with metrics off", mode, stdout.String(), logs.String())
				}
				continue
			}
			if logs.Len() != 0 || !strings.Contains(stdout.String(), "metrics off") {
				t.Errorf("%s, text: stdout %q, log %q; want a line saying metrics off", mode, stdout.String(), logs.String())
			}
		}
	}
}

// River's repeated warnings and errors (a failed poll every 100 ms while
// the database is down) are said once per window, then with how many were
// dropped; other messages pass, and River's info lines stay quiet.
func TestRiverLoggerSaysARepeatedErrorOncePerWindow(t *testing.T) {
	t.Parallel()
	var buf bytes.Buffer
	h := riverLogger(Config{LogLevel: slog.LevelInfo}, slog.New(slog.NewJSONHandler(&buf, nil))).Handler()
	t0 := time.Date(2026, 11, 26, 10, 0, 0, 0, time.UTC)
	emit := func(at time.Duration, level slog.Level, msg string) {
		if h.Enabled(context.Background(), level) {
			require.NoError(t, h.Handle(context.Background(), slog.NewRecord(t0.Add(at), level, msg, 0)))
		}
	}
	for i := range 100 { // ten seconds of failed polls
		emit(time.Duration(i)*100*time.Millisecond, slog.LevelError, "producer: Error fetching jobs")
	}
	emit(time.Second, slog.LevelWarn, "elector: lost leadership")
	emit(2*time.Second, slog.LevelInfo, "producer: heartbeat")
	emit(riverRepeatWindow+time.Second, slog.LevelError, "producer: Error fetching jobs")
	var lines []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
		var m map[string]any
		require.NoError(t, json.Unmarshal([]byte(l), &m), l)
		lines = append(lines, m)
	}
	require.Len(t, lines, 3, buf.String())
	require.Equal(t, "producer: Error fetching jobs", lines[0]["msg"])
	require.Nil(t, lines[0]["repeated"])
	require.Equal(t, "elector: lost leadership", lines[1]["msg"])
	require.Equal(t, "producer: Error fetching jobs", lines[2]["msg"])
	require.EqualValues(t, 99, lines[2]["repeated"], "the next line says how many were dropped")
	require.Equal(t, "river", lines[2]["component"])
}

// The leader gauges' and River UI's loggers say a repeated warning or
// error once per window (a database outage made the gauges warn every 2 s
// and River UI's cache log an error every 10 s); their info lines all
// pass; at debug level nothing is dropped.
func TestLoopLoggersSayARepeatedWarningOncePerWindow(t *testing.T) {
	t.Parallel()
	var buf bytes.Buffer
	logger := repeatsLimited(Config{LogLevel: slog.LevelInfo}, slog.New(slog.NewJSONHandler(&buf, nil)))
	t0 := time.Date(2026, 11, 26, 10, 0, 0, 0, time.UTC)
	for i := range 15 { // 30 s of failed leader reads, every 2 s
		require.NoError(t, logger.Handler().Handle(context.Background(), slog.NewRecord(t0.Add(time.Duration(i)*2*time.Second), slog.LevelWarn, "read river leader", 0)))
		require.NoError(t, logger.Handler().Handle(context.Background(), slog.NewRecord(t0.Add(time.Duration(i)*2*time.Second), slog.LevelInfo, "refreshed", 0)))
	}
	require.NoError(t, logger.Handler().Handle(context.Background(), slog.NewRecord(t0.Add(riverRepeatWindow+time.Second), slog.LevelWarn, "read river leader", 0)))
	require.Equal(t, 2, strings.Count(buf.String(), `"msg":"read river leader"`), buf.String())
	require.Contains(t, buf.String(), `"repeated":14`)
	require.Equal(t, 15, strings.Count(buf.String(), `"msg":"refreshed"`), "info lines pass")

	buf.Reset()
	debug := repeatsLimited(Config{LogLevel: slog.LevelDebug}, slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug})))
	for range 3 {
		debug.Warn("read river leader")
	}
	require.Equal(t, 3, strings.Count(buf.String(), `"msg":"read river leader"`))
}

// dev shows every account's mail at /dev/mailbox and lets anyone pay:
// it refuses to listen beyond this machine, before touching the database.
func TestDevListensOnLoopbackOnly(t *testing.T) {
	t.Parallel()
	url := storetest.NewDatabase(t)
	for _, addr := range []string{"0.0.0.0:0", ":0", "[::]:0", "192.0.2.1:8080"} {
		code, _, stderr := runCmd(t, map[string]string{"DATABASE_URL": url, "ADDR": addr, "METRICS_ADDR": "off"}, "", "dev")
		require.Equal(t, 1, code, "%s: %s", addr, stderr)
		require.Contains(t, stderr, "not a loopback address", addr)
	}
	c, err := pgx.Connect(context.Background(), url)
	require.NoError(t, err)
	defer c.Close(context.Background())
	var users int
	require.NoError(t, c.QueryRow(context.Background(), `SELECT count(*) FROM users WHERE email = $1`, demoAdminEmail).Scan(&users))
	require.Zero(t, users, "dev seeded the database with a non-loopback address")
	for _, addr := range []string{"127.0.0.1:8080", "[::1]:8080", "localhost:8080", "LOCALHOST:0", "127.0.0.2:80"} {
		require.True(t, loopbackAddr(addr), addr)
	}
}

// inFlight reads quickscale_http_requests_in_flight from a process's
// METRICS_ADDR (-1 when it cannot).
func inFlight(metrics string) int {
	resp, err := http.Get("http://" + metrics + "/metrics")
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "quickscale_http_requests_in_flight "); ok {
			n, err := strconv.Atoi(v)
			if err != nil {
				return -1
			}
			return n
		}
	}
	return -1
}
