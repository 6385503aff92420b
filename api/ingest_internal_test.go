package api

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"

	"github.com/quickscale/quickscale/store"
	"github.com/quickscale/quickscale/store/storetest"
)

// newTestIngester is the ingester on an isolated database with a real
// (insert-only) River client; it records the batch sizes it stores.
func newTestIngester(t *testing.T, lanes int) (*ingester, *store.Store, func() []int) {
	t.Helper()
	logger := slog.New(slog.DiscardHandler)
	st := store.New(storetest.NewPool(t), logger)
	client, err := river.NewClient(riverpgxv5.New(st.Pool()), &river.Config{Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	g := newIngester(st, client, logger, 30*time.Second, lanes, ingestMaxBatch)
	var mu sync.Mutex
	var sizes []int
	g.observe = func(n int) {
		mu.Lock()
		sizes = append(sizes, n)
		mu.Unlock()
	}
	return g, st, func() []int {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(sizes)
	}
}

func ingestEvent(id string) store.StripeEvent {
	return store.StripeEvent{
		ID: id, Type: "checkout.session.completed", APIVersion: "2023-10-16",
		Created: time.Unix(1_700_000_000, 0),
		Payload: []byte(`{"id":"` + id + `","object":"event","type":"checkout.session.completed","data":{"object":{}}}`),
	}
}

// storedEvents lists the stored event ids and the event ids that have a
// stripe_event job, both sorted.
func storedEvents(t *testing.T, st *store.Store) (events, jobs []string) {
	t.Helper()
	ctx := context.Background()
	rows, _ := st.Pool().Query(ctx, `SELECT id FROM stripe_events ORDER BY id`)
	events, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	rows, _ = st.Pool().Query(ctx, `SELECT args->>'event_id' FROM river_job WHERE kind = 'stripe_event' ORDER BY 1`)
	jobs, err = pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	return events, jobs
}

// One event the database refuses must fail only its own delivery: the
// batch is stored event by event, and duplicates inside a batch are
// answered as duplicates.
func TestIngestBatchWithARefusedEventStoresTheOthers(t *testing.T) {
	g, st, sizes := newTestIngester(t, ingestLanes)
	bad := ingestEvent("evt_bad")
	bad.Payload = []byte("{\"id\":\"evt_bad\",\"note\":\"\xff\xfe\"}") // not UTF-8: text refuses it
	batch := []store.StripeEvent{ingestEvent("evt_a"), bad, ingestEvent("evt_b"), ingestEvent("evt_a")}
	results := g.flush(batch)

	want := []struct {
		inserted bool
		badInput bool
	}{{true, false}, {false, true}, {true, false}, {false, false}}
	for i, r := range results {
		if r.Value != want[i].inserted || isDataException(r.Err) != want[i].badInput || (r.Err != nil) != want[i].badInput {
			t.Errorf("event %d (%s): inserted %v err %v; want inserted %v, data exception %v", i, batch[i].ID, r.Value, r.Err, want[i].inserted, want[i].badInput)
		}
	}
	events, jobs := storedEvents(t, st)
	if !slices.Equal(events, []string{"evt_a", "evt_b"}) || !slices.Equal(jobs, []string{"evt_a", "evt_b"}) {
		t.Errorf("stored %v with jobs for %v; want evt_a and evt_b, each with one job", events, jobs)
	}
	// Three single-event transactions committed (the bad one did not).
	if got := sizes(); !slices.Equal(got, []int{1, 1, 1}) {
		t.Errorf("batch sizes %v, want [1 1 1] (retried one by one)", got)
	}
}

// A batch of good events, one of them twice, is one transaction.
func TestIngestBatchIsOneTransaction(t *testing.T) {
	g, st, sizes := newTestIngester(t, ingestLanes)
	results := g.flush([]store.StripeEvent{ingestEvent("evt_1"), ingestEvent("evt_2"), ingestEvent("evt_1"), ingestEvent("evt_3")})
	for i, want := range []bool{true, true, false, true} {
		if r := results[i]; r.Err != nil || r.Value != want {
			t.Errorf("event %d: inserted %v err %v, want inserted %v", i, r.Value, r.Err, want)
		}
	}
	// Delivered again later: all duplicates, nothing enqueued.
	for i, r := range g.flush([]store.StripeEvent{ingestEvent("evt_3"), ingestEvent("evt_2")}) {
		if r.Err != nil || r.Value {
			t.Errorf("redelivery %d: inserted %v err %v, want a duplicate", i, r.Value, r.Err)
		}
	}
	events, jobs := storedEvents(t, st)
	if want := []string{"evt_1", "evt_2", "evt_3"}; !slices.Equal(events, want) || !slices.Equal(jobs, want) {
		t.Errorf("stored %v with jobs for %v; want %v each once", events, jobs, want)
	}
	if got := sizes(); !slices.Equal(got, []int{4, 2}) {
		t.Errorf("batch sizes %v, want [4 2]", got)
	}
}

// Deliveries that arrive while the only lane is busy wait for it and are
// then stored together, each caller getting its own answer; a caller that
// gives up while waiting gets its context's error, and its event is not
// stored (Stripe retries it).
func TestIngestGathersDeliveriesThatArriveWhileALaneIsBusy(t *testing.T) {
	g, st, sizes := newTestIngester(t, 1)
	ctx := context.Background()

	// Hold the first event's id in an open transaction, so that the lane
	// storing it waits on the unique index.
	blocker, err := st.Pool().Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = blocker.Rollback(ctx) }()
	if _, err := store.InsertStripeEvent(ctx, blocker, ingestEvent("evt_first")); err != nil {
		t.Fatal(err)
	}
	type answer struct {
		id       string
		inserted bool
		err      error
	}
	answers := make(chan answer, 32)
	submit := func(ctx context.Context, id string) {
		inserted, err := g.submit(ctx, ingestEvent(id))
		answers <- answer{id, inserted, err}
	}
	go submit(ctx, "evt_first")
	storetest.WaitFor(t, "the lane to take the first event", func() bool {
		lanes, waiting := g.batch.State()
		return lanes == 1 && waiting == 0
	})
	const queued = 20
	for i := range queued - 1 {
		go submit(ctx, fmt.Sprintf("evt_q%02d", i))
	}
	gaveUp, cancel := context.WithCancel(ctx)
	go submit(gaveUp, "evt_gave_up")
	storetest.WaitFor(t, "the deliveries to queue", func() bool {
		_, waiting := g.batch.State()
		return waiting == queued
	})
	cancel()
	if a := <-answers; a.id != "evt_gave_up" || !errors.Is(a.err, context.Canceled) {
		t.Fatalf("first answer %+v, want evt_gave_up with context.Canceled", a)
	}
	if err := blocker.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	for range queued {
		a := <-answers
		if a.err != nil || a.inserted != (a.id != "evt_first") {
			t.Errorf("%s: inserted %v err %v (evt_first was stored by the blocker: a duplicate)", a.id, a.inserted, a.err)
		}
	}
	if got := sizes(); !slices.Equal(got, []int{1, queued - 1}) {
		t.Errorf("batch sizes %v, want [1 %d]: the waiting deliveries go together, without the one that gave up", got, queued-1)
	}
	events, jobs := storedEvents(t, st)
	if len(events) != queued || len(jobs) != queued-1 || slices.Contains(events, "evt_gave_up") {
		t.Errorf("%d events stored (want %d, without evt_gave_up), %d jobs (want %d: none for the blocker's)", len(events), queued, len(jobs), queued-1)
	}
	// The lane ends once its last batch is answered.
	storetest.WaitFor(t, "the lane to end", func() bool {
		lanes, waiting := g.batch.State()
		return lanes == 0 && waiting == 0
	})
}
