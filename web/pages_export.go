package web

import (
	"bytes"
	"context"
	"encoding/csv"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/quickscale/quickscale/billing"
	"github.com/quickscale/quickscale/store"
)

// exportLimiter bounds the CSV exports running at once in a process (each
// reads the database flat out while its client keeps up), and to one at a
// time per account, so that one customer cannot hold every turn.
type exportLimiter struct {
	slots   chan struct{}
	mu      sync.Mutex
	running map[int64]bool
}

func newExportLimiter(n int) *exportLimiter {
	return &exportLimiter{slots: make(chan struct{}, n), running: map[int64]bool{}}
}

// begin takes the account's turn (false: it has an export running) and
// then one of the process's slots, waiting for one until ctx ends (an
// error). end gives both back.
func (l *exportLimiter) begin(ctx context.Context, userID int64) (ok bool, end func(), err error) {
	l.mu.Lock()
	if l.running[userID] {
		l.mu.Unlock()
		return false, nil, nil
	}
	l.running[userID] = true
	l.mu.Unlock()
	release := func() {
		l.mu.Lock()
		delete(l.running, userID)
		l.mu.Unlock()
	}
	select {
	case l.slots <- struct{}{}:
	case <-ctx.Done():
		release()
		return true, nil, ctx.Err()
	}
	return true, func() { <-l.slots; release() }, nil
}

// csvWriteWait is how long one write of an export may wait for its client
// to read: a client that stops reading loses its download (and its turn)
// instead of holding it until the server's write timeout.
const csvWriteWait = 10 * time.Second

// csvHead is how much of an export is kept back before anything is sent:
// an export that fails within it answers with an error page, not a cut
// file. Past it the rows stream, and a failure cuts the connection (the
// download ends in an error, never as a shorter file that looks whole).
const csvHead = 64 << 10

// exportRange reads an export's from and to (dates, YYYY-MM-DD, in UTC;
// both included; either may be left out) as the times [from, to).
func exportRange(r *http.Request) (from, to time.Time, problem string) {
	q := r.URL.Query()
	day := func(name string) (time.Time, bool) {
		v := strings.TrimSpace(q.Get(name))
		if v == "" {
			return time.Time{}, true
		}
		t, err := time.ParseInLocation(time.DateOnly, v, time.UTC)
		return t, err == nil && t.Year() >= 2000 && t.Year() <= 9000
	}
	from, okFrom := day("from")
	last, okTo := day("to")
	switch {
	case !okFrom || !okTo:
		return from, to, "Give dates as YYYY-MM-DD (for example 2026-11-01), or leave them out for everything."
	case !from.IsZero() && !last.IsZero() && last.Before(from):
		return from, to, "The range's last day (" + last.Format(time.DateOnly) + ") is before its first (" + from.Format(time.DateOnly) + ")."
	}
	if !last.IsZero() {
		to = last.AddDate(0, 0, 1)
	}
	return from, to, ""
}

// csvExport writes one CSV download: its header row, then the rows that
// fill calls write.
type csvExport struct {
	w       http.ResponseWriter
	rc      *http.ResponseController
	buf     bytes.Buffer
	csv     *csv.Writer
	started bool // the head was sent: the answer can no longer change
}

// cell makes text safe to open in a spreadsheet: a value starting with =,
// +, -, @, a tab or a carriage return would be read as a formula there
// (CSV injection), so it gets a leading apostrophe. Numbers are written
// as they are, not through cell.
func cell(s string) string {
	if s != "" && strings.ContainsRune("=+-@\t\r", rune(s[0])) {
		return "'" + s
	}
	return s
}

func (e *csvExport) row(fields ...string) error {
	if err := e.csv.Write(fields); err != nil {
		return err
	}
	if e.buf.Len() < csvHead {
		return nil
	}
	e.csv.Flush()
	e.started = true
	if e.rc != nil {
		_ = e.rc.SetWriteDeadline(time.Now().Add(csvWriteWait))
	}
	_, err := e.w.Write(e.buf.Bytes())
	e.buf.Reset()
	return err
}

