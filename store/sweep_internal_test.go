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
	}{
		{"no deadline: pause times the batch", SweepOptions{BatchSize: 500, Pause: 0.5}, 500, 1e6, 50 * ms},
		{"flat out", SweepOptions{BatchSize: 500, Deadline: now.Add(time.Minute)}, 500, 1e6, 0},
		{"plenty of time: the full pause", SweepOptions{BatchSize: 500, Pause: 0.5, Deadline: now.Add(time.Minute)}, 500, 5000, 50 * ms},
		// 9,500 left at 100 ms per 500 is 1.9 s of work; 2.5 s leaves 0.6 s
		// of slack over 19 batches.
		{"tight: the slack shared over the batches left", SweepOptions{BatchSize: 500, Pause: 0.5, Deadline: now.Add(2500 * ms)}, 500, 9500, 600 * ms / 19},
		{"behind: no rest", SweepOptions{BatchSize: 500, Pause: 0.5, Deadline: now.Add(time.Second)}, 500, 9500, 0},
		{"past the deadline: no rest", SweepOptions{BatchSize: 500, Pause: 0.5, Deadline: now.Add(-time.Second)}, 500, 0, 0},
		{"more swept than planned (new grants fell due)", SweepOptions{BatchSize: 500, Pause: 0.5, Deadline: now.Add(time.Second)}, 5000, -300, 50 * ms},
	} {
		got := sweepRest(tc.o, 100*ms, time.Duration(tc.swept/500)*100*ms, tc.swept, tc.remaining, now)
		if got != tc.want {
			t.Errorf("%s: rest %v, want %v", tc.name, got, tc.want)
		}
	}
}
