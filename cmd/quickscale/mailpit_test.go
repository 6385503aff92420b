package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/PuerkitoBio/goquery"
	"github.com/riverqueue/river/rivertype"
	"github.com/stretchr/testify/require"

	"github.com/quickscale/quickscale/jobs"
	"github.com/quickscale/quickscale/store"
	"github.com/quickscale/quickscale/store/storetest"
	"github.com/quickscale/quickscale/web"
)

// acctMailpit is a real SMTP server (github.com/axllent/mailpit) run for
// one test, read through its HTTP API.
type acctMailpit struct {
	t       *testing.T
	SMTPURL string
	API     string
}

// acctMailpitBinary finds mailpit: MAILPIT_BIN, the repository's .bin
// (make tools), PATH, then $HOME/go/bin. A missing binary fails the test.
func acctMailpitBinary(t *testing.T) string {
	t.Helper()
	var tried []string
	if p := os.Getenv("MAILPIT_BIN"); p != "" {
		if _, err := os.Stat(p); err == nil {
			return p
		}
		tried = append(tried, p+" (MAILPIT_BIN)")
	}
	if root, err := filepath.Abs("../../.bin/mailpit"); err == nil {
		if _, err := os.Stat(root); err == nil {
			return root
		}
		tried = append(tried, root)
	}
	if p, err := exec.LookPath("mailpit"); err == nil {
		return p
	}
	tried = append(tried, "mailpit on PATH")
	if home, err := os.UserHomeDir(); err == nil {
		p := filepath.Join(home, "go", "bin", "mailpit")
		if _, err := os.Stat(p); err == nil {
			return p
		}
		tried = append(tried, p)
	}
	t.Fatalf("mailpit is needed for the SMTP tests but was not found (tried %s); run `make tools` or set MAILPIT_BIN", strings.Join(tried, ", "))
	return ""
}

func acctFreePort(t *testing.T) int {
	t.Helper()
	_, port, err := net.SplitHostPort(freeAddr(t))
	require.NoError(t, err)
	n, err := strconv.Atoi(port)
	require.NoError(t, err)
	return n
}

// acctStartMailpit runs mailpit on free local ports until the test ends.
func acctStartMailpit(t *testing.T, extra ...string) *acctMailpit {
	t.Helper()
	bin := acctMailpitBinary(t)
	var lastErr error
	// A port picked as free can be taken before mailpit binds it: retry.
	for attempt := 0; attempt < 3; attempt++ {
		smtpPort, httpPort := acctFreePort(t), acctFreePort(t)
		args := append([]string{
			"--smtp", fmt.Sprintf("127.0.0.1:%d", smtpPort),
			"--listen", fmt.Sprintf("127.0.0.1:%d", httpPort),
			"--database", filepath.Join(t.TempDir(), "mailpit.db"),
			"--disable-version-check", "--smtp-disable-rdns",
		}, extra...)
		cmd := exec.Command(bin, args...)
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		require.NoError(t, cmd.Start(), "start %s", bin)
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		mp := &acctMailpit{t: t, SMTPURL: fmt.Sprintf("smtp://127.0.0.1:%d", smtpPort), API: fmt.Sprintf("http://127.0.0.1:%d", httpPort)}
		ready, exitErr, gone := mp.waitReady(smtpPort, exited)
		if ready {
			t.Cleanup(func() {
				_ = cmd.Process.Kill()
				<-exited
			})
			return mp
		}
		if gone {
			lastErr = fmt.Errorf("mailpit exited (%v):\n%s", exitErr, out.String())
		} else {
			_ = cmd.Process.Kill()
			<-exited
			lastErr = fmt.Errorf("mailpit not ready within 15s:\n%s", out.String())
		}
		lastErr = fmt.Errorf("attempt %d: %w", attempt+1, lastErr)
	}
	t.Fatalf("could not start mailpit: %v", lastErr)
	return nil
}

