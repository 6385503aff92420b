package main

import (
	"context"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/quickscale/quickscale/store/storetest"
)

// chromium finds Debian's Chromium; the test fails (never skips) without it.
func chromium(t *testing.T) string {
	t.Helper()
	for _, c := range []string{os.Getenv("CHROMIUM_BIN"), "chromium", "chromium-browser", "google-chrome"} {
		if c == "" {
			continue
		}
		if p, err := exec.LookPath(c); err == nil {
			return p
		}
	}
	t.Fatal("a real browser is needed: install Debian's chromium (`make tools` does as root) or set CHROMIUM_BIN")
	return ""
}

// TestBrowserSpendsAndBuysWithHtmx drives headless Chromium through the
// htmx parts no HTTP-level test can see run: Use updates the result and the
// balance in place, and the checkout success page polls until the worker
// has added the credits.
func TestBrowserSpendsAndBuysWithHtmx(t *testing.T) {
	t.Parallel()
	bin := chromium(t)
	ta := newTestApp(t, testAppOpts{})
	storetest.NewService(t, ta.store, storetest.ServiceOpts{Slug: "render", Cost: 7})
	u := storetest.NewUser(t, ta.store, storetest.UserOpts{})
	storetest.NewGrant(t, ta.store, u.ID, storetest.GrantOpts{Amount: 20})

	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(bin), chromedp.NoSandbox, chromedp.Headless, chromedp.DisableGPU,
		chromedp.Flag("disable-background-networking", true), chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true), chromedp.Flag("no-first-run", true), chromedp.Flag("disable-quic", true),
		chromedp.UserDataDir(t.TempDir()))
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	defer cancelAlloc()
	ctx, cancel := chromedp.NewContext(actx)
	defer cancel()
	ctx, cancelTimeout := context.WithTimeout(ctx, 90*time.Second)
	defer cancelTimeout()

	css := func(s string) chromedp.CSS { return chromedp.CSS(s) }
	err := chromedp.Do(ctx,
		chromedp.Navigate(ta.URL+"/login"),
		chromedp.WaitVisible(css(`#login-form`)),
		chromedp.SendKeys(css(`#f-email`), u.Email),
		chromedp.SendKeys(css(`#f-password`), storetest.DefaultPassword),
		chromedp.Submit(css(`#login-form`)),
		chromedp.WaitVisible(css(`#account-email`)),

		// Spend: htmx swaps the result in and the balance out of band.
		chromedp.Navigate(ta.URL+"/services"),
		chromedp.WaitVisible(css(`#use-form-render button`)),
		chromedp.Click(css(`#use-form-render button`)),
		chromedp.WaitVisible(css(`#use-outcome`)),
	)
	if err != nil {
		t.Fatalf("spend in the browser: %v", err)
	}
	outcome, err := chromedp.Run(ctx, chromedp.AttributeValue(css(`#use-outcome`), "data-outcome"))
	if err != nil {
		t.Fatal(err)
	}
	balance, err := chromedp.Run(ctx, chromedp.Text(css(`#balance-total`)))
	if err != nil {
		t.Fatal(err)
	}
	if outcome.Value != "used" || strings.TrimSpace(balance) != "13" {
		t.Fatalf("after Use: outcome %q, balance %q; want used and 13", outcome.Value, balance)
	}

	// A refusal htmx does not swap in (here a form that lost its key: 400)
	// shows the server's message, not a generic one.
	err = chromedp.Do(ctx,
		chromedp.Evaluate[chromedp.Void](`document.getElementById("key-render").value = ""`),
		chromedp.Click(css(`#use-form-render button`)),
		chromedp.WaitVisible(css(`#htmx-error`)),
	)
	if err != nil {
		t.Fatalf("use without a key in the browser: %v", err)
	}
	refusal, err := chromedp.Run(ctx, chromedp.Text(css(`#htmx-error`)))
	if err != nil {
		t.Fatal(err)
	}
	if strings.TrimSpace(refusal) != "This form has lost its key; reload the page and try again." {
		t.Fatalf("the refusal says %q", refusal)
	}
	// The next request clears it. A service retired while the page was
	// open answers in place and takes its card off the page.
	storetest.NewService(t, ta.store, storetest.ServiceOpts{Slug: "render", Cost: 7, Inactive: true})
	err = chromedp.Do(ctx,
		chromedp.Evaluate[chromedp.Void](`document.getElementById("key-render").value = "a-fresh-key"`),
		chromedp.Click(css(`#use-form-render button`)),
		chromedp.WaitVisible(css(`#use-outcome[data-outcome="gone"]`)),
		chromedp.WaitNotVisible(css(`#htmx-error`)),
		chromedp.WaitVisible(css(`#no-services`)),
	)
	if err != nil {
		t.Fatalf("use a retired service in the browser: %v", err)
	}

	err = chromedp.Do(ctx,
		// Buy: the simulated checkout, then the success page polls.
		chromedp.Navigate(ta.URL+"/dashboard/buy-credits"),
		chromedp.WaitVisible(css(`[data-pack="pack_100"] button`)),
		chromedp.Click(css(`[data-pack="pack_100"] button`)),
		chromedp.WaitVisible(css(`#sim-pay`)),
		chromedp.Click(css(`#sim-pay`)),
		chromedp.WaitVisible(css(`#checkout-status[data-state="succeeded"]`)),
	)
	if err != nil {
		t.Fatalf("buy in the browser: %v", err)
	}
	credits, err := chromedp.Run(ctx, chromedp.Text(css(`#checkout-balance`)))
	if err != nil {
		t.Fatal(err)
	}
	if strings.TrimSpace(credits) != "113" {
		t.Fatalf("after paying: balance %q, want 113", credits)
	}
}
