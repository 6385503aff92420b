package main

import (
	"context"
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/PuerkitoBio/goquery"
	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"
	"github.com/stripe/stripe-go/v76"

	"github.com/quickscale/quickscale/store"
	"github.com/quickscale/quickscale/store/storetest"
)

// /admin/webhooks: what happened to each Stripe event, seen by an admin.

// whAdmin signs a new admin in.
func whAdmin(t *testing.T, ta *testApp) (store.User, *browser) {
	t.Helper()
	admin := storetest.NewUser(t, ta.store, storetest.UserOpts{Admin: true})
	return admin, whLogin(t, ta, admin.Email)
}

// whEvents are one applied, one ignored and one failed event, processed.
type whEvents struct {
	purchase                  whPurchase
	applied, ignored, failed  string
	appliedType               string
	failedDetailContains      string
	appliedBody, ignoredBody  []byte
	failedBody                []byte
	appliedEvent, failedEvent store.StripeEvent
}

func whThreeOutcomes(t *testing.T, ta *testApp) whEvents {
	t.Helper()
	var e whEvents
	e.purchase = whBuy(t, ta)
	e.failed, e.failedBody = whEvent(t, stripe.EventTypeCheckoutSessionCompleted, whSession(t, e.purchase.SessionID, "paid", 1, e.purchase.Intent), time.Now())
	e.applied, e.appliedBody = e.purchase.completed(t, "paid")
	e.ignored, e.ignoredBody = whUnknownEvent(t)
	e.appliedType, e.failedDetailContains = "checkout.session.completed", "does not match"
	for _, b := range [][]byte{e.failedBody, e.appliedBody, e.ignoredBody} {
		whMustDeliver(t, ta, b)
	}
	e.failedEvent = whRequireOutcome(t, ta, e.failed, store.OutcomeFailed)
	e.appliedEvent = whRequireOutcome(t, ta, e.applied, store.OutcomeApplied)
	whRequireOutcome(t, ta, e.ignored, store.OutcomeIgnored)
	return e
}

// whListed returns the events listed on a page: id → outcome.
func whListed(t *testing.T, b *browser, path string) (map[string]string, *goquery.Document) {
	t.Helper()
	r := b.get(path)
	require.Equal(t, http.StatusOK, r.Status, tail(r.Body, 20))
	doc := r.Doc(t)
	got := map[string]string{}
	doc.Find("#events tr.event").Each(func(_ int, s *goquery.Selection) {
		got[s.AttrOr("data-id", "")] = s.AttrOr("data-outcome", "")
	})
	return got, doc
}

func TestAdminWebhooksListsEveryEventWithItsOutcome(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{})
	e := whThreeOutcomes(t, ta)
	_, b := whAdmin(t, ta)

	got, doc := whListed(t, b, "/admin/webhooks")

	want := map[string]string{e.applied: "applied", e.ignored: "ignored", e.failed: "failed"}
	require.Equal(t, want, got)
	failedRow := doc.Find(`#events tr.event[data-id="` + e.failed + `"]`)
	require.Contains(t, failedRow.Text(), e.failedDetailContains, "the failure reason is shown")
	require.Equal(t, "/admin/webhooks/"+e.failed, failedRow.Find("a").AttrOr("href", ""))
}

func TestAdminWebhooksFilterByType(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{})
	e := whThreeOutcomes(t, ta)
	_, b := whAdmin(t, ta)

	got, doc := whListed(t, b, "/admin/webhooks?type="+url.QueryEscape(e.appliedType))

	require.Equal(t, map[string]string{e.applied: "applied", e.failed: "failed"}, got)
	require.Equal(t, e.appliedType, doc.Find(`#webhook-filter select[name="type"] option[selected]`).AttrOr("value", ""))
}

func TestAdminWebhooksFilterByOutcome(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{})
	e := whThreeOutcomes(t, ta)
	_, b := whAdmin(t, ta)

	for outcome, id := range map[string]string{"applied": e.applied, "ignored": e.ignored, "failed": e.failed} {
		got, _ := whListed(t, b, "/admin/webhooks?outcome="+outcome)
		require.Equal(t, map[string]string{id: outcome}, got, "outcome filter %s", outcome)
	}
	_, doc := whListed(t, b, "/admin/webhooks?outcome=pending")
	require.Equal(t, 1, doc.Find("#no-events").Length(), "no event is pending")
	require.Contains(t, doc.Find("#no-events").Text(), "match this filter")
	// Past the last page (a cursor older than every event) is the end of
	// the list, not "no events received".
	_, doc = whListed(t, b, "/admin/webhooks?before_ts=1&before_id=evt_0")
	require.Contains(t, doc.Find("#no-events").Text(), "end of the list")
}

