package store

// LiveGrant is liveGrant, for the tests that check its boundary instant.
const LiveGrant = liveGrant