// waitReady polls until mailpit answers on both ports. It gives up when
// the process exits (gone, with its exit error) or after 15 seconds.
func (mp *acctMailpit) waitReady(smtpPort int, exited <-chan error) (ready bool, exitErr error, gone bool) {
	deadline := time.NewTimer(15 * time.Second)
	defer deadline.Stop()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case err := <-exited:
			return false, err, true
		case <-deadline.C:
			return false, nil, false
		case <-tick.C:
		}
		resp, err := http.Get(mp.API + "/readyz")
		if err != nil {
			continue
		}
		resp.Body.Close()
		c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", smtpPort))
		if err == nil {
			c.Close()
			if resp.StatusCode == http.StatusOK {
				return true, nil, false
			}
		}
	}
}

type acctMailpitAddress struct {
	Name    string `json:"Name"`
	Address string `json:"Address"`
}

type acctMailpitSummary struct {
	ID      string               `json:"ID"`
	From    acctMailpitAddress   `json:"From"`
	To      []acctMailpitAddress `json:"To"`
	Subject string               `json:"Subject"`
}

type acctMailpitMessage struct {
	acctMailpitSummary
	ReplyTo []acctMailpitAddress `json:"ReplyTo"`
	Text    string               `json:"Text"`
	HTML    string               `json:"HTML"`
}

func (mp *acctMailpit) getJSON(path string, into any) {
	mp.t.Helper()
	resp, err := http.Get(mp.API + path)
	require.NoError(mp.t, err)
	defer resp.Body.Close()
	require.Equal(mp.t, http.StatusOK, resp.StatusCode, "mailpit %s", path)
	require.NoError(mp.t, json.NewDecoder(resp.Body).Decode(into), "mailpit %s", path)
}

// messages lists what mailpit received, newest first.
func (mp *acctMailpit) messages() []acctMailpitSummary {
	mp.t.Helper()
	var list struct {
		Total    int                  `json:"total"`
		Messages []acctMailpitSummary `json:"messages"`
	}
	mp.getJSON("/api/v1/messages", &list)
	return list.Messages
}

// waitMessage waits for a message to addr whose subject contains subject
// and returns it in full.
func (mp *acctMailpit) waitMessage(addr, subject string) acctMailpitMessage {
	mp.t.Helper()
	var id string
	eventually(mp.t, 30*time.Second, fmt.Sprintf("mailpit to receive %q for %s", subject, addr), func() bool {
		for _, m := range mp.messages() {
			for _, to := range m.To {
				if strings.EqualFold(to.Address, addr) && strings.Contains(m.Subject, subject) {
					id = m.ID
					return true
				}
			}
		}
		return false
	})
	var msg acctMailpitMessage
	mp.getJSON("/api/v1/message/"+id, &msg)
	return msg
}

// setChaos makes mailpit refuse every recipient with code (0: accept all).
func (mp *acctMailpit) setChaos(code int) {
	mp.t.Helper()
	probability := 100
	if code == 0 {
		code, probability = 451, 0
	}
	body := fmt.Sprintf(`{"Recipient":{"ErrorCode":%d,"Probability":%d}}`, code, probability)
	req, err := http.NewRequest(http.MethodPut, mp.API+"/api/v1/chaos", strings.NewReader(body))
	require.NoError(mp.t, err)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	require.NoError(mp.t, err)
	resp.Body.Close()
	require.Equal(mp.t, http.StatusOK, resp.StatusCode, "mailpit chaos")
}

// acctEmailJob is the only SendEmail job of the app.
func acctEmailJob(ta *testApp) *rivertype.JobRow {
	ta.t.Helper()
	rows := ta.jobRows(jobs.SendEmail{}.Kind())
	require.Len(ta.t, rows, 1, "send_email jobs")
	return rows[0]
}

