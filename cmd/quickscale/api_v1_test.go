package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/stretchr/testify/require"

	"github.com/quickscale/quickscale/store"
	"github.com/quickscale/quickscale/store/storetest"
)

// The JSON API under /api/v1, through the real router with real API keys
// (helpers prefixed v1).

type v1Balance struct {
	Balance    int64            `json:"balance"`
	ByKind     map[string]int64 `json:"by_kind"`
	NextExpiry *time.Time       `json:"next_expiry"`
}

type v1Drawn struct {
	GrantID int64  `json:"grant_id"`
	Kind    string `json:"kind"`
	Credits int64  `json:"credits"`
}

type v1Usage struct {
	UsageID   int64     `json:"usage_id"`
	Service   string    `json:"service"`
	Credits   int64     `json:"credits"`
	Balance   int64     `json:"balance"`
	Drawn     []v1Drawn `json:"drawn"`
	CreatedAt time.Time `json:"created_at"`
}

type v1UsagePage struct {
	// Listed usages have the shape of the POST's answer.
	Data       []v1Usage `json:"data"`
	NextCursor *string   `json:"next_cursor"`
}

type v1Service struct {
	Slug        string `json:"slug"`
	Name        string `json:"name"`
	Description string `json:"description"`
	CreditCost  int64  `json:"credit_cost"`
}

type v1Services struct {
	Data []v1Service `json:"data"`
}

type v1Problem struct {
	Error     string `json:"error"`
	Message   string `json:"message"`
	RequestID string `json:"request_id"`
	Balance   *int64 `json:"balance"`
	Required  *int64 `json:"required"`
}

// v1Do sends an API request. key "" sends no Authorization header; a body
// is sent as application/json unless header says otherwise.
func v1Do(t testing.TB, ta *testApp, method, path, key, body string, header ...string) response {
	t.Helper()
	r, err := v1Send(ta, method, path, key, body, header...)
	require.NoError(t, err)
	return r
}

// v1Send is v1Do without t, for goroutines.
func v1Send(ta *testApp, method, path, key, body string, header ...string) (response, error) {
	req, err := http.NewRequest(method, ta.URL+path, strings.NewReader(body))
	if err != nil {
		return response{}, err
	}
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return response{}, err
	}
	defer resp.Body.Close()
	var buf bytes.Buffer
	if _, err := buf.ReadFrom(resp.Body); err != nil {
		return response{}, err
	}
	return response{Status: resp.StatusCode, Header: resp.Header, Body: buf.String()}, nil
}

// v1Decode decodes a JSON body strictly: a field the API does not document
// fails the test.
func v1Decode[T any](t testing.TB, r response) T {
	t.Helper()
	require.True(t, strings.HasPrefix(r.Header.Get("Content-Type"), "application/json"), "content type %q of %s", r.Header.Get("Content-Type"), r.Body)
	// Every JSON answer tells browsers not to guess another type (h29).
	require.Equal(t, "nosniff", r.Header.Get("X-Content-Type-Options"), "JSON answer without nosniff: %s", r.Body)
	var v T
	dec := json.NewDecoder(strings.NewReader(r.Body))
	dec.DisallowUnknownFields()
	require.NoError(t, dec.Decode(&v), "body %s", r.Body)
	return v
}

// v1Spend posts a usage of service under an idempotency key.
func v1Spend(t testing.TB, ta *testApp, key, service, idem string) response {
	t.Helper()
	return v1Do(t, ta, http.MethodPost, "/api/v1/usage", key, `{"service":"`+service+`"}`, "Idempotency-Key", idem)
}

func v1Balanceof(t testing.TB, ta *testApp, key string) v1Balance {
	t.Helper()
	r := v1Do(t, ta, http.MethodGet, "/api/v1/balance", key, "")
	require.Equal(t, http.StatusOK, r.Status, r.Body)
	return v1Decode[v1Balance](t, r)
}

// v1UserWithKey is testApp.userWithKey for subtests (it fails t, not the
// app's test).
func v1UserWithKey(t testing.TB, ta *testApp, opts storetest.UserOpts) (store.User, string) {
	t.Helper()
	u := storetest.NewUser(t, ta.store, opts)
	raw, _, err := ta.store.CreateAPIKey(context.Background(), u.ID, "test")
	require.NoError(t, err)
	return u, raw
}

func v1Ptr[T any](v T) *T { return &v }

