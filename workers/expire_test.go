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

func TestLongestScheduleGapSeesIrregularSchedules(t *testing.T) {
	t.Parallel()
	// A Friday, 10:00 UTC.
	from := time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC)
	for spec, want := range map[string]time.Duration{
		"* * * * *":      time.Minute,
		"*/5 * * * *":    5 * time.Minute,
		"0 9 * * 1-5":    72 * time.Hour,               // Friday 9:00 to Monday 9:00
		"*/5 9-17 * * *": 15*time.Hour + 5*time.Minute, // 17:55 to 9:00
		"0 0 1 * *":      31 * 24 * time.Hour,
		"0 0 29 2 *":     1461 * 24 * time.Hour, // 2028-02-29 to 2032-02-29
		// Beyond the first 20,000 runs gaps are measured from whole hours,
		// here a minute short: 2027-02-28 23:59 to 2028-02-01 is 337 days
		// and a minute; December 20 23:59 to January 1 is 11 days and a
		// minute.
		"* * * 2 *":        337 * 24 * time.Hour,
		"* * 1-20 * *":     11 * 24 * time.Hour,
		"0 0 31 2 *":       -1, // never runs
		"30 2 * * *":       24 * time.Hour,
		"0,30 * * * *":     30 * time.Minute,
		"0 12 * * 6":       7 * 24 * time.Hour,
		"0 0 1 1 *":        366 * 24 * time.Hour, // 2028 is a leap year
		"not a cron":       -1,
		"* * * * * *":      -1,
		"0 9 * * 1-5 junk": -1,
	} {
		got, err := LongestScheduleGap(spec, from)
		switch {
		case want < 0 && err == nil:
			t.Errorf("%q: gap %v, want an error", spec, got)
		case want >= 0 && (err != nil || got != want):
			t.Errorf("%q: gap %v (%v), want %v", spec, got, err, want)
		}
	}
}