func TestSignupConfirmationArrivesOverSMTPAndItsLinkVerifies(t *testing.T) {
	t.Parallel()
	mp := acctStartMailpit(t)
	ta := newTestApp(t, testAppOpts{Env: map[string]string{"SMTP_URL": mp.SMTPURL, "MAIL_FROM": "QuickScale <hello@quickscale.example>"}})
	b := ta.browser()
	acctRequireStatus(t, acctSignup(b, "smtp.user@example.com", storetest.DefaultPassword), http.StatusOK)

	msg := mp.waitMessage("smtp.user@example.com", "Confirm your email address")

	require.Equal(t, "hello@quickscale.example", msg.From.Address)
	require.Equal(t, "QuickScale", msg.From.Name)
	link := linkIn(t, msg.Text, "/verify?token=")
	html, err := goquery.NewDocumentFromReader(strings.NewReader(msg.HTML))
	require.NoError(t, err)
	require.Equal(t, link, html.Find(`a[href*="/verify?token="]`).AttrOr("href", ""), "the HTML and text parts link differently")
	page := b.get(link)
	acctRequireStatus(t, page, http.StatusOK)
	form := page.Doc(t).Find("#verify-form")
	mustRedirect(t, b.post(form.AttrOr("action", ""), url.Values{"token": {form.Find(`input[name="token"]`).AttrOr("value", "")}}), "/login")
	mustRedirect(t, acctLogin(b, "smtp.user@example.com", storetest.DefaultPassword), "/dashboard")
	require.Equal(t, "Email confirmed", acctText(b.get("/dashboard").Doc(t), "#verification-state"))
	require.Empty(t, ta.mailbox(), "with SMTP_URL set, mail also went to the dev mailbox")
}

func TestEmailIsRetriedWithBackoffWhileSMTPRefusesTemporarily(t *testing.T) {
	t.Parallel()
	mp := acctStartMailpit(t, "--enable-chaos")
	mp.setChaos(451)
	ta := newTestApp(t, testAppOpts{Env: map[string]string{"SMTP_URL": mp.SMTPURL}})
	acctRequireStatus(t, acctSignup(ta.browser(), "patient@example.com", storetest.DefaultPassword), http.StatusOK)

	var failed *rivertype.JobRow
	eventually(t, 30*time.Second, "a failed delivery attempt", func() bool {
		failed = acctEmailJob(ta)
		return len(failed.Errors) > 0
	})
	require.Contains(t, failed.Errors[0].Error, "451")
	require.NotEqual(t, rivertype.JobStateCancelled, failed.State, "a temporary refusal ended the job")
	require.NotEqual(t, rivertype.JobStateDiscarded, failed.State, "a temporary refusal ended the job")
	require.Greater(t, failed.MaxAttempts, 1)
	if failed.State == rivertype.JobStateRetryable {
		require.True(t, failed.ScheduledAt.After(*failed.AttemptedAt), "retry not scheduled after a backoff")
	}

	mp.setChaos(0)

	mp.waitMessage("patient@example.com", "Confirm your email address")
	eventually(t, 15*time.Second, "the job to complete", func() bool {
		return acctEmailJob(ta).State == rivertype.JobStateCompleted
	})
	require.GreaterOrEqual(t, acctEmailJob(ta).Attempt, 2)
}

func TestEmailRefusedPermanentlyEndsVisiblyWithoutRetries(t *testing.T) {
	t.Parallel()
	mp := acctStartMailpit(t, "--enable-chaos")
	mp.setChaos(550)
	ta := newTestApp(t, testAppOpts{Env: map[string]string{"SMTP_URL": mp.SMTPURL}})
	acctRequireStatus(t, acctSignup(ta.browser(), "bounce@example.com", storetest.DefaultPassword), http.StatusOK)

	var job *rivertype.JobRow
	eventually(t, 30*time.Second, "the email job to end", func() bool {
		job = acctEmailJob(ta)
		return job.FinalizedAt != nil
	})

	require.Equal(t, rivertype.JobStateCancelled, job.State)
	require.Equal(t, 1, job.Attempt, "a permanent refusal was retried")
	require.NotEmpty(t, job.Errors)
	require.Contains(t, job.Errors[len(job.Errors)-1].Error, "550")
	require.Contains(t, ta.logs.String(), "email refused permanently")
	require.Empty(t, mp.messages())
}

func TestDevMailboxListsStoredMailAsHTMLAndJSON(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{})
	require.NoError(t, ta.store.DeliverToMailbox(t.Context(), store.Mail{To: "reader@example.com", Subject: "Hello there", Text: "Body text", HTML: "<p>Body</p>"}))

	page := ta.browser().get("/dev/mailbox")
	var mails []store.Mail
	resp, err := http.Get(ta.URL + "/dev/mailbox.json")
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Contains(t, resp.Header.Get("Content-Type"), "application/json")
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&mails))

	acctRequireStatus(t, page, http.StatusOK)
	doc := page.Doc(t)
	require.Equal(t, 1, doc.Find(".mail").Length())
	require.Equal(t, "Hello there", acctText(doc, ".mail strong"))
	require.Equal(t, "Body text", acctText(doc, ".mail .mail-text"))
	require.Len(t, mails, 1)
	require.Equal(t, "reader@example.com", mails[0].To)
	require.Equal(t, "Hello there", mails[0].Subject)
	require.Equal(t, "Body text", mails[0].Text)
}