func TestAPIBalanceReportsTotalByKindAndNextExpiry(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{NoWorkers: true})
	u, key := ta.userWithKey(storetest.UserOpts{})
	soon := time.Now().Add(72 * time.Hour).Truncate(time.Second)
	storetest.NewGrant(t, ta.store, u.ID, storetest.GrantOpts{Kind: store.GrantSubscription, Amount: 100, ExpiresAt: v1Ptr(time.Now().Add(240 * time.Hour))})
	storetest.NewGrant(t, ta.store, u.ID, storetest.GrantOpts{Kind: store.GrantSubscription, Amount: 30, ExpiresAt: &soon})
	storetest.NewGrant(t, ta.store, u.ID, storetest.GrantOpts{Kind: store.GrantPack, Amount: 500})
	storetest.NewGrant(t, ta.store, u.ID, storetest.GrantOpts{Kind: store.GrantPromo, Amount: 7})

	r := v1Do(t, ta, http.MethodGet, "/api/v1/balance", key, "")

	require.Equal(t, http.StatusOK, r.Status, r.Body)
	var raw map[string]json.RawMessage
	require.NoError(t, json.Unmarshal([]byte(r.Body), &raw))
	var expiry string
	require.NoError(t, json.Unmarshal(raw["next_expiry"], &expiry), "next_expiry is a string")
	at, err := time.Parse(time.RFC3339, expiry)
	require.NoError(t, err, "next_expiry is RFC 3339")
	if !at.Equal(soon) {
		t.Fatalf("next_expiry %s, want %s", at, soon)
	}
	got := v1Decode[v1Balance](t, r)
	want := map[string]int64{store.GrantSubscription: 130, store.GrantPack: 500, store.GrantAdmin: 0, store.GrantPromo: 7}
	if got.Balance != 637 || !cmp.Equal(want, got.ByKind) {
		t.Fatalf("balance %d by kind %v, want 637 and %v", got.Balance, got.ByKind, want)
	}
}

func TestAPIBalanceNextExpiryIsNullWithoutExpiringCredits(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{NoWorkers: true})
	u, key := ta.userWithKey(storetest.UserOpts{})
	storetest.NewGrant(t, ta.store, u.ID, storetest.GrantOpts{Kind: store.GrantPack, Amount: 40})

	r := v1Do(t, ta, http.MethodGet, "/api/v1/balance", key, "")

	require.Equal(t, http.StatusOK, r.Status, r.Body)
	var raw map[string]json.RawMessage
	require.NoError(t, json.Unmarshal([]byte(r.Body), &raw))
	got, ok := raw["next_expiry"]
	require.True(t, ok, "next_expiry is present: %s", r.Body)
	require.Equal(t, "null", string(got))
	require.Equal(t, int64(40), v1Decode[v1Balance](t, r).Balance)
}

func TestAPIServicesListsOnlyActiveServices(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{NoWorkers: true})
	_, key := ta.userWithKey(storetest.UserOpts{})
	a := storetest.NewService(t, ta.store, storetest.ServiceOpts{Slug: "resize-image", Cost: 3})
	b := storetest.NewService(t, ta.store, storetest.ServiceOpts{Slug: "free-ping", Cost: storetest.NoCost})
	storetest.NewService(t, ta.store, storetest.ServiceOpts{Slug: "retired", Inactive: true})

	r := v1Do(t, ta, http.MethodGet, "/api/v1/services", key, "")

	require.Equal(t, http.StatusOK, r.Status, r.Body)
	got := v1Decode[v1Services](t, r).Data
	costs := map[string]int64{}
	for _, s := range got {
		costs[s.Slug] = s.CreditCost
		require.NotEmpty(t, s.Name)
	}
	if want := map[string]int64{a: 3, b: 0}; !cmp.Equal(want, costs) {
		t.Fatalf("services %v, want %v", costs, want)
	}
}

func TestAPIUsageCreatesUsageAndReportsWhatWasDrawn(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{NoWorkers: true})
	u, key := ta.userWithKey(storetest.UserOpts{})
	g := storetest.NewGrant(t, ta.store, u.ID, storetest.GrantOpts{Kind: store.GrantPack, Amount: 100})
	svc := storetest.NewService(t, ta.store, storetest.ServiceOpts{Cost: 30})

	r := v1Spend(t, ta, key, svc, "first-call")

	require.Equal(t, http.StatusCreated, r.Status, r.Body)
	got := v1Decode[v1Usage](t, r)
	want := v1Usage{UsageID: got.UsageID, Service: svc, Credits: 30, Balance: 70,
		Drawn: []v1Drawn{{GrantID: g.GrantID, Kind: store.GrantPack, Credits: 30}}, CreatedAt: got.CreatedAt}
	if diff := cmp.Diff(want, got); diff != "" || got.UsageID == 0 || got.CreatedAt.IsZero() {
		t.Fatalf("usage (-want +got):\n%s", diff)
	}
	require.Equal(t, int64(70), v1Balanceof(t, ta, key).Balance)
}

