package api

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/riverqueue/river"

	"github.com/quickscale/quickscale/jobs"
	"github.com/quickscale/quickscale/store"
)

// Webhook ingest shares transactions between concurrent deliveries: each
// event is stored with its jobs.StripeEvent in one transaction, as
// ARCHITECTURE.md says, but events that arrive while another transaction
// is committing wait for it and then go together, in one transaction of
// two statements (events, then jobs). Nothing waits on a timer: a lone
// event is stored at once, alone; batches form only under load, which
// they absorb (a commit and two statements per batch instead of per
// event). Every caller still gets its own answer only after the commit
// that made its event durable.
const (
	// ingestLanes is how many ingest transactions may be open at once. On
	// the benchmark machine (2 cores) 2 lanes stored the most events per
	// second: 1 and 4 a little fewer, 8 a third fewer (README, Benchmarks).
	ingestLanes = 2
	// ingestMaxBatch caps the events of one transaction.
	ingestMaxBatch = 64
)

type ingestResult struct {
	inserted bool
	err      error
}

type pendingEvent struct {
	ev   store.StripeEvent
	done chan ingestResult // buffered: the flusher never blocks on a caller gone
}

// newIngester returns an ingester with the default lanes and batch size.
func newIngester(st *store.Store, inserter jobs.Inserter, logger *slog.Logger, timeout time.Duration) *ingester {
	return &ingester{store: st, jobs: inserter, logger: logger, timeout: timeout, lanes: ingestLanes, maxBatch: ingestMaxBatch}
}

// ingester gathers verified events into shared transactions.
type ingester struct {
	store   *store.Store
	jobs    jobs.Inserter
	logger  *slog.Logger
	timeout time.Duration
	lanes    int
	maxBatch int
	// observe, when set, is told the size of every batch stored.
	observe func(n int)

	mu     sync.Mutex
	queue  []*pendingEvent
	active int // lanes flushing
}

// submit queues ev and returns once the transaction holding it has
// committed (inserted false: a duplicate of an event stored before) or
// failed, or when ctx ends first (the event may then still be stored;
// Stripe's retry is acknowledged as a duplicate).
func (g *ingester) submit(ctx context.Context, ev store.StripeEvent) (bool, error) {
	p := &pendingEvent{ev: ev, done: make(chan ingestResult, 1)}
	g.mu.Lock()
	g.queue = append(g.queue, p)
	start := g.active < g.lanes
	if start {
		g.active++
	}
	g.mu.Unlock()
	if start {
		go g.lane()
	}
	select {
	case r := <-p.done:
		return r.inserted, r.err
	case <-ctx.Done():
		return false, ctx.Err()
	}
}

// lane stores batches until the queue is empty.
func (g *ingester) lane() {
	for {
		g.mu.Lock()
		n := min(len(g.queue), g.maxBatch)
		if n == 0 {
			g.active--
			g.mu.Unlock()
			return
		}
		batch := make([]*pendingEvent, n)
		copy(batch, g.queue)
		g.queue = append(g.queue[:0], g.queue[n:]...)
		g.mu.Unlock()
		g.flush(batch)
	}
}

// flush stores a batch in one transaction and answers every caller. When
// the database refuses the batch (a statement error, such as an event it
// cannot store), each event is retried alone, so that one bad event
// fails only its own delivery.
func (g *ingester) flush(batch []*pendingEvent) {
	ctx, cancel := context.WithTimeout(context.Background(), g.timeout)
	defer cancel()
	evs := make([]store.StripeEvent, len(batch))
	for i, p := range batch {
		evs[i] = p.ev
	}
	var inserted []bool
	err := g.store.InTx(ctx, func(tx pgx.Tx) error {
		var err error
		inserted, err = store.InsertStripeEvents(ctx, tx, evs)
		if err != nil {
			return err
		}
		var params []river.InsertManyParams
		for i, ok := range inserted {
			if ok {
				params = append(params, river.InsertManyParams{Args: jobs.StripeEvent{EventID: evs[i].ID}})
			}
		}
		if len(params) == 0 {
			return nil
		}
		_, err = g.jobs.InsertManyTx(ctx, tx, params)
		return err
	})
	var pgErr *pgconn.PgError
	if err != nil && len(batch) > 1 && errors.As(err, &pgErr) {
		g.logger.Warn("webhook ingest batch refused; storing its events one by one", "events", len(batch), "err", err)
		for _, p := range batch {
			g.flush([]*pendingEvent{p})
		}
		return
	}
	if err == nil && g.observe != nil {
		g.observe(len(batch))
	}
	for i, p := range batch {
		if err != nil {
			p.done <- ingestResult{err: err}
			continue
		}
		p.done <- ingestResult{inserted: inserted[i]}
	}
}
