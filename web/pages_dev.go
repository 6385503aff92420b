package web

import (
	"encoding/json"
	"net/http"
	"strconv"

	"github.com/quickscale/quickscale/store"
)

// Mailbox serves GET /dev/mailbox: mail kept locally when no SMTP server
// is configured. Mounted only in dev.
func (s *Site) Mailbox() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		page, err := s.store.Mailbox(r.Context(), cursorParam(r), cursorValue(r, "after"), MailboxPageSize)
		if err != nil {
			s.serverError(w, r, err)
			return
		}
		s.render(w, r, http.StatusOK, "mailbox", "Dev mailbox", map[string]any{"Page": page, "Paged": cursorParam(r) > 0})
	})
}

// MailboxPageSize is how many mails a page of the dev mailbox shows.
const MailboxPageSize = 100

// MailboxJSON serves GET /dev/mailbox.json: a page of mails, newest first,
// and the cursor of the next older page, if any, in the Link header
// (rel="next"). A cursor that is not a positive whole number is a 400.
func (s *Site) MailboxJSON() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var before int64
		if c := r.URL.Query().Get("cursor"); c != "" {
			n, err := strconv.ParseInt(c, 10, 64)
			if err != nil || n <= 0 {
				http.Error(w, "cursor: want the next_cursor of a page", http.StatusBadRequest)
				return
			}
			before = n
		}
		page, err := s.store.Mailbox(r.Context(), before, 0, MailboxPageSize)
		if err != nil {
			s.serverError(w, r, err)
			return
		}
		mails, next := page.Items, page.NextCursor
		if mails == nil {
			mails = []store.Mail{}
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		if next > 0 {
			w.Header().Set("Link", `</dev/mailbox.json?cursor=`+strconv.FormatInt(next, 10)+`>; rel="next"`)
		}
		_ = json.NewEncoder(w).Encode(mails)
	})
}