func TestAPIUsageReplayReturnsTheSameBodyAndChargesOnce(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{NoWorkers: true})
	u, key := ta.userWithKey(storetest.UserOpts{})
	storetest.NewGrant(t, ta.store, u.ID, storetest.GrantOpts{Amount: 100})
	svc := storetest.NewService(t, ta.store, storetest.ServiceOpts{Cost: 30})
	first := v1Spend(t, ta, key, svc, "retry-me")
	require.Equal(t, http.StatusCreated, first.Status, first.Body)

	again := v1Spend(t, ta, key, svc, "retry-me")

	require.Equal(t, http.StatusOK, again.Status, again.Body)
	require.Equal(t, "true", again.Header.Get("Idempotent-Replayed"))
	if diff := cmp.Diff(v1Decode[v1Usage](t, first), v1Decode[v1Usage](t, again)); diff != "" {
		t.Fatalf("replay differs (-first +replay):\n%s", diff)
	}
	require.Equal(t, int64(70), v1Balanceof(t, ta, key).Balance)
}

func TestAPIUsageConcurrentRetriesOfOneKeyChargeOnce(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{NoWorkers: true})
	u, key := ta.userWithKey(storetest.UserOpts{})
	storetest.NewGrant(t, ta.store, u.ID, storetest.GrantOpts{Amount: 1000})
	svc := storetest.NewService(t, ta.store, storetest.ServiceOpts{Cost: 10})

	const n = 16
	results := make([]response, n)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			r, err := v1Send(ta, http.MethodPost, "/api/v1/usage", key, `{"service":"`+svc+`"}`, "Idempotency-Key", "same-key")
			if err != nil {
				t.Errorf("request %d: %v", i, err)
			}
			results[i] = r
		}()
	}
	close(start)
	wg.Wait()

	created, ids := 0, map[int64]bool{}
	for _, r := range results {
		switch r.Status {
		case http.StatusCreated:
			created++
		case http.StatusOK:
		default:
			t.Fatalf("status %d %s", r.Status, r.Body)
		}
		ids[v1Decode[v1Usage](t, r).UsageID] = true
	}
	if created != 1 || len(ids) != 1 {
		t.Fatalf("%d created and %d distinct usages, want 1 and 1", created, len(ids))
	}
	require.Equal(t, int64(990), v1Balanceof(t, ta, key).Balance)
	if v := storetest.Violations(t, ta.store); len(v) > 0 {
		t.Fatalf("ledger invariants violated: %v", v)
	}
}

func TestAPIUsageWithoutEnoughCreditsIs402AndChargesNothing(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{NoWorkers: true})
	u, key := ta.userWithKey(storetest.UserOpts{})
	storetest.NewGrant(t, ta.store, u.ID, storetest.GrantOpts{Amount: 25})
	svc := storetest.NewService(t, ta.store, storetest.ServiceOpts{Cost: 30})

	r := v1Spend(t, ta, key, svc, "too-dear")

	require.Equal(t, http.StatusPaymentRequired, r.Status, r.Body)
	p := v1Decode[v1Problem](t, r)
	if p.Error != "insufficient_credits" || p.Balance == nil || *p.Balance != 25 || p.Message == "" {
		t.Fatalf("problem %+v, want insufficient_credits with balance 25", p)
	}
	require.Equal(t, int64(25), v1Balanceof(t, ta, key).Balance)
	require.Zero(t, whCount(t, ta, `SELECT count(*) FROM usages`))
}

// holdAccount begins a transaction holding the user's account row, as a
// stuck request would, until the returned release (also run at cleanup).
func holdAccount(t *testing.T, ta *testApp, userID int64) (release func()) {
	t.Helper()
	ctx := context.Background()
	holder, err := ta.store.Pool().Begin(ctx)
	require.NoError(t, err)
	release = func() { _ = holder.Rollback(ctx) }
	t.Cleanup(release)
	_, err = holder.Exec(ctx, `SELECT 1 FROM accounts WHERE user_id = $1 FOR UPDATE`, userID)
	require.NoError(t, err)
	return release
}

// sendAndAbandon sends req with client, waits until its spend waits for a
// held account (alone on its own connection, after its batch's 100 ms
// wait ended), closes the connection as a client that gives up does, and
// returns once the server's access log has the request.
func sendAndAbandon(t *testing.T, ta *testApp, client *http.Client, req *http.Request) {
	t.Helper()
	ctx, giveUp := context.WithCancel(req.Context())
	sent := make(chan error, 1)
	go func() {
		res, err := client.Do(req.WithContext(ctx))
		if err == nil {
			res.Body.Close()
		}
		sent <- err
	}()
	require.Eventually(t, func() bool {
		var waiting int
		err := ta.store.Pool().QueryRow(context.Background(), `SELECT count(*) FROM pg_stat_activity
 WHERE datname = current_database() AND wait_event_type = 'Lock' AND query LIKE '%ledger_consume_many(ARRAY[%'`).Scan(&waiting)
		return err == nil && waiting > 0
	}, 20*time.Second, 5*time.Millisecond, "the spend never waited for the held account")
	giveUp()
	require.ErrorIs(t, <-sent, context.Canceled)
	require.Eventually(t, func() bool {
		// The access log's line (path, then route), not the handler's own
		// line about the abandoned request, which comes first.
		return strings.Contains(ta.logs.String(), "path="+req.URL.Path+" route=")
	}, 20*time.Second, 5*time.Millisecond, "no access log line for the abandoned request")
}

