package store

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// The gate sends a user's new spends to the queue only while the spend at
// its head has waited for the account longer than a batch would: with two
// spends always in flight the queue is never empty, and an earlier version
// (busy while anyone queued) kept such a user off the lanes for good once
// their account had been held once.
func TestAloneGateIsBusyOnlyWhileItsHeadWaits(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	clock := time.Unix(1_000_000, 0)
	g := newAloneGate(2)
	g.now = func() time.Time { mu.Lock(); defer mu.Unlock(); return clock }
	advance := func(d time.Duration) { mu.Lock(); clock = clock.Add(d); mu.Unlock() }
	ctx := context.Background()

	first, err := g.enter(ctx, 7)
	require.NoError(t, err)
	require.False(t, g.busy(7), "busy before the head waited a batch's lock timeout")
	advance(aloneHeldAfter)
	require.True(t, g.busy(7), "the head has waited: the account is held")
	require.False(t, g.busy(8), "another user is not held")

	// A second spend queues behind the first.
	entered := make(chan func(), 1)
	go func() {
		release, err := g.enter(ctx, 7)
		if err == nil {
			entered <- release
		}
	}()
	waitQueued := func(n int) {
		t.Helper()
		deadline := time.After(10 * time.Second)
		for {
			g.mu.Lock()
			w := 0
			if tu := g.users[7]; tu != nil {
				w = tu.waiting
			}
			g.mu.Unlock()
			if w == n {
				return
			}
			select {
			case <-deadline:
				t.Fatalf("%d spends never queued", n)
			case <-time.After(time.Millisecond):
			}
		}
	}
	waitQueued(2)
	// The account is free: the head finishes, the next takes its turn at
	// once, and the user is not busy although a spend still holds the turn.
	first()
	second := <-entered
	require.False(t, g.busy(7), "busy while the queue drains quickly")
	second()
	require.False(t, g.busy(7))
	g.mu.Lock()
	require.Empty(t, g.users, "a user's queue outlived its spends")
	g.mu.Unlock()

	// A spend whose turn it is but which waits for a slot (other held
	// accounts' spends take them all) is waiting for its account too.
	narrow := newAloneGate(1)
	narrow.now = g.now
	other, err := narrow.enter(ctx, 8)
	require.NoError(t, err)
	slotted := make(chan func(), 1)
	go func() {
		release, err := narrow.enter(ctx, 7)
		if err == nil {
			slotted <- release
		}
	}()
	deadline := time.After(10 * time.Second)
	for {
		narrow.mu.Lock()
		taken := narrow.users[7] != nil && !narrow.users[7].since.IsZero()
		narrow.mu.Unlock()
		if taken {
			break
		}
		select {
		case <-deadline:
			t.Fatal("user 7's spend never took its turn")
		case <-time.After(time.Millisecond):
		}
	}
	advance(10 * time.Second)
	require.True(t, narrow.busy(7), "a spend waiting for a slot on its user's turn does not count")
	other()
	(<-slotted)()

	// A context that ends while waiting for the turn leaves no trace.
	third, err := g.enter(ctx, 9)
	require.NoError(t, err)
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	_, err = g.enter(cctx, 9)
	require.ErrorIs(t, err, context.Canceled)
	third()
	g.mu.Lock()
	require.Empty(t, g.users)
	g.mu.Unlock()
}