func TestDevMailboxIsEmptyStateWhenNoMail(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{NoWorkers: true})

	doc := ta.browser().get("/dev/mailbox").Doc(t)

	require.Equal(t, 1, doc.Find("#mailbox-empty").Length())
	require.Empty(t, ta.mailbox())
}

func TestDevMailboxIsOffOutsideDev(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{Mode: "api"})

	for _, path := range []string{"/dev/mailbox", "/dev/mailbox.json"} {
		acctErrorPage(t, ta.browser().get(path), http.StatusNotFound)
	}
}

func TestEmailsHaveMatchingTextAndHTMLParts(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{})
	acctSignup(ta.browser(), "parts@example.com", storetest.DefaultPassword)

	mail := ta.waitMail("parts@example.com", "Confirm your email")

	link := linkIn(t, mail.Text, "/verify?token=")
	doc, err := goquery.NewDocumentFromReader(strings.NewReader(mail.HTML))
	require.NoError(t, err)
	require.Equal(t, link, doc.Find(`a[href*="/verify?token="]`).AttrOr("href", ""))
	require.Equal(t, "Confirm my email", acctText(doc, `a[href*="/verify?token="]`))
}

// The "done when", as a new user would do it, with every email
// read from a real SMTP server.
func TestNewUserJourneyOverSMTP(t *testing.T) {
	t.Parallel()
	mp := acctStartMailpit(t)
	ta := newTestApp(t, testAppOpts{Env: map[string]string{"SMTP_URL": mp.SMTPURL}})
	const email = "journey@example.com"
	b := ta.browser()

	// Sign up, unverified: the dashboard asks for confirmation and buying is refused.
	acctRequireStatus(t, acctSignup(b, email, storetest.DefaultPassword), http.StatusOK)
	mustRedirect(t, acctLogin(b, email, storetest.DefaultPassword), "/dashboard")
	require.Equal(t, 1, b.get("/dashboard").Doc(t).Find("#verify-banner").Length())
	acctErrorPage(t, b.post("/dashboard/buy-credits", url.Values{"pack": {"pack_500"}, "nonce": {"j1"}}), http.StatusForbidden)

	// Confirm through the emailed link.
	verify := linkIn(t, mp.waitMessage(email, "Confirm your email address").Text, "/verify?token=")
	form := b.get(verify).Doc(t).Find("#verify-form")
	mustRedirect(t, b.post(form.AttrOr("action", ""), url.Values{"token": {form.Find(`input[name="token"]`).AttrOr("value", "")}}), "/dashboard")
	require.Equal(t, "Email confirmed", acctText(b.get("/dashboard").Doc(t), "#verification-state"))

	// Sign out and in again.
	mustRedirect(t, b.post("/logout", nil), "/")
	require.False(t, acctSignedIn(b))
	mustRedirect(t, acctLogin(b, email, storetest.DefaultPassword), "/dashboard")

	// Change the password.
	mustRedirect(t, b.post("/settings/password", url.Values{"current_password": {storetest.DefaultPassword}, "new_password": {acctNewPassword}}), "/settings")
	mp.waitMessage(email, "Your QuickScale password was changed")
	mustRedirect(t, b.post("/logout", nil), "/")

	// Forget it, and reset it through the emailed link.
	acctRequireStatus(t, b.post("/password/forgot", url.Values{"email": {email}}), http.StatusOK)
	reset := linkIn(t, mp.waitMessage(email, "Reset your QuickScale password").Text, "/password/reset?token=")
	token := b.get(reset).Doc(t).Find(`#reset-form input[name="token"]`).AttrOr("value", "")
	loc := mustRedirect(t, b.post("/password/reset", url.Values{"token": {token}, "new_password": {"the third password"}}), "/login")
	require.Equal(t, 1, b.get(loc).Doc(t).Find("#reset-notice").Length())
	acctRequireStatus(t, acctLogin(b, email, acctNewPassword), http.StatusUnprocessableEntity)
	mustRedirect(t, acctLogin(b, email, "the third password"), "/dashboard")
}

