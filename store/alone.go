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
// slots connections. Once a spend of a user has found the account still
// held after waiting for it as long as a batch would (a try ran out,
// markHeld), that user's new spends join the queue rather than the lanes,
// where each would hold up a batch for its lock timeout; once the account
// is free, spends take their turns quickly and new ones go back to the
// lanes. Waiting for a slot says nothing about the account: a free
// account's spend waiting behind held ones' tries does not send its
// user's next spends to the queue (it did, and a free user's spends ran
// one at a time, 9 a second, while ten other accounts were held).
type aloneGate struct {
	slots chan struct{}
	mu    sync.Mutex
	users map[int64]*aloneTurn
}

// aloneTurn is one user's queue: a token held by the spend whose turn it
// is, how many spends hold or wait for it, and whether the spend whose
// turn it is found the account held (markHeld).
type aloneTurn struct {
	token   chan struct{}
	waiting int
	held    bool
	// slotted: the spend whose turn it is holds a slot (see requeue);
	// handoff: a slot left for the user's next spend by the one before.
	slotted, handoff bool
}

func newAloneGate(slots int) *aloneGate {
	return &aloneGate{slots: make(chan struct{}, max(1, slots)), users: map[int64]*aloneTurn{}}
}

// busy reports whether a spend of user running alone found the account
// held and none has got it since (markHeld, markFree).
func (g *aloneGate) busy(user int64) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	t := g.users[user]
	return t != nil && t.held
}

// markHeld records that a spend of user running alone found the account
// held (a try ran out), markFree that one got it. The user's new spends
// queue from the one to the other, also across turns: a spend giving up at
// its deadline leaves the next with too little time for a try of its own,
// and the user's spends went back to holding up batches (a review).
func (g *aloneGate) markHeld(user int64) { g.setHeld(user, true) }

func (g *aloneGate) markFree(user int64) { g.setHeld(user, false) }

func (g *aloneGate) setHeld(user int64, held bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if t := g.users[user]; t != nil {
		t.held = held
	}
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
			if turn.handoff {
				// A slot handed to spends of the user that all gave up.
				turn.handoff = false
				<-g.slots
			}
		}
		g.mu.Unlock()
	}
	select {
	case turn.token <- struct{}{}:
	case <-ctx.Done():
		leave()
		return nil, fmt.Errorf("consume: the account's earlier spends were still waiting for it: %w", ctx.Err())
	}
	// The turn is taken: from now its holder waits for the account (here
	// for a slot, then in the database) on the user's behalf. Whether the
	// account is held (markHeld, markFree) outlives the turn: a spend that
	// gave up at its deadline leaves the account held for the next.
	endTurn := func() {
		<-turn.token
		leave()
	}
	g.mu.Lock()
	handed := turn.handoff
	turn.handoff = false
	turn.slotted = handed
	g.mu.Unlock()
	if !handed {
		select {
		case g.slots <- struct{}{}:
		case <-ctx.Done():
			endTurn()
			return nil, fmt.Errorf("consume: other accounts' spends held every connection spends may wait on: %w", ctx.Err())
		}
		g.setSlotted(turn, true)
	}
	return func() {
		g.mu.Lock()
		if turn.slotted {
			turn.slotted = false
			if turn.waiting > 1 {
				// The user's next spend takes the slot with its turn: a
				// queue of one account's spends drains at the database's
				// speed, not one slot wait (behind other held accounts'
				// tries) each (a review: 380 ms a spend once the account
				// was free).
				turn.handoff = true
			} else {
				<-g.slots
			}
		}
		g.mu.Unlock()
		endTurn()
	}, nil
}

// requeue gives up the slot of the spend whose turn it is (of user, from
// enter) and waits for one again behind the spends already waiting for
// one (a channel's blocked senders go first in, first out), keeping the
// turn. A spend waiting for a held account waits in short tries and
// requeues between them: otherwise spends of held accounts, each keeping
// its slot until its deadline, would keep every other user's spend that
// had to run alone waiting for a slot (a review: 503s after 30 s for
// accounts nobody held, once as many accounts were held as there are
// slots). When ctx ends first, the spend holds no slot; its release still
// ends the turn.
func (g *aloneGate) requeue(ctx context.Context, user int64) error {
	g.mu.Lock()
	turn := g.users[user]
	g.mu.Unlock()
	if turn == nil || !g.slotted(turn) {
		return fmt.Errorf("consume: requeue without a slot")
	}
	<-g.slots
	g.setSlotted(turn, false)
	select {
	case g.slots <- struct{}{}:
		g.setSlotted(turn, true)
		return nil
	case <-ctx.Done():
		return fmt.Errorf("consume: other accounts' spends held every connection spends may wait on: %w", ctx.Err())
	}
}

func (g *aloneGate) slotted(turn *aloneTurn) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return turn.slotted
}

func (g *aloneGate) setSlotted(turn *aloneTurn, v bool) {
	g.mu.Lock()
	turn.slotted = v
	g.mu.Unlock()
}
