package workers

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"github.com/riverqueue/river/rivertype"
	"github.com/stretchr/testify/require"

	"github.com/quickscale/quickscale/jobs"
	"github.com/quickscale/quickscale/store/storetest"
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

// A balance of one credit reads "1 credit", in both parts of both emails
// that state a balance.
func TestEmailsCountOneCreditAsOne(t *testing.T) {
	t.Parallel()
	tpl, err := loadEmailTemplates()
	require.NoError(t, err)
	for name, data := range map[string]map[string]string{
		jobs.EmailPurchase: {"Credits": "100", "Amount": "$5.00", "Balance": "1", "PaymentsLink": "https://x/dashboard/payments"},
		jobs.EmailRefund: {"Payment": "#5", "Amount": "$19.99", "Total": "$20.00", "Credits": "500", "Full": "", "TakenBack": "499",
			"Shortfall": "0", "Balance": "1", "PaymentsLink": "https://x/dashboard/payments"},
	} {
		_, text, html, err := tpl.render(name, data)
		require.NoError(t, err, name)
		require.Contains(t, text, "Balance now: 1 credit\n", name)
		require.Contains(t, html, ">1 credit<", name)
		data["Balance"] = "1,000"
		_, text, _, err = tpl.render(name, data)
		require.NoError(t, err, name)
		require.Contains(t, text, "Balance now: 1,000 credits\n", name)
	}
}

// A sent email's job is completed at once, in the database, not in River's
// next completion batch: a worker killed just after sending must not leave
// the job to run (and the email to be sent) again. A middleware looks at
// the job's row the moment the worker returns, before River itself could
// have completed it.
func TestSentEmailsJobIsCompletedAtOnce(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	st := storetest.NewStore(t)
	tpl, err := loadEmailTemplates()
	require.NoError(t, err)
	ws := river.NewWorkers()
	require.NoError(t, river.AddWorkerSafely(ws, &SendEmailWorker{logger: slog.New(slog.DiscardHandler), store: st,
		mailer: NewMailboxMailer(st), from: "QuickScale <no-reply@example.com>", baseURL: "https://x", templates: tpl}))
	stateOnReturn := make(chan string, 1)
	look := river.WorkerMiddlewareFunc(func(ctx context.Context, job *rivertype.JobRow, doInner func(context.Context) error) error {
		err := doInner(ctx)
		var state string
		if qerr := st.Pool().QueryRow(context.Background(), `SELECT state FROM river_job WHERE id = $1`, job.ID).Scan(&state); qerr != nil {
			state = qerr.Error()
		}
		stateOnReturn <- state
		return err
	})
	client, err := river.NewClient(riverpgxv5.New(st.Pool()), &river.Config{
		Logger:            slog.New(slog.DiscardHandler),
		Queues:            map[string]river.QueueConfig{jobs.QueueEmail: {MaxWorkers: 1}},
		Workers:           ws,
		Middleware:        []rivertype.Middleware{look},
		FetchCooldown:     20 * time.Millisecond,
		FetchPollInterval: 50 * time.Millisecond,
		TestOnly:          true,
	})
	require.NoError(t, err)
	require.NoError(t, client.Start(ctx))
	t.Cleanup(func() {
		sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = client.Stop(sctx)
	})
	_, err = client.Insert(ctx, jobs.SendEmail{Template: jobs.EmailPasswordChanged, To: "once@example.com",
		Data: map[string]string{"ResetLink": "https://x/password/forgot"}}, nil)
	require.NoError(t, err)

	select {
	case state := <-stateOnReturn:
		require.Equal(t, "completed", state, "the sent email's job, when the worker returned")
	case <-time.After(20 * time.Second):
		t.Fatal("the email job did not run")
	}
	var sent int
	require.NoError(t, st.Pool().QueryRow(ctx, `SELECT count(*) FROM dev_mailbox WHERE to_addr = $1`, "once@example.com").Scan(&sent))
	require.Equal(t, 1, sent)
}
