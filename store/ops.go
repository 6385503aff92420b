package store

import (
	"context"
	"errors"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
)

// RiverLeaderID returns the id of the River client that currently holds
// leadership ("" when none). Leader-only work (the gauges below) keys off it.
func (s *Store) RiverLeaderID(ctx context.Context) (string, error) {
	var id string
	err := s.pool.QueryRow(ctx, `SELECT leader_id FROM river_leader WHERE expires_at > now()`).Scan(&id)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", nil
	}
	return id, err
}

// QueueStat is the number of jobs of one queue in one state.
type QueueStat struct {
	Queue string
	State string
	Jobs  int64
}

// QueueStats counts unfinished jobs by queue and state, and the age of the
// oldest available job per queue. The count reads at most limit jobs and
// both queries stop after timeout, so a huge backlog cannot make the
// metrics loop expensive.
func (s *Store) QueueStats(ctx context.Context, limit int, timeout time.Duration) ([]QueueStat, map[string]float64, error) {
	var stats []QueueStat
	oldest := map[string]float64{}
	err := s.InTx(ctx, func(tx pgx.Tx) error {
		stats, oldest = nil, map[string]float64{}
		if _, err := tx.Exec(ctx, `SELECT set_config('statement_timeout', $1, true)`, strconv.FormatInt(timeout.Milliseconds(), 10)); err != nil {
			return err
		}
		rows, err := tx.Query(ctx, `
SELECT queue, state::text, count(*)
  FROM (SELECT queue, state FROM river_job
         WHERE state IN ('available', 'scheduled', 'retryable', 'running', 'pending')
         LIMIT $1) j
 GROUP BY queue, state`, limit)
		if err != nil {
			return err
		}
		for rows.Next() {
			var q QueueStat
			if err := rows.Scan(&q.Queue, &q.State, &q.Jobs); err != nil {
				rows.Close()
				return err
			}
			stats = append(stats, q)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		rows, err = tx.Query(ctx, `
SELECT queue, extract(epoch FROM now() - min(scheduled_at))::float8
  FROM river_job WHERE state = 'available' AND scheduled_at <= now()
 GROUP BY queue`)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var q string
			var age float64
			if err := rows.Scan(&q, &age); err != nil {
				return err
			}
			oldest[q] = age
		}
		return rows.Err()
	})
	return stats, oldest, err
}

// Liability is the credit the business still owes its users.
type Liability struct {
	ByKind     map[string]int64
	Expiring7d int64
	MeasuredAt time.Time
}

// CreditLiability sums live credits by kind and those expiring within 7 days.
func (s *Store) CreditLiability(ctx context.Context) (Liability, error) {
	l := Liability{ByKind: map[string]int64{}, MeasuredAt: time.Now()}
	for _, k := range GrantKinds() {
		l.ByKind[k] = 0
	}
	rows, err := s.pool.Query(ctx, `
SELECT kind, sum(remaining)::bigint FROM grants
 WHERE closed_at IS NULL AND (expires_at IS NULL OR expires_at > now())
 GROUP BY kind`)
	if err != nil {
		return l, err
	}
	for rows.Next() {
		var k string
		var n int64
		if err := rows.Scan(&k, &n); err != nil {
			rows.Close()
			return l, err
		}
		l.ByKind[k] = n
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return l, err
	}
	err = s.pool.QueryRow(ctx, `
SELECT coalesce(sum(remaining), 0)::bigint FROM grants
 WHERE closed_at IS NULL AND expires_at IS NOT NULL AND expires_at > now() AND expires_at <= now() + interval '7 days'`).Scan(&l.Expiring7d)
	return l, err
}

// SweptThrough is the expiry sweep's watermark: every grant that expired
// before the returned instant has been swept. It is the expiry of the
// oldest grant still open past its expiry, or the database's now() when
// none is. The gap to now is how far the sweep is behind: about a minute
// with sweeps every minute, growing while no sweep runs or one is stuck.
// One probe of grants_expiring_idx, however many grants there are.
func (s *Store) SweptThrough(ctx context.Context) (time.Time, error) {
	var t time.Time
	err := s.pool.QueryRow(ctx, `
SELECT coalesce((SELECT min(expires_at) FROM grants
                  WHERE closed_at IS NULL AND expires_at IS NOT NULL AND expires_at <= now()), now())`).Scan(&t)
	return t, err
}
