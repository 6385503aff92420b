package web

import (
	"errors"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/jackc/pgx/v5"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/rivertype"

	"github.com/quickscale/quickscale/jobs"
	"github.com/quickscale/quickscale/store"
)

// AdminHome serves GET /admin.
func (s *Site) AdminHome() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		totals, err := s.store.PaymentTotalsSince(r.Context(), time.Now().Add(-30*24*time.Hour))
		if err != nil {
			s.serverError(w, r, err)
			return
		}
		s.render(w, r, http.StatusOK, "admin", "Admin", map[string]any{"Totals": totals})
	})
}

// AdminUsers serves GET /admin/users?q=…&cursor=… (or &after=…)
func (s *Site) AdminUsers() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// Text only, at most an address long, cut at a character: bytes
		// that are not UTF-8 would be refused by PostgreSQL and break the
		// page, which shows the query.
		q := strings.ToValidUTF8(r.URL.Query().Get("q"), "")
		if len(q) > 254 {
			q = strings.ToValidUTF8(q[:254], "")
		}
		page, err := s.store.SearchUsers(r.Context(), q, cursorParam(r), cursorValue(r, "after"), 50)
		if err != nil {
			s.serverError(w, r, err)
			return
		}
		data := map[string]any{"Q": q, "Page": page, "QEscaped": url.QueryEscape(q), "Paged": cursorParam(r) != 0}
		// What customers quote from their receipts and emails ("payment
		// #81", its pi_… reference) or Stripe's dashboard shows (cs_…,
		// cus_…, sub_…, in_…) leads to the customer too.
		pay, found, err := s.store.FindPayment(r.Context(), q)
		if err != nil {
			s.serverError(w, r, err)
			return
		}
		if found {
			data["Payment"] = pay
		} else if tq := strings.TrimSpace(q); strings.HasPrefix(tq, "cus_") || strings.HasPrefix(tq, "sub_") || strings.HasPrefix(tq, "cs_") || strings.HasPrefix(tq, "in_") {
			if id, ok, err := s.store.UserOfStripeID(r.Context(), q); err != nil {
				s.serverError(w, r, err)
				return
			} else if ok {
				data["CustomerUser"] = id
			}
		}
		s.render(w, r, http.StatusOK, "admin_users", "Users", data)
	})
}

type adminUserPage struct {
	Target   store.User
	Balance  store.Balance
	Audit    []store.AuditEntry
	Payments store.ListPage[store.Payment]
	// RefundFailed marks the payments listed with a refund that failed.
	RefundFailed map[int64]bool
	// Disputed holds the latest dispute of each payment listed that has one.
	Disputed map[int64]store.Dispute
	// Subscriptions are the user's started subscriptions, newest first.
	Subscriptions []store.Subscription
	// InvoiceFailures are those subscriptions' renewals whose payment
	// did not go through, the latest first (paid since or not).
	InvoiceFailures []store.InvoiceFailure
	Form            *form
	Kinds           []string
	// Nonce makes a resubmitted "add" form add nothing the second time.
	Nonce string
	// DeletedAt is set for an account its owner deleted: shown, read-only.
	DeletedAt *time.Time
	// The user page's credit history and payments, each paged by its own
	// cursor (?history=, ?payments=).
	History          store.HistoryPage
	HistoryPaged     bool
	PaymentsPaged    bool
	HistoryOlderURL  string
	HistoryNewerURL  string
	HistoryNewest    string
	PaymentsURL      string
	PaymentsNewerURL string
	PaymentsNewest   string
}

func (s *Site) renderAdminUser(w http.ResponseWriter, r *http.Request, status int, page string, target store.User, f *form) {
	s.renderAdminUserPage(w, r, status, page, adminUserPage{Target: target, Form: f})
}

