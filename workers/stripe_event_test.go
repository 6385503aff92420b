package workers

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"github.com/riverqueue/river/rivertype"
	"github.com/stretchr/testify/require"
	"github.com/stripe/stripe-go/v76"

	"github.com/quickscale/quickscale/jobs"
	"github.com/quickscale/quickscale/store"
	"github.com/quickscale/quickscale/store/storetest"
)

// cancelKey carries the cancel func of a job's work context, so that the
// worker's beforeCommit hook can pull the plug the way a dying process would.
type cancelKey struct{}

// cancellableWork gives every job a work context the test can cancel.
func cancellableWork() rivertype.Middleware {
	return river.WorkerMiddlewareFunc(func(ctx context.Context, job *rivertype.JobRow, doInner func(context.Context) error) error {
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		return doInner(context.WithValue(ctx, cancelKey{}, cancel))
	})
}

// retryLater keeps a failed job waiting, so the state between attempts can
// be inspected; the test then retries it with JobRetry.
type retryLater struct{}

func (retryLater) NextRetry(*rivertype.JobRow) time.Time { return time.Now().Add(time.Hour) }

// clientInserter lets the worker enqueue through the client built after it.
type clientInserter struct{ client *river.Client[pgx.Tx] }

func (c *clientInserter) InsertTx(ctx context.Context, tx pgx.Tx, args river.JobArgs, opts *river.InsertOpts) (*rivertype.JobInsertResult, error) {
	return c.client.InsertTx(ctx, tx, args, opts)
}

func (c *clientInserter) InsertManyTx(ctx context.Context, tx pgx.Tx, params []river.InsertManyParams) ([]*rivertype.JobInsertResult, error) {
	return c.client.InsertManyTx(ctx, tx, params)
}

type stripeEventBundle struct {
	st       *store.Store
	client   *river.Client[pgx.Tx]
	events   <-chan *river.Event
	user     store.User
	session  string
	attempts *atomic.Int32
}

// setupStripeEventWorker runs a real River client whose only worker is the
// StripeEventWorker under test; its beforeCommit hook runs hook with the
// attempt number (1-based) and the work context.
func setupStripeEventWorker(t *testing.T, hook func(ctx context.Context, attempt int32)) *stripeEventBundle {
	t.Helper()
	ctx := context.Background()
	st := storetest.NewStore(t)
	b := &stripeEventBundle{st: st, attempts: &atomic.Int32{}}
	ins := &clientInserter{}
	w := &StripeEventWorker{logger: slog.New(slog.DiscardHandler), store: st, inserter: ins, baseURL: "http://quickscale.test"}
	w.beforeCommit = func(ctx context.Context) { hook(ctx, b.attempts.Add(1)) }
	ws := river.NewWorkers()
	require.NoError(t, river.AddWorkerSafely(ws, w))
	client, err := river.NewClient(riverpgxv5.New(st.Pool()), &river.Config{
		Logger:              slog.New(slog.DiscardHandler),
		Queues:              map[string]river.QueueConfig{jobs.QueueWebhooks: {MaxWorkers: 2}},
		Workers:             ws,
		Middleware:          []rivertype.Middleware{cancellableWork()},
		RetryPolicy:         retryLater{},
		FetchCooldown:       20 * time.Millisecond,
		FetchPollInterval:   50 * time.Millisecond,
		SkipUnknownJobCheck: true, // the purchase email job is only enqueued here
		TestOnly:            true,
	})
	require.NoError(t, err)
	ins.client = client
	events, stop := client.Subscribe(river.EventKindJobCompleted, river.EventKindJobFailed, river.EventKindJobCancelled)
	t.Cleanup(stop)
	require.NoError(t, client.Start(ctx))
	t.Cleanup(func() {
		sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = client.Stop(sctx)
	})
	b.client, b.events = client, events

	b.user = storetest.NewUser(t, st, storetest.UserOpts{})
	pack, err := st.PackByCode(ctx, "pack_500")
	require.NoError(t, err)
	b.session = "cs_test_" + rand.Text()
	_, err = st.CreatePayment(ctx, store.NewPayment{UserID: b.user.ID, Pack: pack, CheckoutSessionID: b.session,
		CheckoutURL: "https://checkout.stripe.com/c/pay/" + b.session, CustomerID: "cus_test_1"})
	require.NoError(t, err)
	return b
}

// storePaidCompletion stores a checkout.session.completed of the payment
// (Stripe's own checkout.session shape, from cmd/quickscale/testdata) as
// the webhook endpoint would, without a job.
func (b *stripeEventBundle) storePaidCompletion(t *testing.T) string {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join("..", "cmd", "quickscale", "testdata", "stripe", "checkout.session.json"))
	require.NoError(t, err)
	var sess map[string]any
	require.NoError(t, json.Unmarshal(raw, &sess))
	sess["id"], sess["status"], sess["payment_status"] = b.session, "complete", "paid"
	sess["amount_total"], sess["amount_subtotal"], sess["currency"], sess["payment_intent"] = 2000, 2000, "usd", "pi_test_"+b.session
	id := "evt_test_" + b.session
	payload, err := json.Marshal(map[string]any{
		"id": id, "object": "event", "api_version": stripe.APIVersion, "created": time.Now().Unix(),
		"type": "checkout.session.completed", "livemode": false, "pending_webhooks": 1,
		"data":    map[string]any{"object": sess},
		"request": map[string]any{"id": nil, "idempotency_key": nil},
	})
	require.NoError(t, err)
	err = b.st.InTx(context.Background(), func(tx pgx.Tx) error {
		_, err := store.InsertStripeEvent(context.Background(), tx, store.StripeEvent{
			ID: id, Type: "checkout.session.completed", APIVersion: stripe.APIVersion, Created: time.Now(), Payload: payload,
		})
		return err
	})
	require.NoError(t, err)
	return id
}

