package store

import (
	"context"
	"time"

	"github.com/jackc/pgx/v5"
)

// Mail is a message kept in the dev mailbox.
type Mail struct {
	ID      int64     `db:"id" json:"id"`
	To      string    `db:"to_addr" json:"to"`
	Subject string    `db:"subject" json:"subject"`
	Text    string    `db:"text_body" json:"text"`
	HTML    string    `db:"html_body" json:"html"`
	SentAt  time.Time `db:"sent_at" json:"sent_at"`
}

// DeliverToMailbox stores a message in the dev mailbox.
func (s *Store) DeliverToMailbox(ctx context.Context, m Mail) error {
	_, err := s.pool.Exec(ctx, `INSERT INTO dev_mailbox (to_addr, subject, text_body, html_body) VALUES ($1, $2, $3, $4)`,
		m.To, m.Subject, m.Text, m.HTML)
	return err
}

// Mailbox lists messages, newest first: those older than before (0: the
// newest) or, given after, those right above it (keysetList).
func (s *Store) Mailbox(ctx context.Context, before, after int64, limit int) (ListPage[Mail], error) {
	return keysetList(0, "id", func(cond, tail string, extra ...any) ([]Mail, error) {
		rows, err := s.pool.Query(ctx, `SELECT id, to_addr, subject, text_body, html_body, sent_at FROM dev_mailbox
 WHERE `+cond+tail, extra...)
		if err != nil {
			return nil, err
		}
		return pgx.CollectRows(rows, pgx.RowToStructByName[Mail])
	}, func(m Mail) int64 { return m.ID }, before, after, limit)
}