func (s *Site) renderAdminUserPage(w http.ResponseWriter, r *http.Request, status int, page string, p adminUserPage) {
	ctx := r.Context()
	target := p.Target
	p.Kinds, p.Nonce = []string{store.GrantAdmin, store.GrantPromo}, store.NewSecret()[:16]
	if p.Form == nil {
		p.Form = newForm()
		p.Form.Values["direction"] = "add"
	}
	var err error
	if p.Balance, err = s.store.Balance(ctx, target.ID); err != nil {
		s.serverError(w, r, err)
		return
	}
	if p.Audit, err = s.store.AuditFor(ctx, target.ID, 20); err != nil {
		s.serverError(w, r, err)
		return
	}
	if p.Subscriptions, err = s.store.SubscriptionsOfUser(ctx, target.ID, 5); err != nil {
		s.serverError(w, r, err)
		return
	}
	subIDs := make([]int64, 0, len(p.Subscriptions))
	for _, sub := range p.Subscriptions {
		subIDs = append(subIDs, sub.ID)
	}
	if p.InvoiceFailures, err = s.store.InvoiceFailuresOf(ctx, subIDs, 10); err != nil {
		s.serverError(w, r, err)
		return
	}
	payCursor, payAfter := cursorValue(r, "payments"), cursorValue(r, "payments_after")
	if p.Payments, err = s.store.PaymentsOfUser(ctx, target.ID, payCursor, payAfter, 10); err != nil {
		s.serverError(w, r, err)
		return
	}
	ids := make([]int64, 0, len(p.Payments.Items))
	for _, pay := range p.Payments.Items {
		ids = append(ids, pay.ID)
	}
	if p.RefundFailed, err = s.store.PaymentsWithRefundFailures(ctx, ids); err != nil {
		s.serverError(w, r, err)
		return
	}
	if p.Disputed, err = s.store.DisputesOfPayments(ctx, ids); err != nil {
		s.serverError(w, r, err)
		return
	}
	if page == "admin_user" {
		// What support needs to answer "my credits vanished": every ledger
		// movement, as the user sees it on /dashboard/credits.
		histCursor, histAfter := cursorValue(r, "history"), cursorValue(r, "history_after")
		if p.History, err = s.history(r, target.ID, histCursor, histAfter); err != nil {
			s.serverError(w, r, err)
			return
		}
		// Each list pages on its own and its links keep the other's page.
		base := "/admin/users/" + strconv.FormatInt(target.ID, 10)
		p.HistoryPaged, p.PaymentsPaged = histCursor != 0, payCursor != 0
		pay, hist := "?payments="+strconv.FormatInt(payCursor, 10), "?history="+strconv.FormatInt(histCursor, 10)
		if payAfter > 0 {
			pay = "?payments_after=" + strconv.FormatInt(payAfter, 10)
		}
		if histAfter > 0 {
			hist = "?history_after=" + strconv.FormatInt(histAfter, 10)
		}
		p.HistoryOlderURL = base + pay + "&history="
		p.HistoryNewerURL = base + pay + "&history_after="
		p.HistoryNewest = base + pay
		p.PaymentsURL = base + hist + "&payments="
		p.PaymentsNewerURL = base + hist + "&payments_after="
		p.PaymentsNewest = base + hist
	}
	title := target.Email
	if p.DeletedAt != nil {
		title = "Deleted account #" + strconv.FormatInt(target.ID, 10)
	}
	if page == "admin_credits" {
		title = "Adjust credits: " + title
	}
	s.render(w, r, status, page, title, p)
}

// adminUserOf resolves /admin/users/{id}: the live user, or the account
// its owner deleted (deletedAt set); not found, or an error, is answered.
func (s *Site) adminUserOf(w http.ResponseWriter, r *http.Request) (u store.User, deletedAt *time.Time, ok bool) {
	id, err := strconv.ParseInt(chi.URLParam(r, "id"), 10, 64)
	if err != nil {
		s.NotFound().ServeHTTP(w, r)
		return u, nil, false
	}
	u, err = s.store.UserByID(r.Context(), id)
	if store.ErrorKind(err) == store.KindNotFound {
		if d, at, derr := s.store.DeletedUserByID(r.Context(), id); derr == nil {
			return d, &at, true
		}
	}
	if err != nil {
		s.handleError(w, r, err)
		return u, nil, false
	}
	return u, nil, true
}

// AdminUser serves GET /admin/users/{id}. An account its owner deleted is
// shown too, read-only: its payments and ledger stay (refunds, disputes).
func (s *Site) AdminUser() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		target, deletedAt, ok := s.adminUserOf(w, r)
		if !ok {
			return
		}
		if deletedAt != nil {
			s.renderAdminUserPage(w, r, http.StatusOK, "admin_user", adminUserPage{Target: target, DeletedAt: deletedAt})
			return
		}
		s.renderAdminUser(w, r, http.StatusOK, "admin_user", target, nil)
	})
}

