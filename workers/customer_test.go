package workers

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/riverqueue/river"
	"github.com/riverqueue/river/rivertype"
	"github.com/stretchr/testify/require"

	"github.com/quickscale/quickscale/billing"
	"github.com/quickscale/quickscale/jobs"
	"github.com/quickscale/quickscale/store/storetest"
)

// stripeAnswers answers every Stripe API call with one status and body.
type stripeAnswers struct {
	status int
	body   string
	calls  int
}

func (a *stripeAnswers) RoundTrip(req *http.Request) (*http.Response, error) {
	a.calls++
	return &http.Response{StatusCode: a.status, Header: http.Header{"Content-Type": {"application/json"}},
		Body: io.NopCloser(strings.NewReader(a.body)), Request: req}, nil
}

// A customer Stripe does not have (deleted in its dashboard, made with
// other keys) cancels the sync at once rather than retry for a day and a
// half; Stripe unreachable is retried; a user without a customer needs
// nothing.
func TestSyncCustomerEmailCancelsForACustomerStripeDoesNotHave(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	st := storetest.NewStore(t)
	u := storetest.NewUser(t, st, storetest.UserOpts{})
	answers := &stripeAnswers{status: http.StatusNotFound,
		body: `{"error":{"type":"invalid_request_error","code":"resource_missing","message":"No such customer: 'cus_gone'","param":"id"}}`}
	gw := billing.NewStripe(billing.StripeConfig{SecretKey: "sk_test_123", HTTPClient: &http.Client{Transport: answers, Timeout: 10 * time.Second}})
	w := &SyncCustomerEmailWorker{store: st, gateway: gw}
	job := &river.Job[jobs.SyncCustomerEmail]{JobRow: &rivertype.JobRow{}, Args: jobs.SyncCustomerEmail{UserID: u.ID}}

	require.NoError(t, w.Work(ctx, job), "a user without a customer needs nothing")
	require.Zero(t, answers.calls)

	_, err := st.SaveCustomerID(ctx, u.ID, "cus_gone")
	require.NoError(t, err)
	err = w.Work(ctx, job)
	var cancel *rivertype.JobCancelError
	require.True(t, errors.As(err, &cancel), "a missing customer is retried: %v", err)

	answers.status, answers.body = http.StatusInternalServerError, `{"error":{"type":"api_error","message":"Something went wrong."}}`
	err = w.Work(ctx, job)
	require.Error(t, err)
	require.False(t, errors.As(err, &cancel), "Stripe failing is given up at once: %v", err)
}