// serveCSV answers with the CSV file name that fill writes (after header),
// or, when fill fails before anything was sent, with the error's page.
func (s *Site) serveCSV(w http.ResponseWriter, r *http.Request, name string, header []string, fill func(e *csvExport) error) {
	if r.Method == http.MethodHead {
		// A monitor's or link checker's HEAD: the headers a download
		// would have, without reading the database for a body nobody gets.
		h := w.Header()
		h.Set("Content-Type", "text/csv; charset=utf-8")
		h.Set("Content-Disposition", `attachment; filename="`+name+`"`)
		h.Set("Cache-Control", "no-store")
		return
	}
	ok, end, err := s.exports.begin(r.Context(), CurrentUser(r.Context()).ID)
	switch {
	case !ok:
		w.Header().Set("Retry-After", "10")
		s.errorPage(w, r, errorPage{Status: http.StatusTooManyRequests, Heading: "A download is already running",
			Message: "Your account has a download in progress: wait for it to finish, then try again."})
		return
	case err != nil:
		w.Header().Set("Retry-After", "30")
		s.errorPage(w, r, errorPage{Status: http.StatusServiceUnavailable, Heading: "Too many downloads at once",
			Message: "Other downloads are being prepared. Please try again in a minute."})
		return
	}
	defer end()
	e := &csvExport{w: w, rc: http.NewResponseController(w)}
	e.csv = csv.NewWriter(&e.buf)
	h := w.Header()
	h.Set("Content-Type", "text/csv; charset=utf-8")
	h.Set("Content-Disposition", `attachment; filename="`+name+`"`)
	h.Set("Cache-Control", "no-store")
	err = e.csv.Write(header)
	if err == nil {
		err = fill(e)
	}
	if err == nil {
		e.csv.Flush()
		if err = e.csv.Error(); err == nil {
			// A write error here is the client gone: nothing to tell.
			_ = e.rc.SetWriteDeadline(time.Now().Add(csvWriteWait))
			_, _ = w.Write(e.buf.Bytes())
			return
		}
	}
	if !e.started {
		h.Del("Content-Disposition")
		h.Del("Cache-Control")
		s.serverError(w, r, err)
		return
	}
	if CutByShutdown(r.Context()) || !errors.Is(r.Context().Err(), context.Canceled) {
		s.logger.ErrorContext(r.Context(), "CSV export cut short", "err", err, "path", r.URL.Path)
	}
	// Headers and part of the file are out: end the connection without
	// the last chunk, so that the client sees the download fail.
	panic(http.ErrAbortHandler)
}

// rangeName is a range's part of a file name: "2026-11-01_2026-11-30",
// "from-2026-11-01", "to-2026-11-30" or "all".
func rangeName(from, to time.Time) string {
	switch {
	case !from.IsZero() && !to.IsZero():
		return from.Format(time.DateOnly) + "_" + to.AddDate(0, 0, -1).Format(time.DateOnly)
	case !from.IsZero():
		return "from-" + from.Format(time.DateOnly)
	case !to.IsZero():
		return "to-" + to.AddDate(0, 0, -1).Format(time.DateOnly)
	}
	return "all"
}

// csvTime writes a time as RFC 3339 in UTC ("" for none).
func csvTime(t *time.Time) string {
	if t == nil {
		return ""
	}
	return t.UTC().Format(time.RFC3339)
}

func csvStr(p *string) string {
	if p == nil {
		return ""
	}
	return cell(*p)
}

func csvID(p *int64) string {
	if p == nil {
		return ""
	}
	return strconv.FormatInt(*p, 10)
}

// csvAmount writes minor units as a plain decimal in the currency's
// units: (1500, usd) → "15.00", (-500, usd) → "-5.00", (3000, jpy) →
// "3000". No symbol or grouping, so spreadsheets read it as a number.
func csvAmount(minor int64, currency string) string { return billing.FormatDecimal(minor, currency) }

// badRange answers an export whose range cannot be read.
func (s *Site) badRange(w http.ResponseWriter, r *http.Request, problem, back string) {
	s.errorPage(w, r, errorPage{Status: http.StatusBadRequest, Heading: "That range cannot be read",
		Message: problem, ActionURL: back, ActionLabel: "Go back"})
}

// historyCSVHeader names the credit history export's columns.
var historyCSVHeader = []string{"entry_id", "time", "type", "credits", "credit_kind", "grant_id", "grant_expires_at",
	"usage_id", "service", "service_name", "payment_id", "reason"}

