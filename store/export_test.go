package store

import (
	"context"
	"fmt"
)

// LiveGrant is liveGrant, for the tests that check its boundary instant.
const LiveGrant = liveGrant

// ConsumeAlone is consumeAlone: a spend run alone, as after its batch gave
// up on a held account.
func (s *Store) ConsumeAlone(ctx context.Context, req ConsumeRequest) (Usage, bool, error) {
	key, err := consumeKey(req)
	if err != nil {
		return Usage{}, false, err
	}
	req.IdempotencyKey = key
	return s.consumeAlone(ctx, req)
}

// Gone returns r as sent by a caller that has given up.
func Gone(r ConsumeRequest) ConsumeRequest {
	ch := make(chan struct{})
	close(ch)
	r.gone = ch
	return r
}

// ConsumeUnheld is consumeUnheld: a batch that gave up on a held account,
// run again.
func (s *Store) ConsumeUnheld(ctx context.Context, reqs []ConsumeRequest) []BatchResult[Spent] {
	results, _ := s.consumeUnheld(ctx, reqs)
	return results
}

// ErrRunAlone is errRunAlone.
var ErrRunAlone = errRunAlone

// UserLockQueued is how many of this process's requests hold or wait for
// one user's lock.
func (s *Store) UserLockQueued(purpose string, userID int64) int {
	s.userQueues.mu.Lock()
	defer s.userQueues.mu.Unlock()
	if k := s.userQueues.keys[fmt.Sprintf("%s:%d", purpose, userID)]; k != nil {
		return k.refs
	}
	return 0
}
