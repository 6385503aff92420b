package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"
	"github.com/chromedp/chromedp/kb"
	"github.com/stretchr/testify/require"

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

func css(s string) chromedp.CSS { return chromedp.CSS(s) }

// browserContext starts headless Chromium for the test. Every page it
// opens records in window.cspBlocked what its Content Security Policy
// blocked.
func browserContext(t *testing.T, bin string) context.Context {
	t.Helper()
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(bin), chromedp.NoSandbox, chromedp.Headless, chromedp.DisableGPU,
		chromedp.Flag("disable-background-networking", true), chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true), chromedp.Flag("no-first-run", true), chromedp.Flag("disable-quic", true),
		chromedp.UserDataDir(t.TempDir()))
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	t.Cleanup(cancelAlloc)
	ctx, cancel := chromedp.NewContext(actx)
	t.Cleanup(cancel)
	err := chromedp.Do(ctx, chromedp.Func(func(ctx context.Context, target *chromedp.Target) error {
		_, err := cdp.Call(ctx, target, page.AddScriptToEvaluateOnNewDocument, page.AddScriptToEvaluateOnNewDocumentParams{
			Source: `window.cspBlocked = [];
document.addEventListener("securitypolicyviolation", function (e) { window.cspBlocked.push(e.violatedDirective + " " + e.blockedURI); });`,
		})
		return err
	}))
	if err != nil {
		t.Fatalf("start the browser: %v", err)
	}
	// The timeout applies after the browser started (chromedp.Run's rule).
	ctx, cancelTimeout := context.WithTimeout(ctx, 90*time.Second)
	t.Cleanup(cancelTimeout)
	return ctx
}

// browserSignIn signs email in through the login form, as a person would.
func browserSignIn(baseURL, email string) chromedp.Action[chromedp.Void] {
	return chromedp.Steps(
		chromedp.Navigate(baseURL+"/login"),
		chromedp.WaitVisible(css(`#login-form`)),
		chromedp.SendKeys(css(`#f-email`), email),
		chromedp.SendKeys(css(`#f-password`), storetest.DefaultPassword),
		chromedp.Submit(css(`#login-form`)),
		chromedp.WaitVisible(css(`#account-email`)),
	)
}

// cspBlocked returns what the open page's Content Security Policy blocked.
func cspBlocked(t *testing.T, ctx context.Context) []string {
	t.Helper()
	blocked, err := chromedp.Run(ctx, chromedp.Evaluate[[]string](`window.cspBlocked`))
	if err != nil {
		t.Fatal(err)
	}
	return blocked
}