// AdminCredits serves GET and POST /admin/users/{id}/credits: add or
// remove credits with a mandatory reason, written to the ledger and the
// audit log in one transaction.
func (s *Site) AdminCredits() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		target, deletedAt, ok := s.adminUserOf(w, r)
		if !ok {
			return
		}
		if deletedAt != nil {
			// An account deleted since the form was loaded: say so (409),
			// not "not found", which leaves the admin guessing.
			s.errorPage(w, r, errorPage{Status: http.StatusConflict, Heading: "This account was deleted",
				Message:   "Its owner deleted it on " + deletedAt.UTC().Format("2 Jan 2006 15:04") + " UTC, and its credits were forfeited then. Nothing was changed.",
				ActionURL: "/admin/users/" + strconv.FormatInt(target.ID, 10), ActionLabel: "See the account"})
			return
		}
		if r.Method != http.MethodPost {
			s.renderAdminUser(w, r, http.StatusOK, "admin_credits", target, nil)
			return
		}
		admin := CurrentUser(r.Context())
		f, _ := parseForm(r, "direction", "amount", "kind", "expires", "reason", "nonce", "confirm_repeat")
		amount, err := strconv.ParseInt(f.raw("amount"), 10, 64)
		if err != nil || amount <= 0 || amount > 1_000_000_000 {
			f.fail("amount", "Enter a whole number of credits from 1 to 1,000,000,000.")
		}
		if f.raw("direction") != "add" && f.raw("direction") != "remove" {
			f.fail("direction", "Choose add or remove.")
		}
		kind := f.raw("kind")
		if kind == "" {
			kind = store.GrantAdmin
		}
		if kind != store.GrantAdmin && kind != store.GrantPromo {
			f.fail("kind", "Choose admin or promo credits.")
		}
		var expires *time.Time
		if v := f.raw("expires"); v != "" && f.raw("direction") == "add" {
			// The credits are good through the whole of the day chosen:
			// they expire when it ends (UTC), so today is a valid choice.
			t, err := time.Parse("2006-01-02", v)
			end := t.AddDate(0, 0, 1)
			switch {
			case err != nil || !end.After(time.Now()):
				f.fail("expires", "Give today or a later date (YYYY-MM-DD; days are counted in UTC, where it is now "+time.Now().UTC().Format("2 Jan 15:04")+"), or leave it empty for credits that never expire.")
			case store.ExpiryTooFar(end, time.Now()):
				f.fail("expires", "Give a date less than "+strconv.Itoa(store.MaxExpiryYears)+" years ahead (100 years less a day at most), or leave it empty for credits that never expire.")
			default:
				expires = &end
			}
		}
		if f.raw("reason") == "" {
			f.fail("reason", "Say why: the reason is kept in the ledger and the audit log.")
		} else if err := store.CheckAdjustmentReason(f.raw("reason")); err != nil {
			f.fail("reason", err.Error())
		}
		if !f.ok() {
			s.renderAdminUser(w, r, http.StatusUnprocessableEntity, "admin_credits", target, f)
			return
		}
		delta := amount
		if f.raw("direction") == "remove" {
			delta = -amount
		}
		key := adjustKey(target.ID, f.raw("nonce"))
		if key == "" {
			// The page gives every form a key; without one a resubmission
			// could not be told apart from a new adjustment, nor a repeat
			// asked about.
			f.Message = "This form has lost its key; reload the page and try again."
			s.renderAdminUser(w, r, http.StatusBadRequest, "admin_credits", target, f)
			return
		}
		// The same adjustment made a moment ago under another key is most
		// likely the form sent again after Back: ask before doing it twice.
		var ask time.Duration
		if f.raw("confirm_repeat") != "yes" {
			ask = repeatWindow
		}
		res, err := s.store.Adjust(r.Context(), store.Adjustment{
			UserID: target.ID, Delta: delta, Kind: kind, ExpiresAt: expires, Actor: &admin.ID, Reason: f.raw("reason"),
			Key: key, Via: "web", AskRepeatWithin: ask,
		})
		var short *store.InsufficientCreditsError
		var repeated *store.RepeatedAdjustmentError
		switch {
		case errors.As(err, &repeated):
			what := "adding " + countNoun(amount, "credit")
			if delta < 0 {
				what = "removing " + countNoun(amount, "credit")
			}
			f.Message = "You made this same adjustment (" + what + ", same reason) " + relativeTime(repeated.At) +
				". Nothing was changed now. To apply it again, tick the box below and Apply."
			f.Values["confirm_repeat"] = "ask"
			s.renderAdminUser(w, r, http.StatusConflict, "admin_credits", target, f)
			return
		case errors.As(err, &short):
			has := "The user has only " + countNoun(short.Balance, "credit")
			if short.Balance == 0 {
				has = "The user has no credits"
			}
			f.fail("amount", has+"; you cannot remove more than that.")
			s.renderAdminUser(w, r, http.StatusUnprocessableEntity, "admin_credits", target, f)
			return
		case store.ErrorKind(err) == store.KindInvalid:
			f.Message = err.Error()
			s.renderAdminUser(w, r, http.StatusUnprocessableEntity, "admin_credits", target, f)
			return
		case store.ErrorKind(err) == store.KindConflict:
			f.Message = err.Error()
			s.renderAdminUser(w, r, http.StatusConflict, "admin_credits", target, f)
			return
		case err != nil:
			s.serverError(w, r, err)
			return
		}
		if res.Replayed {
			s.flash(r.Context(), "This adjustment was already applied (the form was sent twice); nothing changed. Balance "+formatInt(res.Balance)+".")
			redirect(w, r, "/admin/users/"+strconv.FormatInt(target.ID, 10))
			return
		}
		if delta > 0 && s.metrics != nil {
			s.metrics.CreditsGranted.WithLabelValues(kind).Add(float64(delta))
		}
		if delta < 0 && s.metrics != nil {
			s.metrics.CreditsRemoved.WithLabelValues("support").Add(float64(-delta))
		}
		verb := "Added "
		if delta < 0 {
			verb = "Removed "
		}
		s.flash(r.Context(), verb+countNoun(amount, "credit")+". Balance now "+formatInt(res.Balance)+".")
		redirect(w, r, "/admin/users/"+strconv.FormatInt(target.ID, 10))
	})
}