// A client that gives up while its spend waits (here for an account a
// transaction holds) and closes its connection is not a server error: the
// answer nobody reads is a 499, logged at info and counted as a 4xx (the
// 5xx ratio pages someone). Nothing is charged; the same key spends later.
func TestAPIClientThatGivesUpIsNotAServerError(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{NoWorkers: true})
	u, key := ta.userWithKey(storetest.UserOpts{})
	storetest.NewGrant(t, ta.store, u.ID, storetest.GrantOpts{Amount: 10})
	svc := storetest.NewService(t, ta.store, storetest.ServiceOpts{Cost: 3})
	release := holdAccount(t, ta, u.ID)
	req, err := http.NewRequest(http.MethodPost, ta.URL+"/api/v1/usage", strings.NewReader(`{"service":"`+svc+`"}`))
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer "+key)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Idempotency-Key", "gave-up")
	sendAndAbandon(t, ta, http.DefaultClient, req)
	logs := ta.logs.String()
	require.Contains(t, logs, "status=499")
	require.NotContains(t, logs, "level=ERROR")
	require.Zero(t, ta.metric("quickscale_http_requests_total", map[string]string{"code": "5xx"}))
	require.Equal(t, 1.0, ta.metric("quickscale_http_requests_total", map[string]string{"code": "4xx", "route": "/api/v1/usage"}))

	release()
	r := v1Spend(t, ta, key, svc, "gave-up")
	require.Equal(t, http.StatusCreated, r.Status, "the key is free: nothing was charged (%s)", r.Body)
	require.Equal(t, int64(7), v1Balanceof(t, ta, key).Balance)
}

// A request refused for its key is logged and counted under the route it
// was for (so that refusals can be told apart per endpoint); unknown paths
// still check the key first and count as /api/v1/*.
func TestAPIRefusedKeysAreCountedUnderTheirRoute(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{NoWorkers: true})
	count := func(route string) float64 {
		return ta.metric("quickscale_http_requests_total", map[string]string{"route": route, "code": "4xx"})
	}
	require.Equal(t, http.StatusUnauthorized, v1Do(t, ta, http.MethodGet, "/api/v1/balance", "", "").Status)
	require.Equal(t, http.StatusUnauthorized, v1Do(t, ta, http.MethodPost, "/api/v1/usage", "qs_not-a-key", `{}`, "Idempotency-Key", "k").Status)
	require.Equal(t, http.StatusUnauthorized, v1Do(t, ta, http.MethodGet, "/api/v1/nothing-here", "", "").Status)
	require.Equal(t, 1.0, count("/api/v1/balance"))
	require.Equal(t, 1.0, count("/api/v1/usage"))
	require.Equal(t, 1.0, count("/api/v1/*"))
	require.Contains(t, ta.logs.String(), "path=/api/v1/balance route=/api/v1/balance status=401")
}

func TestAPIUsageKeyReusedForAnotherServiceIs409(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{NoWorkers: true})
	u, key := ta.userWithKey(storetest.UserOpts{})
	storetest.NewGrant(t, ta.store, u.ID, storetest.GrantOpts{Amount: 100})
	one := storetest.NewService(t, ta.store, storetest.ServiceOpts{Cost: 10})
	other := storetest.NewService(t, ta.store, storetest.ServiceOpts{Cost: 10})
	require.Equal(t, http.StatusCreated, v1Spend(t, ta, key, one, "k-1").Status)

	r := v1Spend(t, ta, key, other, "k-1")

	require.Equal(t, http.StatusConflict, r.Status, r.Body)
	require.Equal(t, "idempotency_key_reused", v1Decode[v1Problem](t, r).Error)
	require.Equal(t, int64(90), v1Balanceof(t, ta, key).Balance)
}