// next waits for the next job event of the given kind.
func (b *stripeEventBundle) next(t *testing.T, kind river.EventKind) *river.Event {
	t.Helper()
	timer := time.NewTimer(20 * time.Second)
	defer timer.Stop()
	for {
		select {
		case ev := <-b.events:
			if ev.Kind == kind {
				return ev
			}
			t.Fatalf("job %s (%s) while waiting for %s: %v", ev.Kind, ev.Job.State, kind, ev.Job.Errors)
		case <-timer.C:
			t.Fatalf("no %s job event within 20s", kind)
		}
	}
}

// observed is what one processing of the event may have changed.
type observed struct {
	Grants        int
	Balance       int64
	PaymentStatus string
	PaymentIntent *string
	Outcome       *string
	EventAttempts int
	EmailJobs     int
}

func (b *stripeEventBundle) state(t *testing.T, eventID string) observed {
	t.Helper()
	ctx := context.Background()
	var s observed
	pool := b.st.Pool()
	require.NoError(t, pool.QueryRow(ctx, `SELECT count(*) FROM grants WHERE source_id = $1`, b.session).Scan(&s.Grants))
	bal, err := b.st.Balance(ctx, b.user.ID)
	require.NoError(t, err)
	s.Balance = bal.Total
	pay, err := b.st.UserPaymentBySession(ctx, b.user.ID, b.session)
	require.NoError(t, err)
	s.PaymentStatus, s.PaymentIntent = pay.Status, pay.PaymentIntentID
	ev, err := b.st.StripeEventByID(ctx, eventID)
	require.NoError(t, err)
	s.Outcome, s.EventAttempts = ev.Outcome, ev.Attempts
	require.NoError(t, pool.QueryRow(ctx, `SELECT count(*) FROM river_job WHERE kind = 'send_email'`).Scan(&s.EmailJobs))
	return s
}

func TestStripeEventWorkerKilledBeforeCommitLeavesNothingAndRetryAppliesOnce(t *testing.T) {
	t.Parallel()
	b := setupStripeEventWorker(t, func(ctx context.Context, attempt int32) {
		if attempt == 1 {
			ctx.Value(cancelKey{}).(context.CancelFunc)()
		}
	})
	eventID := b.storePaidCompletion(t)
	ctx := context.Background()
	res, err := b.client.Insert(ctx, jobs.StripeEvent{EventID: eventID}, nil)
	require.NoError(t, err)

	failed := b.next(t, river.EventKindJobFailed)
	require.Equal(t, res.Job.ID, failed.Job.ID)
	require.Equal(t, rivertype.JobStateRetryable, failed.Job.State)
	require.Contains(t, failed.Job.Errors[len(failed.Job.Errors)-1].Error, "context canceled")
	if got := b.state(t, eventID); got != (observed{PaymentStatus: store.PaymentPending}) {
		t.Fatalf("after the killed attempt: %+v, want nothing changed", got)
	}

	_, err = b.client.JobRetry(ctx, res.Job.ID)
	require.NoError(t, err)
	done := b.next(t, river.EventKindJobCompleted)

	require.Equal(t, res.Job.ID, done.Job.ID)
	require.Equal(t, int32(2), b.attempts.Load())
	got := b.state(t, eventID)
	if got.Grants != 1 || got.Balance != 500 || got.PaymentStatus != store.PaymentSucceeded || got.Outcome == nil ||
		*got.Outcome != store.OutcomeApplied || got.EventAttempts != 1 || got.EmailJobs != 1 {
		t.Fatalf("after the retry: %+v", got)
	}
	if v := storetest.Violations(t, b.st); len(v) > 0 {
		t.Fatalf("ledger invariants violated: %v", v)
	}
}

func TestStripeEventWorkerRunAgainAfterCompletionChangesNothing(t *testing.T) {
	t.Parallel()
	b := setupStripeEventWorker(t, func(context.Context, int32) {})
	eventID := b.storePaidCompletion(t)
	ctx := context.Background()
	_, err := b.client.Insert(ctx, jobs.StripeEvent{EventID: eventID}, nil)
	require.NoError(t, err)
	b.next(t, river.EventKindJobCompleted)
	first := b.state(t, eventID)
	require.Equal(t, 1, first.Grants)

	// A re-process (or River running the job twice) finds the work done.
	_, err = b.client.Insert(ctx, jobs.StripeEvent{EventID: eventID}, nil)
	require.NoError(t, err)
	b.next(t, river.EventKindJobCompleted)

	got := b.state(t, eventID)
	if got.Grants != 1 || got.Balance != 500 || got.EmailJobs != 1 || got.EventAttempts != 2 || *got.Outcome != store.OutcomeApplied {
		t.Fatalf("after running again: %+v (first run: %+v)", got, first)
	}
}

func TestStripeEventWorkerCancelsJobOfUnstoredEvent(t *testing.T) {
	t.Parallel()
	b := setupStripeEventWorker(t, func(context.Context, int32) {})
	_, err := b.client.Insert(context.Background(), jobs.StripeEvent{EventID: "evt_never_stored"}, nil)
	require.NoError(t, err)

	ev := b.next(t, river.EventKindJobCancelled)

	require.Equal(t, rivertype.JobStateCancelled, ev.Job.State)
	require.Zero(t, b.attempts.Load(), "nothing reached the commit")
}
