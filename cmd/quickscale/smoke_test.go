package main

import (
	"net/http"
	"strings"
	"testing"
	"time"
)

func TestSignUpVerifySignInReachesDashboard(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{})
	b := ta.signUpVerified("smoke@example.com")
	r := b.get("/dashboard")
	if r.Status != http.StatusOK {
		t.Fatalf("dashboard: %d", r.Status)
	}
	doc := r.Doc(t)
	if got := doc.Find("#account-email").Text(); got != "smoke@example.com" {
		t.Fatalf("dashboard shows %q", got)
	}
	if got := doc.Find("#verification-state").Text(); got != "Email confirmed" {
		t.Fatalf("verification state %q", got)
	}
}

func TestBuyPackThroughSimulatorGrantsCredits(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{})
	b := ta.signUpVerified("buyer@example.com")
	r := b.post("/dashboard/buy-credits", map[string][]string{"pack": {"pack_500"}, "nonce": {"n1"}})
	loc := mustRedirect(t, r, ta.URL+"/simulator/checkout/")
	r = b.get(loc)
	if r.Status != http.StatusOK {
		t.Fatalf("simulator page: %d", r.Status)
	}
	r = b.post(loc[len(ta.URL):], map[string][]string{"action": {"pay"}})
	success := mustRedirect(t, r, "/dashboard/buy-credits/success?session_id=cs_sim_")
	ta.waitJob("stripe_event", 10*time.Second)
	eventually(t, 10*time.Second, "credits", func() bool {
		doc := b.get(success).Doc(t)
		return doc.Find("#checkout-status").AttrOr("data-state", "") == "succeeded"
	})
	doc := b.get("/dashboard/credits").Doc(t)
	if got := doc.Find("#balance-total").Text(); got != "500" {
		t.Fatalf("balance %q", got)
	}
	doc = b.get("/dashboard/payments").Doc(t)
	if got := doc.Find("tr.payment").AttrOr("data-status", ""); got != "succeeded" {
		t.Fatalf("payment status %q", got)
	}
	if got := doc.Find("tr.payment .paid-at").Text(); !strings.HasPrefix(got, "paid ") {
		t.Fatalf("no time of payment on the payments page: %q", got)
	}
}
