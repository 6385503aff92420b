package store

import (
	"context"
	"fmt"
	"sync"
)

// Batcher gathers concurrent calls into shared batches: a call that finds
// every lane idle starts one and is run at once, alone; calls that arrive
// while a lane is busy wait, and are run together (up to a maximum) by the
// next lane to take them. A batch costs one transaction and one round trip
// instead of one per call, so under load fewer, fuller batches do more
// work with the same CPU.
//
// Lanes share the load evenly: while a lane is busy, a free lane starts
// only once its batch would be a fair share of the calls in hand (those
// running plus those waiting, divided by the number of lanes). Without
// that rule a free lane would take each call the moment it arrived, and a
// steady load of 8 callers on 2 lanes settled into batches of 2 or 3
// instead of 4 (README "Benchmarks"). Nothing waits on a timer: a call
// held back by the rule is taken by the next lane to finish, so it waits
// at most one batch. Lanes are goroutines that exist only while they run
// a batch.
type Batcher[Req, Res any] struct {
	lanes, max int
	run        func(reqs []Req) []BatchResult[Res]

	mu      sync.Mutex
	queue   []*batchCall[Req, Res]
	active  int // lanes running a batch
	running int // calls in the batches running
}

// BatchResult is one call's answer.
type BatchResult[Res any] struct {
	Value Res
	Err   error
}

type batchCall[Req, Res any] struct {
	ctx  context.Context
	req  Req
	done chan BatchResult[Res] // buffered: a lane never blocks on a caller gone
}

// NewBatcher returns a batcher running up to lanes batches at once, each
// of at most max calls. run must return one result per request, in order.
func NewBatcher[Req, Res any](lanes, max int, run func(reqs []Req) []BatchResult[Res]) *Batcher[Req, Res] {
	return &Batcher[Req, Res]{lanes: max1(lanes), max: max1(max), run: run}
}

func max1(n int) int { return max(n, 1) }

// Do runs req in the next batch and returns its result, or ctx's error if
// ctx ends first. A call whose ctx has ended by the time a lane takes it is
// left out of the batch; one whose ctx ends while its batch runs may still
// have run.
func (b *Batcher[Req, Res]) Do(ctx context.Context, req Req) (Res, error) {
	c := &batchCall[Req, Res]{ctx: ctx, req: req, done: make(chan BatchResult[Res], 1)}
	b.mu.Lock()
	b.queue = append(b.queue, c)
	b.startLanes()
	b.mu.Unlock()
	select {
	case r := <-c.done:
		return r.Value, r.Err
	case <-ctx.Done():
		var zero Res
		return zero, ctx.Err()
	}
}

// State reports the lanes running and the calls waiting for one.
func (b *Batcher[Req, Res]) State() (lanes, waiting int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.active, len(b.queue)
}

// take decides whether a free lane starts a batch now and, if so, removes
// its calls from the queue and counts them as running. b.mu is held.
func (b *Batcher[Req, Res]) take() []*batchCall[Req, Res] {
	waiting := len(b.queue)
	if waiting == 0 || b.active >= b.lanes {
		return nil
	}
	// With a lane busy, start only with a fair share of the calls in hand.
	if b.active > 0 && waiting*b.lanes < b.running+waiting {
		return nil
	}
	n := min(waiting, b.max)
	taken := make([]*batchCall[Req, Res], n)
	copy(taken, b.queue)
	left := copy(b.queue, b.queue[n:])
	clear(b.queue[left:]) // no references to answered calls
	b.queue = b.queue[:left]
	b.active++
	b.running += n
	return taken
}

// lane runs batches, starting with taken, for as long as take gives it
// more.
func (b *Batcher[Req, Res]) lane(taken []*batchCall[Req, Res]) {
	for taken != nil {
		b.runCalls(taken)
		b.mu.Lock()
		b.active--
		b.running -= len(taken)
		taken = b.take()
		b.startLanes() // what this lane left may be another's fair share
		b.mu.Unlock()
	}
}

// startLanes starts a lane for every batch take gives. b.mu is held.
func (b *Batcher[Req, Res]) startLanes() {
	for taken := b.take(); taken != nil; taken = b.take() {
		go b.lane(taken)
	}
}

// runCalls runs one batch and answers its callers; callers that gave up
// while waiting are answered, not run.
func (b *Batcher[Req, Res]) runCalls(taken []*batchCall[Req, Res]) {
	calls := make([]*batchCall[Req, Res], 0, len(taken))
	for _, c := range taken {
		if err := c.ctx.Err(); err != nil {
			c.done <- BatchResult[Res]{Err: err}
			continue
		}
		calls = append(calls, c)
	}
	if len(calls) == 0 {
		return
	}
	reqs := make([]Req, len(calls))
	for i, c := range calls {
		reqs[i] = c.req
	}
	results := b.runSafely(reqs)
	for i, c := range calls {
		c.done <- results[i]
	}
}

// runSafely runs a batch; a panic or a short answer fails the whole batch
// rather than leave its callers waiting.
func (b *Batcher[Req, Res]) runSafely(reqs []Req) (results []BatchResult[Res]) {
	defer func() {
		if p := recover(); p != nil {
			results = failAll[Res](len(reqs), fmt.Errorf("batch panicked: %v", p))
		}
	}()
	results = b.run(reqs)
	if len(results) != len(reqs) {
		return failAll[Res](len(reqs), fmt.Errorf("batch returned %d results for %d calls", len(results), len(reqs)))
	}
	return results
}

func failAll[Res any](n int, err error) []BatchResult[Res] {
	rs := make([]BatchResult[Res], n)
	for i := range rs {
		rs[i].Err = err
	}
	return rs
}
