package web

import (
	"net/http"
	"strconv"

	"github.com/quickscale/quickscale/store"
)

// historyPageSize is how many ledger entries a history page reads: a use
// drawn from several grants, or a removal drawn from several, is one line,
// so a page may show fewer lines.
const historyPageSize = 25

// cursorParam reads a keyset cursor from the query; bad values mean "first page".
func cursorParam(r *http.Request) int64 { return cursorValue(r, "cursor") }

// cursorValue reads the keyset cursor in query parameter name; bad values
// mean "first page".
func cursorValue(r *http.Request, name string) int64 {
	c, err := strconv.ParseInt(r.URL.Query().Get(name), 10, 64)
	if err != nil || c < 0 {
		return 0
	}
	return c
}

// history reads the page of a user's credit history older than cursor or,
// given after (a page's NewerAfter), newer than that entry.
func (s *Site) history(r *http.Request, userID, cursor, after int64) (store.HistoryPage, error) {
	if after > 0 {
		return s.store.HistoryNewer(r.Context(), userID, after, historyPageSize)
	}
	return s.store.History(r.Context(), userID, cursor, historyPageSize)
}

// Dashboard serves GET /dashboard.
func (s *Site) Dashboard() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u := CurrentUser(r.Context())
		bal, err := s.store.Balance(r.Context(), u.ID)
		if err != nil {
			s.serverError(w, r, err)
			return
		}
		live, found, err := s.store.LiveSubscription(r.Context(), u.ID)
		if err != nil {
			s.serverError(w, r, err)
			return
		}
		data := map[string]any{"Balance": bal}
		if found {
			data["Plan"] = live
		}
		s.render(w, r, http.StatusOK, "dashboard", "Dashboard", data)
	})
}

// Credits serves GET /dashboard/credits: the balance by kind and a
// keyset-paginated history.
func (s *Site) Credits() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx := r.Context()
		u := CurrentUser(ctx)
		// The balance by kind, summed from the same read as the expiry
		// lines (what each kind's lines add up to).
		bal, expiring, never, err := s.store.ExpiringCredits(ctx, u.ID)
		if err != nil {
			s.serverError(w, r, err)
			return
		}
		// Per kind: its credits that expire, by date (and, in never, how
		// many never do).
		byKind := map[string][]store.Expiring{}
		for _, e := range expiring {
			byKind[e.Kind] = append(byKind[e.Kind], e)
		}
		cursor := cursorParam(r)
		hist, err := s.history(r, u.ID, cursor, cursorValue(r, "after"))
		if err != nil {
			s.serverError(w, r, err)
			return
		}
		s.render(w, r, http.StatusOK, "credits", "Your credits", map[string]any{
			"Balance": bal, "History": hist, "Kinds": store.GrantKinds(), "Paged": cursor != 0, "Expiring": byKind,
			"NeverExpire": never,
		})
	})
}
