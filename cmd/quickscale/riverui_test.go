package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/quickscale/quickscale/jobs"
	"github.com/quickscale/quickscale/store/storetest"
)

// riverUIBundle is a running site without workers (so that jobs stay
// available), one waiting job whose arguments hold a one-time link, and
// an admin and a regular user.
type riverUIBundle struct {
	ta          *testApp
	jobID       int64
	adminEmail  string
	memberEmail string
}

func setupRiverUI(t *testing.T) *riverUIBundle {
	t.Helper()
	ta := newTestApp(t, testAppOpts{NoWorkers: true})
	res, err := ta.app.river.Insert(context.Background(), jobs.SendEmail{
		Template: jobs.EmailResetPassword, To: "someone@example.com",
		Data: map[string]string{"Link": ta.URL + "/password/reset?token=secret-token"},
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	admin := storetest.NewUser(t, ta.store, storetest.UserOpts{Admin: true})
	member := storetest.NewUser(t, ta.store, storetest.UserOpts{})
	return &riverUIBundle{ta: ta, jobID: res.Job.ID, adminEmail: admin.Email, memberEmail: member.Email}
}

// signIn returns a browser signed in as email.
func (bu *riverUIBundle) signIn(t *testing.T, email string) *browser {
	t.Helper()
	b := bu.ta.browser()
	mustRedirect(t, b.post("/login", url.Values{"email": {email}, "password": {storetest.DefaultPassword}}), "/dashboard")
	return b
}

// apiPost sends a JSON request to River UI's API as the River UI page
// would (same origin).
func apiPost(b *browser, path, body string, header ...string) response {
	b.t.Helper()
	req, err := http.NewRequest(http.MethodPost, b.url(path), strings.NewReader(body))
	if err != nil {
		b.t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Origin", b.app.URL)
	req.Header.Set("Sec-Fetch-Site", "same-origin")
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	return b.do(req)
}

func (bu *riverUIBundle) jobState(t *testing.T) string {
	t.Helper()
	j, err := bu.ta.app.river.JobGet(context.Background(), bu.jobID)
	if err != nil {
		t.Fatal(err)
	}
	return string(j.State)
}

func (bu *riverUIBundle) cancelBody() string {
	return fmt.Sprintf(`{"ids":["%d"]}`, bu.jobID)
}

var riverUIPaths = []string{"/admin/river", "/admin/river/", "/admin/river/jobs", "/admin/river/api/jobs?state=available", "/admin/river/api/features", "/admin/river/api/queues"}

func TestRiverUISendsAnonymousVisitorsToSignIn(t *testing.T) {
	t.Parallel()
	bu := setupRiverUI(t)
	b := bu.ta.browser()
	for _, p := range riverUIPaths {
		loc := mustRedirect(t, b.get(p), "/login")
		if next, _ := url.Parse(loc); next.Query().Get("next") != p {
			t.Errorf("GET %s redirects to %s, want next=%s", p, loc, p)
		}
	}
	r := apiPost(b, "/admin/river/api/jobs/cancel", bu.cancelBody())
	mustRedirect(t, r, "/login")
	if got := bu.jobState(t); got != "available" {
		t.Fatalf("an anonymous POST changed the job to %s", got)
	}
}

func TestRiverUIForbidsSignedInNonAdmins(t *testing.T) {
	t.Parallel()
	bu := setupRiverUI(t)
	b := bu.signIn(t, bu.memberEmail)
	for _, p := range riverUIPaths {
		if r := b.get(p); r.Status != http.StatusForbidden {
			t.Errorf("GET %s as a regular user: %d, want 403", p, r.Status)
		}
	}
	if r := apiPost(b, "/admin/river/api/jobs/cancel", bu.cancelBody()); r.Status != http.StatusForbidden {
		t.Errorf("POST cancel as a regular user: %d, want 403", r.Status)
	}
	if got := bu.jobState(t); got != "available" {
		t.Fatalf("a regular user changed the job to %s", got)
	}
}

func TestRiverUIServesAdminsWithJobArgsHiddenByDefault(t *testing.T) {
	t.Parallel()
	bu := setupRiverUI(t)
	b := bu.signIn(t, bu.adminEmail)

	page := b.get("/admin/river/")
	if page.Status != http.StatusOK {
		t.Fatalf("GET /admin/river/ as admin: %d", page.Status)
	}
	// The single-page app is told where its API lives, under our prefix.
	if !strings.Contains(page.Body, "/admin/river/api") {
		t.Fatalf("River UI page does not point its API at /admin/river/api:\n%s", tail(page.Body, 20))
	}

	r := b.get("/admin/river/api/jobs?state=available")
	if r.Status != http.StatusOK {
		t.Fatalf("GET jobs as admin: %d %s", r.Status, r.Body)
	}
	var list struct {
		Data []struct {
			ID    int64  `json:"id"`
			Kind  string `json:"kind"`
			State string `json:"state"`
			Queue string `json:"queue"`
		} `json:"data"`
	}
	if err := json.Unmarshal([]byte(r.Body), &list); err != nil {
		t.Fatalf("decode job list: %v\n%s", err, r.Body)
	}
	found := false
	for _, j := range list.Data {
		if j.ID == bu.jobID {
			found = j.Kind == "send_email" && j.State == "available" && j.Queue == jobs.QueueEmail
		}
	}
	if !found {
		t.Fatalf("job %d (send_email, available, email) not in the list: %+v", bu.jobID, list.Data)
	}

	r = b.get("/admin/river/api/features")
	if r.Status != http.StatusOK {
		t.Fatalf("GET features as admin: %d %s", r.Status, r.Body)
	}
	var features struct {
		HideArgs *bool `json:"job_list_hide_args_by_default"`
	}
	if err := json.Unmarshal([]byte(r.Body), &features); err != nil {
		t.Fatalf("decode features: %v\n%s", err, r.Body)
	}
	if features.HideArgs == nil || !*features.HideArgs {
		t.Fatalf("River UI shows job args by default (features %s); they carry one-time links", r.Body)
	}
}

func TestRiverUIActionsNeedSameOriginAdmin(t *testing.T) {
	t.Parallel()
	bu := setupRiverUI(t)
	b := bu.signIn(t, bu.adminEmail)

	// A page on another site making the admin's browser post.
	r := apiPost(b, "/admin/river/api/jobs/cancel", bu.cancelBody(), "Origin", "https://evil.example", "Sec-Fetch-Site", "cross-site")
	if r.Status != http.StatusForbidden {
		t.Fatalf("cross-site POST cancel: %d, want 403", r.Status)
	}
	if got := bu.jobState(t); got != "available" {
		t.Fatalf("a cross-site POST changed the job to %s", got)
	}

	r = apiPost(b, "/admin/river/api/jobs/cancel", bu.cancelBody())
	if r.Status != http.StatusOK {
		t.Fatalf("same-origin POST cancel as admin: %d %s", r.Status, r.Body)
	}
	if got := bu.jobState(t); got != "cancelled" {
		t.Fatalf("job state %s after the admin cancelled it, want cancelled", got)
	}
	// The action is in the audit log, with the admin as actor; the refused
	// cross-site attempt is not.
	var n int
	if err := bu.ta.store.Pool().QueryRow(context.Background(), `SELECT count(*) FROM audit_log a JOIN users u ON u.id = a.actor_user_id
 WHERE a.action = 'riverui.post' AND a.details->>'path' = '/admin/river/api/jobs/cancel' AND u.email = $1
   AND a.details->'request'->'ids' ? $2`, bu.adminEmail, strconv.FormatInt(bu.jobID, 10)).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 1 {
		t.Fatalf("%d audit entries for the River UI cancel naming its job, want 1", n)
	}
}

// A River UI action whose body holds a NUL (which PostgreSQL's jsonb cannot
// store) is still audited; a path that is not text is a 400, not River
// UI's 500.
func TestRiverUIAuditsEveryActionAndRefusesPathsThatAreNotText(t *testing.T) {
	t.Parallel()
	bu := setupRiverUI(t)
	b := bu.signIn(t, bu.adminEmail)
	body := fmt.Sprintf(`{"ids":["%d"],"note":"a\u0000b"}`, bu.jobID)
	r := apiPost(b, "/admin/river/api/jobs/cancel", body)
	require.Equal(t, http.StatusOK, r.Status, r.Body)
	require.Equal(t, "cancelled", bu.jobState(t))
	var note string
	require.NoError(t, bu.ta.store.Pool().QueryRow(context.Background(), `SELECT details->'request'->>'note' FROM audit_log
 WHERE action = 'riverui.post' AND details->'request'->'ids' ? $1`, strconv.FormatInt(bu.jobID, 10)).Scan(&note))
	require.Equal(t, "a\ufffdb", note)

	for _, path := range []string{"/admin/river/api/queues/%00", "/admin/river/api/queues/%FF/pause", "/admin/river/api/workflows/%FF"} {
		r := b.get(path)
		require.Equal(t, http.StatusBadRequest, r.Status, "%s: %s", path, r.Body)
	}
}
