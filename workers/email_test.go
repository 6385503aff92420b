package workers

import (
	"strings"
	"testing"

	"github.com/quickscale/quickscale/jobs"
)

// Keys added to an email after launch are optional in its template: a job
// queued by the previous version (without them) still renders, instead of
// being cancelled as unrenderable and the email lost.
func TestEmailsQueuedBeforeNewKeysStillRender(t *testing.T) {
	t.Parallel()
	tpl, err := loadEmailTemplates()
	if err != nil {
		t.Fatal(err)
	}
	for name, data := range map[string]map[string]string{
		jobs.EmailPurchase:        {"Credits": "500", "Amount": "$20.00", "Balance": "500", "PaymentsLink": "https://x/dashboard/payments"},
		jobs.EmailPasswordChanged: {"ResetLink": "https://x/password/forgot"},
	} {
		subject, text, html, err := tpl.render(name, data)
		if err != nil || subject == "" || text == "" || html == "" {
			t.Errorf("%s with the old keys: %q %v", name, subject, err)
		}
		if strings.Contains(text, "<no value>") || strings.Contains(html, "<no value>") {
			t.Errorf("%s shows a missing key:\n%s", name, text)
		}
	}
	// And with the new keys, they are used.
	_, text, _, err := tpl.render(jobs.EmailPasswordChanged, map[string]string{"ResetLink": "https://x", "Reset": "yes", "KeysRevoked": "2"})
	if err != nil || !strings.Contains(text, "your API keys (2) were revoked") {
		t.Errorf("reset notice: %v\n%s", err, text)
	}
}