func TestAdminWebhookShowsOutcomeAndPayload(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{})
	e := whThreeOutcomes(t, ta)
	_, b := whAdmin(t, ta)

	r := b.get("/admin/webhooks/" + e.failed)

	require.Equal(t, http.StatusOK, r.Status)
	doc := r.Doc(t)
	require.Equal(t, "failed", doc.Find("#event").AttrOr("data-outcome", ""))
	require.Contains(t, doc.Find("#event").Text(), e.failedDetailContains)
	var shown, sent map[string]any
	require.NoError(t, json.Unmarshal([]byte(doc.Find("#payload").Text()), &shown), "the payload is shown as JSON")
	require.NoError(t, json.Unmarshal(e.failedBody, &sent))
	require.Equal(t, sent, shown)
}

func TestAdminWebhookOfUnknownEventIsNotFound(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{})
	_, b := whAdmin(t, ta)
	require.Equal(t, http.StatusNotFound, b.get("/admin/webhooks/evt_nothing").Status)
}

func TestAdminReprocessEnqueuesTheEventAgainAndIsAudited(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{})
	e := whThreeOutcomes(t, ta)
	admin, b := whAdmin(t, ta)
	page := b.get("/admin/webhooks/" + e.applied).Doc(t)
	form := page.Find("#reprocess").Closest("form")
	action, ok := form.Attr("action")
	require.True(t, ok, "the event page has a re-process form")
	require.Equal(t, "post", strings.ToLower(form.AttrOr("method", "")))

	appliedBefore := ta.metric("quickscale_webhook_events_processed_total", map[string]string{"outcome": store.OutcomeApplied})
	require.Positive(t, appliedBefore)
	r := b.post(action, url.Values{})

	mustRedirect(t, r, "/admin/webhooks/"+e.applied)
	require.Equal(t, 2, whEventJobs(t, ta, e.applied), "a second job for the event")
	eventually(t, 20*time.Second, "the event to be processed again", func() bool {
		ev, err := ta.store.StripeEventByID(context.Background(), e.applied)
		require.NoError(t, err)
		return ev.Attempts == e.appliedEvent.Attempts+1 && ev.ProcessedAt != nil && ev.ProcessedAt.After(*e.appliedEvent.ProcessedAt)
	})
	var actor int64
	var details map[string]any
	require.NoError(t, ta.store.Pool().QueryRow(context.Background(),
		`SELECT actor_user_id, details FROM audit_log WHERE action = 'webhook.reprocess'`).Scan(&actor, &details))
	require.Equal(t, admin.ID, actor)
	require.Equal(t, e.applied, details["event_id"])
	// Processing is idempotent: nothing was granted twice, and the event,
	// applied again, is not counted as applied twice.
	require.Equal(t, e.purchase.Credits, whBalance(t, ta, e.purchase.User.ID))
	require.Equal(t, appliedBefore, ta.metric("quickscale_webhook_events_processed_total", map[string]string{"outcome": store.OutcomeApplied}))
	require.Equal(t, 1, whGrantsOf(t, ta, e.purchase.SessionID))
	whNoViolations(t, ta)
	// The record keeps what moved the money, and adds what this found.
	detail := b.get("/admin/webhooks/" + e.applied).Doc(t).Find("#outcome-detail").Text()
	require.Contains(t, detail, whDetail(e.appliedEvent), "the first outcome is gone")
	require.Contains(t, detail, "processed again: applied, already fulfilled")
}

// A double or triple click on Re-process queues one job and writes one
// audit entry while that job waits.
func TestAdminReprocessTwiceQueuesOnce(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{NoWorkers: true})
	id, body := whUnknownEvent(t)
	whMustDeliver(t, ta, body)
	require.Equal(t, 1, whEventJobs(t, ta, id), "the delivery's job")
	_, b := whAdmin(t, ta)
	for range 3 {
		mustRedirect(t, b.post("/admin/webhooks/"+id+"/reprocess", url.Values{}), "/admin/webhooks/"+id)
	}
	require.Equal(t, 2, whEventJobs(t, ta, id), "one re-process job")
	require.Equal(t, 1, whCount(t, ta, `SELECT count(*) FROM audit_log WHERE action = 'webhook.reprocess'`))
	require.Contains(t, b.get("/admin/webhooks/"+id).Body, "already queued")
}

