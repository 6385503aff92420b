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
