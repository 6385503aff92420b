package store

import (
	"testing"
	"time"
)

func TestSweepRestYieldsToTheDeadline(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	ms := time.Millisecond
	for _, tc := range []struct {
		name      string
		o         SweepOptions
		swept     int64
		remaining int64
		want      time.Duration
		batches   int64 // run so far (default: swept/500); each took 100 ms
	}{
		{"no deadline: pause times the batch", SweepOptions{BatchSize: 500, Pause: 0.5}, 500, 1e6, 50 * ms, 0},
		{"flat out", SweepOptions{BatchSize: 500, Deadline: now.Add(time.Minute)}, 500, 1e6, 0, 0},
		{"plenty of time: the full pause", SweepOptions{BatchSize: 500, Pause: 0.5, Deadline: now.Add(time.Minute)}, 500, 5000, 50 * ms, 0},
		// 9,500 left at 100 ms per 500 is 1.9 s of work; 2.5 s leaves 0.6 s
		// of slack over 19 batches.
		{"tight: the slack shared over the batches left", SweepOptions{BatchSize: 500, Pause: 0.5, Deadline: now.Add(2500 * ms)}, 500, 9500, 600 * ms / 19, 0},
		{"behind: no rest", SweepOptions{BatchSize: 500, Pause: 0.5, Deadline: now.Add(time.Second)}, 500, 9500, 0, 0},
		{"past the deadline: no rest", SweepOptions{BatchSize: 500, Pause: 0.5, Deadline: now.Add(-time.Second)}, 500, 0, 0, 0},
		{"more swept than planned (new grants fell due)", SweepOptions{BatchSize: 500, Pause: 0.5, Deadline: now.Add(time.Second)}, 5000, -300, 50 * ms, 0},
		// One batch closed 2,500 grants (five due per user picked): 9,500
		// left is 380 ms of work in 4 batches, not 19; 120 ms of slack
		// shared over 4.
		{"batches bigger than their size", SweepOptions{BatchSize: 500, Pause: 0.5, Deadline: now.Add(500 * ms)}, 2500, 9500, 30 * ms, 1},
	} {
		batches := tc.batches
		if batches == 0 {
			batches = max(tc.swept/500, 1)
		}
		got := sweepRest(tc.o, 100*ms, time.Duration(batches)*100*ms, batches, tc.swept, tc.remaining, now)
		if got != tc.want {
			t.Errorf("%s: rest %v, want %v", tc.name, got, tc.want)
		}
	}
}
