package api

import (
	"context"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/riverqueue/river"

	"github.com/quickscale/quickscale/jobs"
	"github.com/quickscale/quickscale/store"
)

// Webhook ingest shares transactions between concurrent deliveries (a
// store.Batcher): each event is stored with its jobs.StripeEvent in one
// transaction, as ARCHITECTURE.md says, but events that arrive while the
// lanes are committing wait and then go together, in one transaction of
// two statements (events, then jobs). A lone event is stored at once,
// alone. Every caller gets its own answer only after the commit that made
// its event durable.
const (
	// ingestLanes is how many ingest transactions may be open at once. On
	// the benchmark machine (2 cores) 2 lanes stored the most events per
	// second: 1 and 4 a little fewer, 8 a third fewer (README, Benchmarks).
	ingestLanes = 2
	// ingestMaxBatch caps the events of one transaction.
	ingestMaxBatch = 64
)

// ingester stores verified events in shared transactions.
type ingester struct {
	st      *store.Store
	jobs    jobs.Inserter
	logger  *slog.Logger
	timeout time.Duration
	// observe, when set, is told the size of every batch stored.
	observe func(n int)
	batch   *store.Batcher[store.StripeEvent, bool]
}

// newIngester returns an ingester with the given lanes and batch size.
func newIngester(st *store.Store, inserter jobs.Inserter, logger *slog.Logger, timeout time.Duration, lanes, maxBatch int) *ingester {
	g := &ingester{st: st, jobs: inserter, logger: logger, timeout: timeout}
	g.batch = store.NewBatcher(lanes, maxBatch, g.flush)
	return g
}

// submit stores ev and reports whether it is new (false: a duplicate of an
// event stored before), once the transaction holding it has committed, or
// returns ctx's error if ctx ends first (the event may then still be
// stored; Stripe's retry is acknowledged as a duplicate).
func (g *ingester) submit(ctx context.Context, ev store.StripeEvent) (bool, error) {
	return g.batch.Do(ctx, ev)
}

// flush stores a batch in one transaction (see storeBatch).
func (g *ingester) flush(evs []store.StripeEvent) []store.BatchResult[bool] {
	ctx, cancel := context.WithTimeout(context.Background(), g.timeout)
	defer cancel()
	return g.storeBatch(ctx, evs)
}

// storeBatch stores events in one transaction. When the database refuses the
// batch for its content (store.IsRefused: an event it cannot store, say),
// each event is retried alone within the same deadline, so that one bad
// event fails only its own delivery.
func (g *ingester) storeBatch(ctx context.Context, evs []store.StripeEvent) []store.BatchResult[bool] {
	var inserted []bool
	err := g.insertTx(ctx, evs, &inserted)
	results := make([]store.BatchResult[bool], len(evs))
	if err != nil && len(evs) > 1 && store.IsRefused(err) {
		g.logger.Warn("webhook ingest batch refused; storing its events one by one", "events", len(evs), "err", err)
		for i := range evs {
			results[i] = g.storeBatch(ctx, evs[i:i+1])[0]
		}
		return results
	}
	if err == nil && g.observe != nil {
		g.observe(len(evs))
	}
	for i := range results {
		if err != nil {
			results[i].Err = err
		} else {
			results[i].Value = inserted[i]
		}
	}
	return results
}

func (g *ingester) insertTx(ctx context.Context, evs []store.StripeEvent, inserted *[]bool) error {
	return g.st.InTx(ctx, func(tx pgx.Tx) error {
		var err error
		*inserted, err = store.InsertStripeEvents(ctx, tx, evs)
		if err != nil {
			return err
		}
		var params []river.InsertManyParams
		for i, ok := range *inserted {
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
}