// repeatWindow is how long after an adjustment the same one (same admin,
// user, amount and reason) asks for confirmation.
const repeatWindow = 10 * time.Minute

// adjustKey scopes the form's nonce to the user ("" without a nonce, or
// with one longer than a page's).
func adjustKey(userID int64, nonce string) string {
	if nonce == "" || len(nonce) > 64 {
		return ""
	}
	return strconv.FormatInt(userID, 10) + ":" + nonce
}

// eventsPageSize is how many webhook events a page lists.
const eventsPageSize = 50

// AdminWebhooks serves GET /admin/webhooks?type=…&outcome=…
func (s *Site) AdminWebhooks() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		f := store.EventFilter{Type: q.Get("type"), Outcome: q.Get("outcome")}
		switch f.Outcome {
		case "", "pending", store.OutcomeApplied, store.OutcomeIgnored, store.OutcomeFailed:
		default:
			f.Outcome = ""
		}
		if len(f.Type) > 100 {
			f.Type = ""
		}
		if ts, err := strconv.ParseInt(q.Get("before_ts"), 10, 64); err == nil && q.Get("before_id") != "" {
			f.CursorTime, f.CursorID = time.Unix(0, ts), q.Get("before_id")
		}
		if ts, err := strconv.ParseInt(q.Get("after_ts"), 10, 64); err == nil && q.Get("after_id") != "" {
			f.AfterTime, f.AfterID = time.Unix(0, ts), q.Get("after_id")
		}
		page, err := s.store.ListStripeEvents(r.Context(), f, eventsPageSize)
		if err != nil {
			s.serverError(w, r, err)
			return
		}
		// The first page of the same filter, for "Newest".
		newest := "/admin/webhooks?" + url.Values{"type": {f.Type}, "outcome": {f.Outcome}}.Encode()
		next, newer := "", ""
		if page.HasMore {
			v := url.Values{"type": {f.Type}, "outcome": {f.Outcome}, "before_ts": {strconv.FormatInt(page.NextTime.UnixNano(), 10)}, "before_id": {page.NextID}}
			next = "/admin/webhooks?" + v.Encode()
		}
		if page.HasNewer {
			v := url.Values{"type": {f.Type}, "outcome": {f.Outcome}, "after_ts": {strconv.FormatInt(page.NewerTime.UnixNano(), 10)}, "after_id": {page.NewerID}}
			newer = "/admin/webhooks?" + v.Encode()
		}
		rows := make([]eventRow, len(page.Events))
		for i, ev := range page.Events {
			rows[i] = eventRow{StripeEvent: ev, State: "pending"}
			if ev.Outcome != nil {
				rows[i].State = *ev.Outcome
			}
		}
		s.render(w, r, http.StatusOK, "admin_webhooks", "Webhook events", map[string]any{
			"Filter": f, "Page": page, "Rows": rows, "Next": next, "Newer": newer, "Outcomes": []string{"applied", "ignored", "failed", "pending"},
			"Paged": !f.CursorTime.IsZero(), "Newest": newest,
		})
	})
}