// CreditsCSV serves GET /dashboard/credits/history.csv?from=&to=: every
// entry of the user's credit history in the range, oldest first.
func (s *Site) CreditsCSV() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		from, to, problem := exportRange(r)
		if problem != "" {
			s.badRange(w, r, problem, "/dashboard/credits")
			return
		}
		u := CurrentUser(r.Context())
		s.serveCSV(w, r, "credits-"+rangeName(from, to)+".csv", historyCSVHeader, func(e *csvExport) error {
			return s.store.ExportHistory(r.Context(), u.ID, from, to, func(x store.ExportEntry) error {
				return e.row(strconv.FormatInt(x.ID, 10), csvTime(&x.CreatedAt), x.Kind, strconv.FormatInt(x.Credits, 10),
					x.GrantKind, strconv.FormatInt(x.GrantID, 10), csvTime(x.GrantExpiresAt), csvID(x.UsageID),
					csvStr(x.ServiceSlug), csvStr(x.ServiceName), csvID(x.PaymentID), csvStr(x.Reason))
			})
		})
	})
}

// paymentsCSVHeader names the payments export's columns.
var paymentsCSVHeader = []string{"payment_id", "started_at", "paid_at", "status", "product", "pack", "plan",
	"period_start", "period_end", "credits", "amount", "currency", "refunded", "refunded_at", "credits_taken_back", "receipt_url"}

// PaymentsCSV serves GET /dashboard/payments.csv?from=&to=: the user's
// payments started in the range, whatever their status, oldest first.
func (s *Site) PaymentsCSV() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		from, to, problem := exportRange(r)
		if problem != "" {
			s.badRange(w, r, problem, "/dashboard/payments")
			return
		}
		u := CurrentUser(r.Context())
		s.serveCSV(w, r, "payments-"+rangeName(from, to)+".csv", paymentsCSVHeader, func(e *csvExport) error {
			return s.store.ExportPayments(r.Context(), u.ID, from, to, func(p store.Payment) error {
				receipt := ""
				if p.PaidAt != nil {
					receipt = s.absURL("/dashboard/payments/" + strconv.FormatInt(p.ID, 10) + "/receipt")
				}
				return e.row(strconv.FormatInt(p.ID, 10), csvTime(&p.CreatedAt), csvTime(p.PaidAt), p.Status, p.Product,
					csvStr(p.PackCode), csvStr(p.PlanCode), csvTime(p.PeriodStart), csvTime(p.PeriodEnd),
					strconv.FormatInt(p.Credits, 10), csvAmount(p.AmountMinor, p.Currency), p.Currency,
					csvAmount(p.AmountRefundedMinor, p.Currency), csvTime(p.RefundedAt), strconv.FormatInt(p.CreditsClawedBack, 10), receipt)
			})
		})
	})
}

// moneyCSVHeader names the accounting export's columns.
var moneyCSVHeader = []string{"type", "time", "payment_id", "refund_id", "user_id", "buyer_email", "product", "pack", "plan",
	"period_start", "period_end", "credits", "amount_minor", "amount", "currency", "stripe_payment_intent", "stripe_invoice"}

// AdminMoneyCSV serves GET /admin/payments.csv?from=&to=: every payment
// taken and refund made in the range, in time order, refunds negative.
func (s *Site) AdminMoneyCSV() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		from, to, problem := exportRange(r)
		if problem != "" {
			s.badRange(w, r, problem, "/admin/analytics")
			return
		}
		s.serveCSV(w, r, "payments-and-refunds-"+rangeName(from, to)+".csv", moneyCSVHeader, func(e *csvExport) error {
			return s.store.ExportMoney(r.Context(), from, to, func(m store.MoneyMovement) error {
				return e.row(m.Kind, csvTime(&m.At), strconv.FormatInt(m.PaymentID, 10), csvID(m.RefundID),
					strconv.FormatInt(m.UserID, 10), csvStr(m.BuyerEmail), m.Product, csvStr(m.PackCode), csvStr(m.PlanCode),
					csvTime(m.PeriodStart), csvTime(m.PeriodEnd), strconv.FormatInt(m.Credits, 10),
					strconv.FormatInt(m.AmountMinor, 10), csvAmount(m.AmountMinor, m.Currency), m.Currency,
					csvStr(m.PaymentIntentID), csvStr(m.InvoiceID))
			})
		})
	})
}
