package store

import "context"

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
