package store

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// The gate sends a user's new spends to the queue only while the spend at
// its head has found the account held (markHeld, after a try as long as a
// batch waits): with two spends always in flight the queue is never empty,
// and an earlier version (busy while anyone queued) kept such a user off
// the lanes for good once their account had been held once. Waiting for a
// slot behind other accounts' spends does not count: it sent a free
// user's spends to the queue, one at a time, while other accounts were
// held.
func TestAloneGateIsBusyOnlyWhileItsHeadFindsTheAccountHeld(t *testing.T) {
	t.Parallel()
	g := newAloneGate(2)
	ctx := context.Background()

	first, err := g.enter(ctx, 7)
	require.NoError(t, err)
	require.False(t, g.busy(7), "busy before the head found the account held")
	g.markHeld(7)
	require.True(t, g.busy(7), "the head found the account held")
	require.False(t, g.busy(8), "another user is not held")

	// A second spend queues behind the first.
	entered := make(chan func(), 1)
	go func() {
		release, err := g.enter(ctx, 7)
		if err == nil {
			entered <- release
		}
	}()
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.After(10 * time.Second)
		for !cond() {
			select {
			case <-deadline:
				t.Fatalf("timed out waiting for %s", what)
			case <-time.After(time.Millisecond):
			}
		}
	}
	queued := func(g *aloneGate, user int64, n int) func() bool {
		return func() bool {
			g.mu.Lock()
			defer g.mu.Unlock()
			return g.users[user] != nil && g.users[user].waiting == n
		}
	}
	waitFor("two spends of user 7", queued(g, 7, 2))
	// The head gives up at its deadline, the account still held: the next
	// takes its turn and the user stays busy (it went back to the lanes,
	// its next head having too little time for a try of its own).
	first()
	second := <-entered
	require.True(t, g.busy(7), "the account is still held")
	// The next gets the account: the user's new spends go to the lanes.
	g.markFree(7)
	require.False(t, g.busy(7), "busy after a spend got the account")
	second()
	require.False(t, g.busy(7))
	g.mu.Lock()
	require.Empty(t, g.users, "a user's queue outlived its spends")
	g.mu.Unlock()

	// A user's next spend takes the slot with its turn, ahead of another
	// user's spend waiting for a slot: a queue of one account's spends
	// drains at the database's speed once the account is free.
	one := newAloneGate(1)
	a, err := one.enter(ctx, 8)
	require.NoError(t, err)
	bCh, cCh := make(chan func(), 1), make(chan func(), 1)
	go func() {
		if release, err := one.enter(ctx, 8); err == nil {
			bCh <- release
		}
	}()
	go func() {
		if release, err := one.enter(ctx, 9); err == nil {
			cCh <- release
		}
	}()
	waitFor("user 8's second spend and user 9's spend to wait", func() bool {
		return queued(one, 8, 2)() && queued(one, 9, 1)()
	})
	a()
	b := <-bCh
	select {
	case <-cCh:
		t.Fatal("user 9's spend took the slot user 8's next spend was handed")
	default:
	}
	b()
	(<-cCh)()
	one.mu.Lock()
	require.Empty(t, one.users)
	require.Zero(t, len(one.slots), "a slot was not given back")
	one.mu.Unlock()

	// A spend whose turn it is but which waits for a slot (other held
	// accounts' spends take them all) does not make its user busy. (That
	// those spends let it in between their tries is
	// TestASpendRunningAloneIsNotStarvedByHeldAccounts.)
	narrow := newAloneGate(1)
	other, err := narrow.enter(ctx, 8)
	require.NoError(t, err)
	narrow.markHeld(8)
	slotted := make(chan func(), 1)
	go func() {
		release, err := narrow.enter(ctx, 7)
		if err == nil {
			slotted <- release
		}
	}()
	waitFor("user 7's spend to wait for a slot", queued(narrow, 7, 1))
	require.False(t, narrow.busy(7), "a spend waiting for a slot made its user busy")
	require.True(t, narrow.busy(8))
	other()
	(<-slotted)()
	narrow.mu.Lock()
	require.Empty(t, narrow.users)
	narrow.mu.Unlock()

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
