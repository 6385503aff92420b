package workers

import (
	"testing"
	"time"
)

func TestSweepBudgetFollowsTheSchedule(t *testing.T) {
	t.Parallel()
	for spec, want := range map[string]time.Duration{
		"":            0,
		"* * * * *":   time.Minute,
		"*/5 * * * *": 5 * time.Minute,
		"0 * * * *":   time.Hour,
		"30 2 * * *":  24 * time.Hour,
		"not a cron":  -1,
		"* * * * * *": -1,
		"61 * * * *":  -1,
	} {
		got, err := schedulePeriod(spec)
		switch {
		case want < 0 && err == nil:
			t.Errorf("%q: period %v, want an error", spec, got)
		case want >= 0 && (err != nil || got != want):
			t.Errorf("%q: period %v (%v), want %v", spec, got, err, want)
		}
	}
}