// Actions that name no user (a re-processed event, River UI) are in the
// whole audit log at /admin/audit, filterable by action and paged.
func TestAdminAuditLogListsEveryActionAndFilters(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	ta := newTestApp(t, testAppOpts{NoWorkers: true})
	id, body := whUnknownEvent(t)
	whMustDeliver(t, ta, body)
	admin, b := whAdmin(t, ta)
	mustRedirect(t, b.post("/admin/webhooks/"+id+"/reprocess", url.Values{}), "/admin/webhooks/"+id)
	for i := range 55 {
		require.NoError(t, ta.store.InTx(ctx, func(tx pgx.Tx) error {
			return store.Audit(ctx, tx, &admin.ID, "test.filler", nil, map[string]any{"n": i})
		}))
	}

	doc := b.get("/admin/audit").Doc(t)
	require.Equal(t, 50, doc.Find("#audit tr.audit-entry").Length())
	older, ok := doc.Find("#audit-older").Attr("href")
	require.True(t, ok)
	doc = b.get(older).Doc(t)
	require.Equal(t, 6, doc.Find("#audit tr.audit-entry").Length(), "55 fillers and the re-process")
	require.Equal(t, 1, doc.Find(`#audit tr.audit-entry[data-action="webhook.reprocess"]`).Length())
	newer, ok := doc.Find("#audit-newer").Attr("href")
	require.True(t, ok, "a link to newer entries")
	require.Contains(t, newer, "after=")
	require.Equal(t, "/admin/audit?action=", doc.Find("#audit-newest").AttrOr("href", ""))
	back := b.get(newer).Doc(t)
	require.Equal(t, 50, back.Find("#audit tr.audit-entry").Length(), "Newer from the last page is the first")
	require.Zero(t, back.Find("#audit-newer").Length())

	doc = b.get("/admin/audit?action=webhook.reprocess").Doc(t)
	rows := doc.Find("#audit tr.audit-entry")
	require.Equal(t, 1, rows.Length())
	require.Contains(t, rows.Text(), id)
	require.Contains(t, rows.Text(), admin.Email)
	require.Contains(t, b.get("/admin/audit?action=nothing.like.this").Doc(t).Find("#audit-empty").Text(), "Nothing recorded")

	_, member := acctNewUserSignedIn(ta, storetest.UserOpts{})
	require.Equal(t, http.StatusForbidden, member.get("/admin/audit").Status)
}

func TestAdminWebhooksAreForbiddenToOtherUsers(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{})
	id, body := whUnknownEvent(t)
	whMustDeliver(t, ta, body)
	whWaitOutcome(t, ta, id)
	u := storetest.NewUser(t, ta.store, storetest.UserOpts{})
	b := whLogin(t, ta, u.Email)

	require.Equal(t, http.StatusForbidden, b.get("/admin/webhooks").Status)
	require.Equal(t, http.StatusForbidden, b.get("/admin/webhooks/"+id).Status)
	require.Equal(t, http.StatusForbidden, b.post("/admin/webhooks/"+id+"/reprocess", url.Values{}).Status)
	require.Equal(t, 1, whEventJobs(t, ta, id), "nothing was enqueued")
	require.Zero(t, whCount(t, ta, `SELECT count(*) FROM audit_log WHERE action = 'webhook.reprocess'`))
}

func TestAdminWebhooksPagesOlderEventsWithoutGapsOrDuplicates(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{NoWorkers: true})
	want := map[string]string{}
	for i := 0; i < 57; i++ {
		id, body := whUnknownEvent(t)
		whMustDeliver(t, ta, body)
		want[id] = "pending"
	}
	_, b := whAdmin(t, ta)

	got := map[string]string{}
	path, pages := "/admin/webhooks?outcome=pending", 0
	for path != "" {
		pages++
		require.LessOrEqual(t, pages, 3, "pagination does not end")
		listed, doc := whListed(t, b, path)
		for id, outcome := range listed {
			_, dup := got[id]
			require.False(t, dup, "event %s listed twice", id)
			got[id] = outcome
		}
		if pages > 1 {
			require.Equal(t, "/admin/webhooks?outcome=pending&type=", doc.Find("#events-newest").AttrOr("href", ""), "an older page links to the newest, with its filter")
		} else {
			require.Zero(t, doc.Find("#events-newest").Length())
		}
		path = doc.Find("#events-next").AttrOr("href", "")
		if path == "" {
			// Newer from the last page: the newest page again (no more
			// than a page is above it), with its filter.
			newer, ok := doc.Find("#events-newer").Attr("href")
			require.True(t, ok, "a link to newer events")
			require.Contains(t, newer, "outcome=pending")
			first, _ := whListed(t, b, "/admin/webhooks?outcome=pending")
			back, backDoc := whListed(t, b, newer)
			require.Equal(t, first, back)
			require.Zero(t, backDoc.Find("#events-newer").Length())
		}
	}
	require.Equal(t, 2, pages)
	require.Equal(t, want, got)
}
