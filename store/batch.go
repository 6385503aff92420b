package store

import (
	"context"
	"fmt"
	"sync"
)

// Batcher gathers concurrent calls into shared batches: a call that finds
// a lane free starts one and is run at once, alone; calls that arrive
// while every lane is busy wait, and the next free lane runs all of them
// (up to a maximum) together. Nothing waits on a timer, so a lone call is
// never delayed, and batches form only under load, which they absorb: a
// batch costs one transaction and one round trip instead of one per call.
// Lanes are goroutines that exist only while there is work.
type Batcher[Req, Res any] struct {
	lanes, max int
	run        func(reqs []Req) []BatchResult[Res]

	mu     sync.Mutex
	queue  []*batchCall[Req, Res]
	active int
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
	start := b.active < b.lanes
	if start {
		b.active++
	}
	b.mu.Unlock()
	if start {
		go b.lane()
	}
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

// lane runs batches until the queue is empty.
func (b *Batcher[Req, Res]) lane() {
	for {
		b.mu.Lock()
		n := min(len(b.queue), b.max)
		if n == 0 {
			b.active--
			b.mu.Unlock()
			return
		}
		taken := make([]*batchCall[Req, Res], n)
		copy(taken, b.queue)
		left := copy(b.queue, b.queue[n:])
		clear(b.queue[left:]) // no references to answered calls
		b.queue = b.queue[:left]
		b.mu.Unlock()
		// Callers that gave up while waiting are answered, not run.
		calls := taken[:0]
		for _, c := range taken {
			if err := c.ctx.Err(); err != nil {
				c.done <- BatchResult[Res]{Err: err}
				continue
			}
			calls = append(calls, c)
		}
		if len(calls) == 0 {
			continue
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