// The dev mailbox pages through every mail, not only the newest 100: after
// a burst, an older confirmation link is still reachable.
func TestDevMailboxPagesThroughEveryMail(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{NoWorkers: true})
	for i := range web.MailboxPageSize + 5 {
		require.NoError(t, ta.store.DeliverToMailbox(t.Context(), store.Mail{To: "burst@example.com", Subject: fmt.Sprintf("Mail %d", i), Text: "x", HTML: "<p>x</p>"}))
	}
	b := ta.browser()
	doc := b.get("/dev/mailbox").Doc(t)
	require.Equal(t, web.MailboxPageSize, doc.Find(".mail").Length())
	require.Equal(t, fmt.Sprintf("Mail %d", web.MailboxPageSize+4), doc.Find(".mail strong").First().Text())
	older, ok := doc.Find("#mailbox-older").Attr("href")
	require.True(t, ok, "a link to the older mail")
	doc = b.get(older).Doc(t)
	subjects := doc.Find(".mail strong").Map(func(_ int, s *goquery.Selection) string { return s.Text() })
	require.Equal(t, []string{"Mail 4", "Mail 3", "Mail 2", "Mail 1", "Mail 0"}, subjects)
	require.Zero(t, doc.Find("#mailbox-older").Length())
	require.Equal(t, "/dev/mailbox", doc.Find(`nav[aria-label="mailbox pages"] #mailbox-newest`).AttrOr("href", ""))
	// Newer from the last page: the newest page again.
	newer, ok := doc.Find("#mailbox-newer").Attr("href")
	require.True(t, ok, "a link to newer mail")
	back := b.get(newer).Doc(t)
	require.Equal(t, web.MailboxPageSize, back.Find(".mail").Length())
	require.Equal(t, fmt.Sprintf("Mail %d", web.MailboxPageSize+4), back.Find(".mail strong").First().Text())
	require.Zero(t, back.Find("#mailbox-newer").Length())

	getJSON := func(path string) (int, []store.Mail, string) {
		resp, err := http.Get(ta.URL + path)
		require.NoError(t, err)
		defer resp.Body.Close()
		var mails []store.Mail
		if resp.StatusCode == http.StatusOK {
			require.NoError(t, json.NewDecoder(resp.Body).Decode(&mails))
		}
		return resp.StatusCode, mails, resp.Header.Get("Link")
	}
	code, mails, link := getJSON("/dev/mailbox.json")
	require.Equal(t, http.StatusOK, code)
	require.Len(t, mails, web.MailboxPageSize)
	next, ok := strings.CutPrefix(link, "<")
	require.True(t, ok, "Link: %q", link)
	next, _, _ = strings.Cut(next, ">")
	code, mails, link = getJSON(next)
	require.Equal(t, http.StatusOK, code)
	require.Len(t, mails, 5)
	require.Empty(t, link)
	for _, bad := range []string{"abc", "0", "-3", "99999999999999999999"} {
		code, _, _ = getJSON("/dev/mailbox.json?cursor=" + bad)
		require.Equal(t, http.StatusBadRequest, code, bad)
	}
}

// The contact form's email goes to the operator from the site's address,
// with the sender as Reply-To, so that Reply answers them.
func TestContactFormRepliesGoToTheSender(t *testing.T) {
	t.Parallel()
	mp := acctStartMailpit(t)
	ta := newTestApp(t, testAppOpts{Env: map[string]string{"SMTP_URL": mp.SMTPURL, "MAIL_FROM": "QuickScale <no-reply@quickscale.example>",
		"CONTACT_EMAIL": "ops@quickscale.example"}})
	r := ta.browser().post("/contact", url.Values{"name": {"Ada"}, "email": {"ada@example.com"}, "message": {"Do you offer volume discounts?"}})
	acctRequireStatus(t, r, http.StatusOK)

	msg := mp.waitMessage("ops@quickscale.example", "Contact form: Ada")
	require.Equal(t, "no-reply@quickscale.example", msg.From.Address)
	require.Len(t, msg.ReplyTo, 1)
	require.Equal(t, "ada@example.com", msg.ReplyTo[0].Address)
}