func TestAPIUsageDrawsSubscriptionCreditsBeforePackCredits(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{NoWorkers: true})
	u, key := ta.userWithKey(storetest.UserOpts{})
	// The pack is older, yet the expiring subscription credits go first.
	pack := storetest.NewGrant(t, ta.store, u.ID, storetest.GrantOpts{Kind: store.GrantPack, Amount: 100})
	sub := storetest.NewGrant(t, ta.store, u.ID, storetest.GrantOpts{Kind: store.GrantSubscription, Amount: 100})
	svc := storetest.NewService(t, ta.store, storetest.ServiceOpts{Cost: 150})

	r := v1Spend(t, ta, key, svc, "big")

	require.Equal(t, http.StatusCreated, r.Status, r.Body)
	want := []v1Drawn{
		{GrantID: sub.GrantID, Kind: store.GrantSubscription, Credits: 100},
		{GrantID: pack.GrantID, Kind: store.GrantPack, Credits: 50},
	}
	if diff := cmp.Diff(want, v1Decode[v1Usage](t, r).Drawn); diff != "" {
		t.Fatalf("drawn (-want +got):\n%s", diff)
	}
	bal := v1Balanceof(t, ta, key)
	if bal.ByKind[store.GrantSubscription] != 0 || bal.ByKind[store.GrantPack] != 50 || bal.NextExpiry != nil {
		t.Fatalf("balance after: %+v", bal)
	}
}

func TestAPIUsageListPagesNewestFirstWithoutGapsOrDuplicates(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{NoWorkers: true})
	u, key := ta.userWithKey(storetest.UserOpts{})
	storetest.NewGrant(t, ta.store, u.ID, storetest.GrantOpts{Amount: 1000})
	someoneElse, otherKey := ta.userWithKey(storetest.UserOpts{})
	storetest.NewGrant(t, ta.store, someoneElse.ID, storetest.GrantOpts{Amount: 1000})
	svc := storetest.NewService(t, ta.store, storetest.ServiceOpts{Cost: 1})

	const total = 123
	var (
		mu       sync.Mutex
		created  []int64
		balances = map[int64]int64{} // what each POST answered
		wg       sync.WaitGroup
	)
	sem := make(chan struct{}, 8)
	for i := 0; i < total+10; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			k := key
			if i >= total {
				k = otherKey // interleaved usages of another user
			}
			r, err := v1Send(ta, http.MethodPost, "/api/v1/usage", k, `{"service":"`+svc+`"}`, "Idempotency-Key", fmt.Sprintf("page-%d", i))
			if err != nil || r.Status != http.StatusCreated {
				t.Errorf("usage %d: %v %d %s", i, err, r.Status, r.Body)
				return
			}
			var got v1Usage
			if err := json.Unmarshal([]byte(r.Body), &got); err != nil {
				t.Errorf("usage %d: %v", i, err)
				return
			}
			if i < total {
				mu.Lock()
				created = append(created, got.UsageID)
				balances[got.UsageID] = got.Balance
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	require.Len(t, created, total)

	var (
		seen  []int64
		sizes []int
	)
	path := "/api/v1/usage"
	for pages := 0; ; pages++ {
		require.Less(t, pages, 10, "pagination does not end")
		r := v1Do(t, ta, http.MethodGet, path, key, "")
		require.Equal(t, http.StatusOK, r.Status, r.Body)
		page := v1Decode[v1UsagePage](t, r)
		sizes = append(sizes, len(page.Data))
		for _, rec := range page.Data {
			seen = append(seen, rec.UsageID)
			if rec.Service != svc || rec.Credits != 1 || len(rec.Drawn) != 1 || rec.Balance != balances[rec.UsageID] {
				t.Fatalf("record %+v; its POST answered balance %d (a listed usage has the POST's shape)", rec, balances[rec.UsageID])
			}
		}
		if page.NextCursor == nil {
			break
		}
		path = "/api/v1/usage?cursor=" + *page.NextCursor
	}

	want := slices.Clone(created)
	slices.Sort(want)
	slices.Reverse(want)
	if diff := cmp.Diff(want, seen); diff != "" {
		t.Fatalf("usages listed (-want +got):\n%s", diff)
	}
	require.Equal(t, []int{50, 50, 23}, sizes)
}

