package store_test

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"

	"github.com/quickscale/quickscale/store"
	"github.com/quickscale/quickscale/store/storetest"
)

// Calls that arrive while the only lane is busy go together in the next
// batch, each answered with its own result; a batch that panics or
// answers short fails its own calls and no others; a caller that gives up
// gets its context's error.
func TestBatcherGathersAndContainsFailures(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	var mu sync.Mutex
	var batches [][]int
	b := store.NewBatcher(1, 8, func(reqs []int) []store.BatchResult[int] {
		mu.Lock()
		batches = append(batches, slices.Clone(reqs))
		first := len(batches) == 1
		mu.Unlock()
		if first {
			<-release
		}
		switch reqs[0] {
		case 100:
			panic("boom")
		case 200:
			return nil // short
		}
		out := make([]store.BatchResult[int], len(reqs))
		for i, r := range reqs {
			out[i].Value = r * 10
		}
		return out
	})
	ctx := context.Background()
	type answer struct {
		req, got int
		err      error
	}
	answers := make(chan answer, 16)
	do := func(ctx context.Context, req int) {
		got, err := b.Do(ctx, req)
		answers <- answer{req, got, err}
	}
	go do(ctx, 1)
	storetest.WaitFor(t, "the first batch to start", func() bool { lanes, waiting := b.State(); return lanes == 1 && waiting == 0 })
	gaveUp, cancel := context.WithCancel(ctx)
	for r := 2; r <= 7; r++ { // one at a time, so that they queue in this order
		if r == 7 {
			go do(gaveUp, r)
		} else {
			go do(ctx, r)
		}
		storetest.WaitFor(t, "the call to wait", func() bool { _, waiting := b.State(); return waiting == r-1 })
	}
	cancel()
	if a := <-answers; a.req != 7 || !errors.Is(a.err, context.Canceled) {
		t.Fatalf("first answer %+v, want call 7 with context.Canceled", a)
	}
	close(release)
	for range 6 {
		if a := <-answers; a.err != nil || a.got != a.req*10 {
			t.Errorf("call %d: got %d, %v; want %d", a.req, a.got, a.err, a.req*10)
		}
	}
	mu.Lock()
	// Call 7 gave up before the lane took it: answered, not run.
	if len(batches) != 2 || !slices.Equal(batches[1], []int{2, 3, 4, 5, 6}) {
		t.Errorf("batches %v, want [1] then the five that waited, in arrival order", batches)
	}
	mu.Unlock()

	for _, bad := range []int{100, 200} {
		if _, err := b.Do(ctx, bad); err == nil {
			t.Errorf("call %d: no error from a batch that failed", bad)
		}
	}
	if got, err := b.Do(ctx, 9); err != nil || got != 90 {
		t.Errorf("after failed batches: got %d, %v; want 90", got, err)
	}
	storetest.WaitFor(t, "the lane to end", func() bool { lanes, waiting := b.State(); return lanes == 0 && waiting == 0 })
}

// While a lane is busy, a free lane starts only with a fair share of the
// calls in hand (running plus waiting, over the lanes), so that a steady
// load forms full batches instead of a stream of single calls; a call held
// back is taken by the next lane to finish, with no timer.
func TestBatcherLanesShareTheLoad(t *testing.T) {
	t.Parallel()
	type batch struct {
		reqs    []int
		release chan struct{}
	}
	started := make(chan batch, 16)
	b := store.NewBatcher(2, 32, func(reqs []int) []store.BatchResult[int] {
		rel := make(chan struct{})
		started <- batch{slices.Clone(reqs), rel}
		<-rel
		out := make([]store.BatchResult[int], len(reqs))
		for i, r := range reqs {
			out[i].Value = r
		}
		return out
	})
	answers := make(chan int, 32)
	call := func(r int) {
		go func() {
			got, err := b.Do(context.Background(), r)
			if err != nil || got != r {
				t.Errorf("call %d: got %d, %v", r, got, err)
			}
			answers <- got
		}()
	}
	next := func(want ...int) batch {
		t.Helper()
		bt := <-started
		if !slices.Equal(bt.reqs, want) {
			t.Fatalf("batch %v, want %v", bt.reqs, want)
		}
		return bt
	}
	state := func(lanes, waiting int) {
		t.Helper()
		storetest.WaitFor(t, "the batcher's state", func() bool { l, w := b.State(); return l == lanes && w == waiting })
	}
	// Idle: a call runs at once; a second, with one lane busy, is a fair
	// share of two calls over two lanes and runs at once too.
	call(1)
	a := next(1)
	call(2)
	bb := next(2)
	for r := 3; r <= 10; r++ {
		call(r)
		state(2, r-2)
	}
	close(bb.release) // its lane takes the eight waiting
	bb = next(3, 4, 5, 6, 7, 8, 9, 10)
	close(a.release) // nothing waiting: this lane ends
	state(1, 0)
	// Eight running: a free lane waits for eight calls.
	for r := 11; r <= 17; r++ {
		call(r)
		state(1, r-10)
	}
	call(18)
	a = next(11, 12, 13, 14, 15, 16, 17, 18)
	state(2, 0)
	// A call held back is taken by the next lane to finish.
	close(bb.release)
	state(1, 0)
	call(19)
	state(1, 1)
	close(a.release)
	next(19).release <- struct{}{}
	got := map[int]bool{}
	for range 19 {
		got[<-answers] = true
	}
	if len(got) != 19 {
		t.Errorf("answers %v, want 1 to 19", got)
	}
	state(0, 0)
}
