package store

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
)

// AuditEntry is one admin action.
type AuditEntry struct {
	ID           int64   `db:"id"`
	ActorUserID  *int64  `db:"actor_user_id"`
	ActorEmail   *string `db:"actor_email"`
	Action       string  `db:"action"`
	TargetUserID *int64  `db:"target_user_id"`
	// Details holds the action's JSON details; numbers are json.Number, so
	// that credits print as the whole numbers they are (a float64 would
	// print 1000000 as 1e+06).
	Details   map[string]any `db:"details"`
	CreatedAt time.Time      `db:"created_at"`
}

// Audit appends an entry to the audit log in the caller's transaction, so an
// admin action and its record commit together. actor is nil for the CLI.
func Audit(ctx context.Context, db DBTX, actor *int64, action string, target *int64, details map[string]any) error {
	if details == nil {
		details = map[string]any{}
	}
	_, err := db.Exec(ctx, `INSERT INTO audit_log (actor_user_id, action, target_user_id, details) VALUES ($1, $2, $3, $4)`,
		actor, action, target, details)
	return err
}

// AuditFor lists the newest audit entries about a user.
func (s *Store) AuditFor(ctx context.Context, target int64, limit int) ([]AuditEntry, error) {
	return s.auditEntries(ctx, `WHERE a.target_user_id = $1 ORDER BY a.id DESC LIMIT $2`, target, limit)
}

// AuditLog lists audit entries, newest first: older than before (0: the
// newest) or, given after, those right above it (keysetList); of one
// action or of an action family ("riverui." for every River UI action)
// when action is set, about one user when userID is set.
func (s *Store) AuditLog(ctx context.Context, action string, userID, before, after int64, limit int) (ListPage[AuditEntry], error) {
	where := `WHERE ($1 = '' OR a.action = $1 OR (right($1, 1) = '.' AND starts_with(a.action, $1)))`
	args := []any{action}
	if userID > 0 {
		// One user's entries, through the (target_user_id, id) index.
		where += ` AND a.target_user_id = $2`
		args = append(args, userID)
	}
	return keysetList(len(args), "a.id", func(cond, tail string, extra ...any) ([]AuditEntry, error) {
		return s.auditEntries(ctx, where+` AND `+cond+tail, append(slices.Clip(args), extra...)...)
	}, func(e AuditEntry) int64 { return e.ID }, before, after, limit)
}

// AuditActions lists the actions of the latest 10,000 entries, for the
// filter: a bounded read however long the append-only log grows (an older,
// rarer action is still found by naming it).
func (s *Store) AuditActions(ctx context.Context) ([]string, error) {
	rows, err := s.pool.Query(ctx, `SELECT DISTINCT action FROM (SELECT action FROM audit_log ORDER BY id DESC LIMIT 10000) a ORDER BY action`)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowTo[string])
}

func (s *Store) auditEntries(ctx context.Context, where string, args ...any) ([]AuditEntry, error) {
	rows, err := s.pool.Query(ctx, `
SELECT a.id, a.actor_user_id, u.email AS actor_email, a.action, a.target_user_id, a.details::text, a.created_at
  FROM audit_log a LEFT JOIN users u ON u.id = a.actor_user_id `+where, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []AuditEntry
	for rows.Next() {
		var e AuditEntry
		var details []byte
		if err := rows.Scan(&e.ID, &e.ActorUserID, &e.ActorEmail, &e.Action, &e.TargetUserID, &details, &e.CreatedAt); err != nil {
			return nil, err
		}
		dec := json.NewDecoder(bytes.NewReader(details))
		dec.UseNumber()
		if err := dec.Decode(&e.Details); err != nil {
			return nil, fmt.Errorf("audit entry %d: details: %v", e.ID, err) // %v: a decoder's io.EOF is not a lost connection (IsUnavailable)
		}
		out = append(out, e)
	}
	return out, rows.Err()
}
