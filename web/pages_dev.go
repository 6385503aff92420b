package web

import (
	"encoding/json"
	"net/http"

	"github.com/quickscale/quickscale/store"
)

// Mailbox serves GET /dev/mailbox: mail kept locally when no SMTP server
// is configured. Mounted only in dev.
func (s *Site) Mailbox() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mails, err := s.store.Mailbox(r.Context(), 100)
		if err != nil {
			s.serverError(w, r, err)
			return
		}
		s.render(w, r, http.StatusOK, "mailbox", "Dev mailbox", map[string]any{"Mails": mails})
	})
}

// MailboxJSON serves GET /dev/mailbox.json, newest first.
func (s *Site) MailboxJSON() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mails, err := s.store.Mailbox(r.Context(), 100)
		if err != nil {
			s.serverError(w, r, err)
			return
		}
		if mails == nil {
			mails = []store.Mail{}
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		_ = json.NewEncoder(w).Encode(mails)
	})
}
