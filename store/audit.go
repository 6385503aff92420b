package store

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"time"
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
	rows, err := s.pool.Query(ctx, `
SELECT a.id, a.actor_user_id, u.email AS actor_email, a.action, a.target_user_id, a.details::text, a.created_at
  FROM audit_log a LEFT JOIN users u ON u.id = a.actor_user_id
 WHERE a.target_user_id = $1 ORDER BY a.id DESC LIMIT $2`, target, limit)
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
			return nil, fmt.Errorf("audit entry %d: details: %w", e.ID, err)
		}
		out = append(out, e)
	}
	return out, rows.Err()
}
