package workers

import (
	"bytes"
	"context"
	"embed"
	"errors"
	"fmt"
	htmltemplate "html/template"
	"log/slog"
	"net/url"
	"strings"
	texttemplate "text/template"

	"github.com/jackc/pgx/v5"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"

	"github.com/quickscale/quickscale/jobs"
	"github.com/quickscale/quickscale/store"
)

//go:embed templates/email
var emailFS embed.FS

// emailTemplates holds, per email, a text template whose first line is
// "Subject: …" and an HTML template rendered inside the shared layout.
type emailTemplates struct {
	text map[string]*texttemplate.Template
	html map[string]*htmltemplate.Template
}

func loadEmailTemplates() (*emailTemplates, error) {
	t := &emailTemplates{text: map[string]*texttemplate.Template{}, html: map[string]*htmltemplate.Template{}}
	for _, name := range []string{jobs.EmailVerify, jobs.EmailSignupExisting, jobs.EmailChangeToTaken, jobs.EmailAddressChanged, jobs.EmailResetPassword, jobs.EmailChangeEmail,
		jobs.EmailWelcome, jobs.EmailContact, jobs.EmailPasswordChanged, jobs.EmailPurchase, jobs.EmailRefund, jobs.EmailPaymentFailed,
		jobs.EmailSubscriptionPaid, jobs.EmailSubscriptionFailed, jobs.EmailSubscriptionChanged, jobs.EmailSubscriptionEnded, jobs.EmailRefundFailed} {
		tt, err := texttemplate.New(name+".txt").Option("missingkey=error").ParseFS(emailFS, "templates/email/"+name+".txt")
		if err != nil {
			return nil, fmt.Errorf("email %s: %w", name, err)
		}
		ht, err := htmltemplate.New("layout.html").Option("missingkey=error").ParseFS(emailFS, "templates/email/layout.html", "templates/email/"+name+".html")
		if err != nil {
			return nil, fmt.Errorf("email %s: %w", name, err)
		}
		t.text[name], t.html[name] = tt, ht
	}
	return t, nil
}

func (t *emailTemplates) render(name string, data map[string]string) (subject, text, html string, err error) {
	tt, ok := t.text[name]
	if !ok {
		return "", "", "", fmt.Errorf("no email template %q", name)
	}
	if data == nil {
		data = map[string]string{}
	}
	var tb, hb bytes.Buffer
	if err := tt.Execute(&tb, data); err != nil {
		return "", "", "", err
	}
	first, rest, _ := strings.Cut(tb.String(), "\n")
	subject, ok = strings.CutPrefix(first, "Subject: ")
	if !ok {
		return "", "", "", fmt.Errorf("email %s: first line must be 'Subject: …'", name)
	}
	if err := t.html[name].Execute(&hb, data); err != nil {
		return "", "", "", err
	}
	return strings.TrimSpace(subject), strings.TrimLeft(rest, "\n"), hb.String(), nil
}

// SendEmailWorker renders and sends one email. SMTP trouble is retried with
// River's backoff; a permanent refusal or a broken template cancels the job,
// which then shows as cancelled (with the reason) in River UI.
type SendEmailWorker struct {
	river.WorkerDefaults[jobs.SendEmail]
	logger    *slog.Logger
	store     *store.Store
	mailer    Mailer
	from      string
	baseURL   string
	templates *emailTemplates
}

// Work implements river.Worker.
func (w *SendEmailWorker) Work(ctx context.Context, job *river.Job[jobs.SendEmail]) error {
	data := map[string]string{}
	for k, v := range job.Args.Data {
		data[k] = v
	}
	if l := job.Args.Link; l != nil {
		// Issued per attempt: a retry revokes the previous attempt's token.
		token, err := store.CreateToken(ctx, w.store.Pool(), l.UserID, l.Purpose, l.Email)
		if err != nil {
			return fmt.Errorf("issue %s token: %w", l.Purpose, err)
		}
		data["Link"] = w.baseURL + l.Path + "?token=" + url.QueryEscape(token)
	}
	subject, text, html, err := w.templates.render(job.Args.Template, data)
	if err != nil {
		return river.JobCancel(fmt.Errorf("render %s: %w", job.Args.Template, err))
	}
	err = w.mailer.Send(ctx, Message{From: w.from, To: job.Args.To, ReplyTo: job.Args.ReplyTo, Subject: subject, Text: text, HTML: html})
	if errors.Is(err, ErrPermanent) {
		w.logger.ErrorContext(ctx, "email refused permanently", "template", job.Args.Template, "err", err)
		return river.JobCancel(err)
	}
	if err != nil {
		w.logger.WarnContext(ctx, "email delivery failed, will retry", "template", job.Args.Template, "attempt", job.Attempt, "err", err)
		return err
	}
	// Sent: the job is completed now, not in River's next completion
	// batch, so that a worker killed in between does not leave a sent
	// email's job to be run (and the email sent) again. Delivery is still
	// at least once: the few milliseconds after the server took the email
	// remain.
	if err := w.store.InTx(ctx, func(tx pgx.Tx) error {
		_, err := river.JobCompleteTx[*riverpgxv5.Driver](ctx, tx, job)
		return err
	}); err != nil {
		w.logger.WarnContext(ctx, "email sent; its job is completed in River's next batch instead", "template", job.Args.Template, "err", err)
	}
	return nil
}