func TestAPIProblems(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{NoWorkers: true})
	svc := storetest.NewService(t, ta.store, storetest.ServiceOpts{Cost: 10})
	body := `{"service":"` + svc + `"}`

	// spender is a verified user with credits and a key.
	spender := func(t *testing.T) (store.User, string) {
		u, key := v1UserWithKey(t, ta, storetest.UserOpts{})
		storetest.NewGrant(t, ta.store, u.ID, storetest.GrantOpts{Amount: 100})
		return u, key
	}
	// check requires the status and problem code, and that nothing was spent.
	check := func(t *testing.T, r response, status int, code string, u store.User) {
		t.Helper()
		require.Equal(t, status, r.Status, r.Body)
		p := v1Decode[v1Problem](t, r)
		if p.Error != code || p.Message == "" || p.RequestID == "" {
			t.Fatalf("problem %+v, want %q with a message and request id", p, code)
		}
		if u.ID != 0 {
			require.Zero(t, whCount(t, ta, `SELECT count(*) FROM usages WHERE user_id = $1`, u.ID), "nothing is spent")
		}
	}

	t.Run("missing key is 401", func(t *testing.T) {
		t.Parallel()
		r := v1Do(t, ta, http.MethodGet, "/api/v1/balance", "", "")
		check(t, r, http.StatusUnauthorized, "unauthorized", store.User{})
		require.Contains(t, r.Header.Get("WWW-Authenticate"), "Bearer")
	})
	t.Run("basic instead of bearer is 401", func(t *testing.T) {
		t.Parallel()
		_, key := spender(t)
		r := v1Do(t, ta, http.MethodGet, "/api/v1/balance", "", "", "Authorization", "Basic "+key)
		check(t, r, http.StatusUnauthorized, "unauthorized", store.User{})
	})
	t.Run("invalid key is 401", func(t *testing.T) {
		t.Parallel()
		r := v1Do(t, ta, http.MethodGet, "/api/v1/balance", store.APIKeyPrefix+"not-a-real-key", "")
		check(t, r, http.StatusUnauthorized, "invalid_api_key", store.User{})
	})
	t.Run("revoked key is 401", func(t *testing.T) {
		t.Parallel()
		u, key := spender(t)
		keys, _, err := ta.store.APIKeys(context.Background(), u.ID)
		require.NoError(t, err)
		require.Len(t, keys, 1)
		require.NoError(t, ta.store.RevokeAPIKey(context.Background(), u.ID, keys[0].ID))
		check(t, v1Do(t, ta, http.MethodPost, "/api/v1/usage", key, body, "Idempotency-Key", "k"), http.StatusUnauthorized, "invalid_api_key", u)
	})
	t.Run("unverified user cannot spend: 403", func(t *testing.T) {
		t.Parallel()
		u, key := v1UserWithKey(t, ta, storetest.UserOpts{Unverified: true})
		storetest.NewGrant(t, ta.store, u.ID, storetest.GrantOpts{Amount: 100})
		check(t, v1Do(t, ta, http.MethodPost, "/api/v1/usage", key, body, "Idempotency-Key", "k"), http.StatusForbidden, "email_not_verified", u)
	})
	t.Run("unknown service is 404", func(t *testing.T) {
		t.Parallel()
		u, key := spender(t)
		check(t, v1Spend(t, ta, key, "no-such-service", "k"), http.StatusNotFound, "service_not_found", u)
	})
	t.Run("inactive service is 404", func(t *testing.T) {
		t.Parallel()
		u, key := spender(t)
		old := storetest.NewService(t, ta.store, storetest.ServiceOpts{Inactive: true})
		check(t, v1Spend(t, ta, key, old, "k"), http.StatusNotFound, "service_not_found", u)
	})
	t.Run("missing service is 422", func(t *testing.T) {
		t.Parallel()
		u, key := spender(t)
		check(t, v1Do(t, ta, http.MethodPost, "/api/v1/usage", key, `{}`, "Idempotency-Key", "k"), http.StatusUnprocessableEntity, "service_required", u)
	})
	t.Run("bad JSON is 400", func(t *testing.T) {
		t.Parallel()
		u, key := spender(t)
		check(t, v1Do(t, ta, http.MethodPost, "/api/v1/usage", key, `{"service":`, "Idempotency-Key", "k"), http.StatusBadRequest, "invalid_json", u)
	})
	t.Run("two JSON objects are 400", func(t *testing.T) {
		t.Parallel()
		u, key := spender(t)
		check(t, v1Do(t, ta, http.MethodPost, "/api/v1/usage", key, body+body, "Idempotency-Key", "k"), http.StatusBadRequest, "invalid_json", u)
	})
	t.Run("field names are exact and given once: 400", func(t *testing.T) {
		t.Parallel()
		u, key := spender(t)
		dear := storetest.NewService(t, ta.store, storetest.ServiceOpts{Cost: 5})
		for i, b := range []string{
			`{"service":"` + svc + `","Service":"` + dear + `"}`,
			`{"SERVICE":"` + svc + `"}`,
			`{"service":"` + dear + `","service":"` + svc + `"}`,
			`null`,
		} {
			check(t, v1Do(t, ta, http.MethodPost, "/api/v1/usage", key, b, "Idempotency-Key", fmt.Sprint("k", i)), http.StatusBadRequest, "invalid_json", u)
		}
	})
	t.Run("oversized body: 401 without a key, 413 with one, declared or chunked", func(t *testing.T) {
		t.Parallel()
		u, key := spender(t)
		big := `{"service":"` + svc + `"}` + strings.Repeat(" ", 1<<20)
		check(t, v1Do(t, ta, http.MethodPost, "/api/v1/usage", "", big, "Idempotency-Key", "k"), http.StatusUnauthorized, "unauthorized", u)
		check(t, v1Do(t, ta, http.MethodPost, "/api/v1/usage", key, big, "Idempotency-Key", "k"), http.StatusRequestEntityTooLarge, "body_too_large", u)
		req, err := http.NewRequest(http.MethodPost, ta.URL+"/api/v1/usage", io.MultiReader(strings.NewReader(big)))
		require.NoError(t, err)
		require.EqualValues(t, 0, req.ContentLength, "the body goes chunked, without a declared length")
		req.Header.Set("Authorization", "Bearer "+key)
		req.Header.Set("Idempotency-Key", "k")
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		var buf bytes.Buffer
		_, _ = buf.ReadFrom(resp.Body)
		resp.Body.Close()
		check(t, response{Status: resp.StatusCode, Body: buf.String(), Header: resp.Header}, http.StatusRequestEntityTooLarge, "body_too_large", u)
		// Declared over the cap, then a short body: refused at once, not
		// after the server's read timeout waiting for the rest.
		conn, err := net.Dial("tcp", strings.TrimPrefix(ta.URL, "http://"))
		require.NoError(t, err)
		defer conn.Close()
		short := `{"service":"` + svc + `"}`
		_, err = fmt.Fprintf(conn, "POST /api/v1/usage HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nIdempotency-Key: k\r\n"+
			"Content-Type: application/json\r\nContent-Length: 99999999\r\n\r\n%s", key, short)
		require.NoError(t, err)
		require.NoError(t, conn.SetReadDeadline(time.Now().Add(10*time.Second))) // a bound, not a wait
		resp, err = http.ReadResponse(bufio.NewReader(conn), nil)
		require.NoError(t, err, "no answer before the read deadline")
		buf.Reset()
		_, _ = buf.ReadFrom(resp.Body)
		resp.Body.Close()
		check(t, response{Status: resp.StatusCode, Body: buf.String(), Header: resp.Header}, http.StatusRequestEntityTooLarge, "body_too_large", u)
	})
	t.Run("missing Idempotency-Key is 400", func(t *testing.T) {
		t.Parallel()
		u, key := spender(t)
		check(t, v1Do(t, ta, http.MethodPost, "/api/v1/usage", key, body), http.StatusBadRequest, "idempotency_key_required", u)
	})
	t.Run("overlong Idempotency-Key is 400", func(t *testing.T) {
		t.Parallel()
		u, key := spender(t)
		check(t, v1Spend(t, ta, key, svc, strings.Repeat("k", 256)), http.StatusBadRequest, "invalid_idempotency_key", u)
	})
	t.Run("Idempotency-Keys of website uses are reserved", func(t *testing.T) {
		t.Parallel()
		u, key := spender(t)
		check(t, v1Spend(t, ta, key, svc, store.WebKeyPrefix+"abc"), http.StatusBadRequest, "invalid_idempotency_key", u)
	})
	t.Run("Idempotency-Key is bounded in characters, not bytes", func(t *testing.T) {
		t.Parallel()
		u, key := spender(t)
		check(t, v1Spend(t, ta, key, svc, strings.Repeat("é", 256)), http.StatusBadRequest, "invalid_idempotency_key", u)
		r := v1Spend(t, ta, key, svc, strings.Repeat("é", 255)) // 510 bytes
		require.Equal(t, http.StatusCreated, r.Status, r.Body)
	})
	t.Run("wrong content type is 415", func(t *testing.T) {
		t.Parallel()
		u, key := spender(t)
		r := v1Do(t, ta, http.MethodPost, "/api/v1/usage", key, body, "Idempotency-Key", "k", "Content-Type", "text/plain")
		check(t, r, http.StatusUnsupportedMediaType, "unsupported_media_type", u)
		r = v1Do(t, ta, http.MethodPost, "/api/v1/usage", key, body, "Idempotency-Key", "k", "Content-Type", "application/jsonx")
		check(t, r, http.StatusUnsupportedMediaType, "unsupported_media_type", u)
		// JSON is UTF-8 only, and a body is read as sent: another charset
		// or a compressed body is refused, not misread.
		for i, h := range [][]string{
			{"Content-Type", "application/json; charset=utf-16"},
			{"Content-Type", "application/json; charset=latin1"},
			{"Content-Encoding", "gzip"},
			{"Content-Encoding", "identity, gzip"},
		} {
			r = v1Do(t, ta, http.MethodPost, "/api/v1/usage", key, body, "Idempotency-Key", fmt.Sprint("enc", i), h[0], h[1])
			check(t, r, http.StatusUnsupportedMediaType, "unsupported_media_type", u)
		}
		r = v1Do(t, ta, http.MethodPost, "/api/v1/usage", key, body, "Idempotency-Key", "k2", "Content-Type", "Application/JSON; charset=utf-8", "Content-Encoding", "identity")
		require.Equal(t, http.StatusCreated, r.Status, r.Body)
	})
	t.Run("a body cut short is 400 invalid_request, not invalid_json", func(t *testing.T) {
		t.Parallel()
		u, key := spender(t)
		conn, err := net.Dial("tcp", strings.TrimPrefix(ta.URL, "http://"))
		require.NoError(t, err)
		defer conn.Close()
		_, err = fmt.Fprintf(conn, "POST /api/v1/usage HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nIdempotency-Key: k\r\n"+
			"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"serv", key)
		require.NoError(t, err)
		require.NoError(t, conn.(*net.TCPConn).CloseWrite(), "the client sends no more")
		require.NoError(t, conn.SetReadDeadline(time.Now().Add(10*time.Second))) // a bound, not a wait
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		require.NoError(t, err)
		var buf bytes.Buffer
		_, _ = buf.ReadFrom(resp.Body)
		resp.Body.Close()
		check(t, response{Status: resp.StatusCode, Body: buf.String(), Header: resp.Header}, http.StatusBadRequest, "invalid_request", u)
	})
	t.Run("invalid cursor is 400", func(t *testing.T) {
		t.Parallel()
		_, key := spender(t)
		check(t, v1Do(t, ta, http.MethodGet, "/api/v1/usage?cursor=abc", key, ""), http.StatusBadRequest, "invalid_cursor", store.User{})
	})
	t.Run("unknown endpoint is a JSON 404", func(t *testing.T) {
		t.Parallel()
		_, key := spender(t)
		check(t, v1Do(t, ta, http.MethodGet, "/api/v1/nothing-here", key, ""), http.StatusNotFound, "not_found", store.User{})
	})
	t.Run("wrong method is a JSON 405", func(t *testing.T) {
		t.Parallel()
		_, key := spender(t)
		r := v1Do(t, ta, http.MethodDelete, "/api/v1/balance", key, "")
		check(t, r, http.StatusMethodNotAllowed, "method_not_allowed", store.User{})
		require.Equal(t, "GET, HEAD", r.Header.Get("Allow"))
		require.Equal(t, "GET, HEAD, POST", v1Do(t, ta, http.MethodPut, "/api/v1/usage", key, "").Header.Get("Allow"))
	})
	t.Run("HEAD is answered where GET is", func(t *testing.T) {
		t.Parallel()
		_, key := spender(t)
		r := v1Do(t, ta, http.MethodHead, "/api/v1/balance", key, "")
		require.Equal(t, http.StatusOK, r.Status)
		require.Empty(t, r.Body)
		require.Equal(t, http.StatusUnauthorized, v1Do(t, ta, http.MethodHead, "/api/v1/balance", "", "").Status, "HEAD is authenticated as GET is")
	})
}