// River UI (an admin page of ours, a single-page app of River's) runs
// under the site's Content Security Policy: it renders, and nothing of it
// is blocked.
func TestBrowserRiverUIRunsUnderTheSiteCSP(t *testing.T) {
	t.Parallel()
	bin := chromium(t)
	bu := setupRiverUI(t)
	ctx := browserContext(t, bin)
	err := chromedp.Do(ctx,
		browserSignIn(bu.ta.URL, bu.adminEmail),
		chromedp.Navigate(bu.ta.URL+"/admin/river/jobs?state=available"),
	)
	if err != nil {
		t.Fatalf("open River UI: %v", err)
	}
	// The app renders the waiting job's kind once its scripts ran.
	if _, err := chromedp.Run(ctx, chromedp.Poll[bool](`document.body.innerText.includes("send_email")`)); err != nil {
		t.Fatalf("River UI did not render the waiting job: %v (blocked: %q)", err, cspBlocked(t, ctx))
	}
	if blocked := cspBlocked(t, ctx); len(blocked) > 0 {
		t.Fatalf("blocked by the Content Security Policy in River UI: %q", blocked)
	}
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

	ctx := browserContext(t, bin)
	err := chromedp.Do(ctx,
		browserSignIn(ta.URL, u.Email),

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
	// (Once the form has cooled down: a click within a second of an
	// answer is taken for the second click of a double click.)
	cooled := chromedp.Poll[chromedp.Void](`!document.getElementById("use-form-render").hasAttribute("data-cooling")`)
	err = chromedp.Do(ctx,
		cooled,
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
		cooled,
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

	// The dev mailbox shows a mail's text on demand (Alpine, CSP build).
	err = chromedp.Do(ctx,
		chromedp.Navigate(ta.URL+"/dev/mailbox"),
		chromedp.WaitVisible(css(`.mail .mail-toggle`)),
		chromedp.WaitNotVisible(css(`.mail .mail-text`)),
		chromedp.Click(css(`.mail .mail-toggle`)),
		chromedp.WaitVisible(css(`.mail .mail-text`)),
	)
	if err != nil {
		t.Fatalf("show a mail in the dev mailbox: %v", err)
	}
	if label, err := chromedp.Run(ctx, chromedp.Text(css(`.mail .mail-toggle`))); err != nil || strings.TrimSpace(label) != "Hide" {
		t.Fatalf("the open mail's button says %q (%v), want Hide", label, err)
	}

	// On a phone the menu opens with the burger (Alpine, CSP build), and
	// nothing on the way was blocked by the Content Security Policy.
	err = chromedp.Do(ctx,
		chromedp.EmulateViewport(375, 800),
		chromedp.Navigate(ta.URL+"/services"),
		chromedp.WaitVisible(css(`.navbar-burger`)),
		chromedp.WaitNotVisible(css(`#nav-menu`)),
		chromedp.Click(css(`.navbar-burger`)),
		chromedp.WaitVisible(css(`#nav-menu.is-active`)),
	)
	if err != nil {
		t.Fatalf("open the menu on a phone: %v", err)
	}
	expanded, err := chromedp.Run(ctx, chromedp.AttributeValue(css(`.navbar-burger`), "aria-expanded"))
	if err != nil {
		t.Fatal(err)
	}
	// Escape closes it and gives the focus back to the burger.
	err = chromedp.Do(ctx,
		chromedp.KeyEvent(kb.Escape),
		chromedp.WaitNotVisible(css(`#nav-menu`)),
	)
	if err != nil {
		t.Fatalf("close the menu with Escape: %v", err)
	}
	if focused, err := chromedp.Run(ctx, chromedp.Evaluate[bool](`document.activeElement.classList.contains("navbar-burger")`)); err != nil || !focused {
		t.Fatalf("after Escape the focus is not on the burger (%v)", err)
	}
	blocked := cspBlocked(t, ctx)
	if expanded.Value != "true" || len(blocked) > 0 {
		t.Fatalf("menu open: aria-expanded %q; blocked by the Content Security Policy: %q", expanded.Value, blocked)
	}
}

// Back through more pages than htmx keeps (ten) shows whole pages: htmx
// fetches a page it no longer has with HX-Request, and the site used to
// answer with the bare content block, without the navbar and footer.
func TestBrowserBackThroughManyPagesKeepsTheLayout(t *testing.T) {
	t.Parallel()
	bin := chromium(t)
	ta := newTestApp(t, testAppOpts{NoWorkers: true})
	u := storetest.NewUser(t, ta.store, storetest.UserOpts{})
	for range 14 * 25 {
		storetest.NewGrant(t, ta.store, u.ID, storetest.GrantOpts{Amount: 1})
	}
	ctx := browserContext(t, bin)
	// The pages' scripts must not fail on a restored page either (app.js
	// read the swap target of a restore, which has none).
	var mu sync.Mutex
	var thrown []string
	require.NoError(t, chromedp.Listen(ctx, func(ev any) {
		if e, ok := ev.(*runtime.EventExceptionThrown); ok {
			mu.Lock()
			defer mu.Unlock()
			d := e.ExceptionDetails
			what := d.Text
			if d.Exception != nil {
				what += " " + d.Exception.Description
			}
			thrown = append(thrown, fmt.Sprintf("%s (%s:%d)", what, d.URL, d.LineNumber+1))
		}
	}))
	t.Cleanup(func() {
		mu.Lock()
		defer mu.Unlock()
		if len(thrown) > 0 {
			t.Errorf("the page threw %d JavaScript exceptions, the first: %s", len(thrown), thrown[0])
		}
	})
	err := chromedp.Do(ctx,
		browserSignIn(ta.URL, u.Email),
		chromedp.Navigate(ta.URL+"/dashboard/credits"),
		chromedp.WaitVisible(css(`#history-older`)),
	)
	if err != nil {
		t.Fatalf("open the credits page: %v", err)
	}
	// Each page is told apart by its Older link; follow it 12 times.
	older := func() string {
		href, err := chromedp.Run(ctx, chromedp.Evaluate[string](`document.getElementById("history-older").getAttribute("href")`))
		if err != nil {
			t.Fatal(err)
		}
		return href
	}
	var pages []string
	for range 12 {
		pages = append(pages, older())
		// Through htmx (a boosted link), once htmx has taken the link over.
		_, err := chromedp.Run(ctx, chromedp.Poll[bool](`document.getElementById("history-older")["htmx-internal-data"] !== undefined`))
		if err == nil {
			err = chromedp.Do(ctx, chromedp.Click(css(`#history-older`)))
		}
		if err == nil {
			_, err = chromedp.Run(ctx, chromedp.Poll[bool](fmt.Sprintf(`location.search === %q && document.getElementById("history-older").getAttribute("href") !== %q`,
				strings.TrimPrefix(pages[len(pages)-1], "/dashboard/credits"), pages[len(pages)-1])))
		}
		if err != nil {
			t.Fatalf("page %d: %v", len(pages), err)
		}
	}
	for i := len(pages) - 1; i >= 0; i-- {
		err := chromedp.Do(ctx, chromedp.NavigateBack())
		if err == nil {
			_, err = chromedp.Run(ctx, chromedp.Poll[bool](fmt.Sprintf(`document.getElementById("history-older") !== null && document.getElementById("history-older").getAttribute("href") === %q`, pages[i])))
		}
		if err != nil {
			t.Fatalf("back to page %d: %v", i, err)
		}
		hasNav, err := chromedp.Run(ctx, chromedp.Evaluate[bool](`document.getElementById("nav-logout") !== null && document.querySelector("footer") !== null`))
		if err != nil {
			t.Fatal(err)
		}
		if !hasNav {
			t.Fatalf("back to page %d (of %d) shows the page without its layout", i, len(pages))
		}
	}
}

// Back to a page htmx no longer has cached, which now answers an error,
// shows that page's error: htmx swaps nothing on a failed restore, and the
// previous page's content stayed under the restored address.
func TestBrowserBackToAFailingPageShowsItsError(t *testing.T) {
	t.Parallel()
	bin := chromium(t)
	ta := newTestApp(t, testAppOpts{NoWorkers: true})
	u := storetest.NewUser(t, ta.store, storetest.UserOpts{})
	ctx := browserContext(t, bin)
	err := chromedp.Do(ctx,
		browserSignIn(ta.URL, u.Email),
		chromedp.Navigate(ta.URL+"/dashboard/credits"),
		chromedp.WaitVisible(css(`#balance-summary`)),
	)
	if err != nil {
		t.Fatalf("open the credits page: %v", err)
	}
	// Follow the navbar's Payments link through htmx (once htmx has taken
	// the link over), then make the credits page fail and forget it.
	payments := `document.querySelector('a.navbar-item[href="/dashboard/payments"]')`
	if _, err := chromedp.Run(ctx, chromedp.Poll[bool](payments+` !== null && `+payments+`["htmx-internal-data"] !== undefined`)); err != nil {
		t.Fatalf("htmx never took the link over: %v", err)
	}
	if _, err := chromedp.Run(ctx, chromedp.Evaluate[bool](payments+`.click(); true`)); err != nil {
		t.Fatal(err)
	}
	if _, err := chromedp.Run(ctx, chromedp.Poll[bool](`location.pathname === "/dashboard/payments" && document.querySelector('a.navbar-item[href="/dashboard/payments"][aria-current="page"]') !== null`)); err != nil {
		t.Fatalf("go to payments: %v", err)
	}
	_, err = ta.store.Pool().Exec(context.Background(), `ALTER TABLE ledger_entries RENAME TO ledger_entries_gone`)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := chromedp.Run(ctx, chromedp.Evaluate[bool](`sessionStorage.removeItem("htmx-history-cache"); true`)); err != nil {
		t.Fatal(err)
	}
	if err := chromedp.Do(ctx, chromedp.NavigateBack()); err != nil {
		t.Fatal(err)
	}
	if err := pollAcrossLoads(ctx, 15*time.Second, `location.pathname === "/dashboard/credits" && document.getElementById("error-page") !== null`); err != nil {
		shown, _ := chromedp.Run(ctx, chromedp.Evaluate[string](`location.pathname + ": " + document.title`))
		t.Fatalf("back to the failing page shows %q, not its error page: %v", shown, err)
	}
}

// pollAcrossLoads polls expr until it is true, through page loads (a poll
// ends with an error when its page navigates away), for at most within.
func pollAcrossLoads(ctx context.Context, within time.Duration, expr string) error {
	wait, cancel := context.WithTimeout(ctx, within)
	defer cancel()
	for {
		_, err := chromedp.Run(wait, chromedp.Poll[bool](expr))
		if err == nil || wait.Err() != nil {
			return err
		}
	}
}