// eventRow is a listed event with its outcome as text ("pending" until
// processed): templates cannot compare a *string.
type eventRow struct {
	store.StripeEvent
	State string
}

// AdminWebhook serves GET /admin/webhooks/{id}: one event and its payload.
func (s *Site) AdminWebhook() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ev, err := s.store.StripeEventByID(r.Context(), chi.URLParam(r, "id"))
		if err != nil {
			s.handleError(w, r, err)
			return
		}
		s.render(w, r, http.StatusOK, "admin_webhook", ev.ID, map[string]any{"Event": ev, "Payload": prettyJSON(ev.Payload)})
	})
}

// AdminReprocessWebhook serves POST /admin/webhooks/{id}/reprocess: the
// event is enqueued again (processing is idempotent) and the action audited.
func (s *Site) AdminReprocessWebhook() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx := r.Context()
		admin := CurrentUser(ctx)
		ev, err := s.store.StripeEventByID(ctx, chi.URLParam(r, "id"))
		if err != nil {
			s.handleError(w, r, err)
			return
		}
		// One re-process at a time: while one waits or runs, another click
		// (a double or triple click) adds no job and no audit entry.
		var queued bool
		err = s.store.InTx(ctx, func(tx pgx.Tx) error {
			res, err := s.jobs.InsertTx(ctx, tx, jobs.StripeEvent{EventID: ev.ID}, &river.InsertOpts{UniqueOpts: river.UniqueOpts{
				ByArgs:  true,
				ByState: []rivertype.JobState{rivertype.JobStateAvailable, rivertype.JobStatePending, rivertype.JobStateRunning, rivertype.JobStateRetryable, rivertype.JobStateScheduled},
			}})
			if err != nil {
				return err
			}
			if queued = !res.UniqueSkippedAsDuplicate; !queued {
				return nil
			}
			return store.Audit(ctx, tx, &admin.ID, "webhook.reprocess", nil, map[string]any{"event_id": ev.ID, "type": ev.Type})
		})
		if err != nil {
			s.serverError(w, r, err)
			return
		}
		if queued {
			s.flash(ctx, "Event "+ev.ID+" is queued for processing again.")
		} else {
			s.flash(ctx, "Event "+ev.ID+" is already queued for processing again; nothing was added.")
		}
		redirect(w, r, "/admin/webhooks/"+url.PathEscape(ev.ID))
	})
}

// auditPageSize is how many audit entries /admin/audit shows at a time.
const auditPageSize = 50

// AdminAudit serves GET /admin/audit?action=…&cursor=…: the whole audit
// log, newest first — the actions that name no user (re-processed webhook
// events, River UI actions, service changes) are only here.
func (s *Site) AdminAudit() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx := r.Context()
		action := strings.ToValidUTF8(r.URL.Query().Get("action"), "")
		if len(action) > 100 {
			action = ""
		}
		var userID int64
		if id, err := strconv.ParseInt(r.URL.Query().Get("user"), 10, 64); err == nil && id > 0 {
			userID = id
		}
		cursor := cursorParam(r)
		page, err := s.store.AuditLog(ctx, action, userID, cursor, cursorValue(r, "after"), auditPageSize)
		if err != nil {
			s.serverError(w, r, err)
			return
		}
		actions, err := s.store.AuditActions(ctx)
		if err != nil {
			s.serverError(w, r, err)
			return
		}
		s.render(w, r, http.StatusOK, "admin_audit", "Audit log", map[string]any{
			"Page": page, "Action": action, "Actions": actions, "Paged": cursor != 0, "User": userID,
		})
	})
}
