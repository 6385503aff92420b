package store

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"
)

// Key derivations run a few at a time (19 MiB each): with every slot taken
// a hash or a check waits, and gives up at its context's deadline without
// deriving anything; once a slot frees it runs.
func TestPasswordDerivationsRunAFewAtATime(t *testing.T) {
	// Not parallel: it takes the process's slots.
	n := cap(passwordSlots)
	if n < 2 {
		t.Fatalf("%d derivation slots, want at least 2", n)
	}
	hash, err := HashPassword(t.Context(), "a password 123")
	if err != nil {
		t.Fatal(err)
	}
	for range n {
		passwordSlots <- struct{}{}
	}
	released := false
	release := func() {
		if !released {
			released = true
			for range n {
				<-passwordSlots
			}
		}
	}
	defer release()

	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	if _, err := HashPassword(ctx, "a password 123"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("HashPassword with every slot taken: %v, want the deadline", err)
	}
	for _, h := range []string{hash, ""} {
		ok, _, err := VerifyPassword(ctx, "a password 123", h)
		if ok || !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("VerifyPassword (hash %q) with every slot taken: %v %v, want the deadline", h, ok, err)
		}
	}

	// Waiting ones run once the slots free.
	var wg sync.WaitGroup
	results := make(chan bool, 3*n)
	for range 3 * n {
		wg.Go(func() {
			ok, _, err := VerifyPassword(t.Context(), "a password 123", hash)
			results <- ok && err == nil
		})
	}
	release()
	wg.Wait()
	close(results)
	for ok := range results {
		if !ok {
			t.Fatal("a check that waited for its slot failed")
		}
	}
	if len(passwordSlots) != 0 {
		t.Fatalf("%d slots still taken", len(passwordSlots))
	}
}
