package store

import (
	"context"
	"fmt"
	"sync"
)

// aloneGate bounds the connections that spends running alone hold while
// they wait for their accounts. A spend runs alone when its batch gave up
// on an account lock held elsewhere (a long admin removal, a stuck
// session); without a bound, every spend of that one account would hold a
// pooled connection until its deadline, and the pool's other users — every
// other customer's spends, balances and pages — would queue behind them
// (25 spends of one locked account stalled all other API calls for 28 s).
//
// So a user's spends run alone one at a time (the others wait for their
// turn here, holding no connection), and all users' together hold at most
// slots connections. While spends of a user wait here, that user's new
// spends join them rather than the lanes, where each would hold up a batch
// for its lock timeout.
type aloneGate struct {
	slots chan struct{}
	mu    sync.Mutex
	users map[int64]*aloneTurn
}

// aloneTurn is one user's queue: a token held by the spend running, and
// how many spends hold or wait for it.
type aloneTurn struct {
	token   chan struct{}
	waiting int
}

func newAloneGate(slots int) *aloneGate {
	return &aloneGate{slots: make(chan struct{}, max(1, slots)), users: map[int64]*aloneTurn{}}
}

// busy reports whether spends of user are running alone or waiting to.
func (g *aloneGate) busy(user int64) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.users[user] != nil
}

// enter waits for user's turn and then for a slot, until ctx ends (the
// error then wraps ctx's). release ends both.
func (g *aloneGate) enter(ctx context.Context, user int64) (release func(), err error) {
	g.mu.Lock()
	turn := g.users[user]
	if turn == nil {
		turn = &aloneTurn{token: make(chan struct{}, 1)}
		g.users[user] = turn
	}
	turn.waiting++
	g.mu.Unlock()
	leave := func() {
		g.mu.Lock()
		if turn.waiting--; turn.waiting == 0 {
			delete(g.users, user)
		}
		g.mu.Unlock()
	}
	select {
	case turn.token <- struct{}{}:
	case <-ctx.Done():
		leave()
		return nil, fmt.Errorf("consume: the account's earlier spends were still waiting for it: %w", ctx.Err())
	}
	select {
	case g.slots <- struct{}{}:
	case <-ctx.Done():
		<-turn.token
		leave()
		return nil, fmt.Errorf("consume: other accounts' spends held every connection spends may wait on: %w", ctx.Err())
	}
	return func() {
		<-g.slots
		<-turn.token
		leave()
	}, nil
}
