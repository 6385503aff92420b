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

// Mailbox lists up to limit messages older than before (0: the newest),
// newest first, and the cursor of the next older page (0 when none).
func (s *Store) Mailbox(ctx context.Context, before int64, limit int) ([]Mail, int64, error) {
	if before <= 0 {
		before = 1<<63 - 1
	}
	rows, err := s.pool.Query(ctx, `SELECT id, to_addr, subject, text_body, html_body, sent_at FROM dev_mailbox
 WHERE id < $1 ORDER BY id DESC LIMIT $2`, before, limit+1)
	if err != nil {
		return nil, 0, err
	}
	mails, err := pgx.CollectRows(rows, pgx.RowToStructByName[Mail])
	if err != nil || len(mails) <= limit {
		return mails, 0, err
	}
	mails = mails[:limit]
	return mails, mails[limit-1].ID, nil
}