// Requests with invalid API keys are counted per IP: past the limit the
// answer is 429 with Retry-After. Valid keys from that IP still work (a
// NAT or an office shares the address), and other IPs still get 401.
func TestAPIInvalidKeysAreLimitedPerIP(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{Env: map[string]string{"TRUST_PROXY": "true"}})
	_, key := v1UserWithKey(t, ta, storetest.UserOpts{})
	from := []string{"X-Forwarded-For", "198.51.100.77"}
	bad := store.APIKeyPrefix + "guessed"
	var r response
	for i := 0; ; i++ {
		r = v1Do(t, ta, http.MethodGet, "/api/v1/balance", bad, "", from...)
		if r.Status != http.StatusUnauthorized {
			require.Equal(t, 100, i, "failures allowed before the limit")
			break
		}
		require.Less(t, i, 100, "no limit on invalid keys")
	}
	require.Equal(t, http.StatusTooManyRequests, r.Status)
	p := v1Decode[v1Problem](t, r)
	require.Equal(t, "too_many_failures", p.Error)
	require.NotEmpty(t, p.Message)
	secs, err := strconv.Atoi(r.Header.Get("Retry-After"))
	require.NoError(t, err)
	require.Greater(t, secs, 0)
	require.LessOrEqual(t, secs, 900)

	require.Equal(t, http.StatusOK, v1Do(t, ta, http.MethodGet, "/api/v1/balance", key, "", from...).Status, "a valid key refused for others' failures")
	require.Equal(t, http.StatusUnauthorized, v1Do(t, ta, http.MethodGet, "/api/v1/balance", bad, "", "X-Forwarded-For", "198.51.100.78").Status)
}
