package api

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"testing/iotest"
	"time"

	"github.com/stretchr/testify/require"
)

func newTestServerShell(logs *bytes.Buffer) *server {
	return &server{logger: slog.New(slog.NewJSONHandler(logs, nil)), cfg: Config{MaxBodyBytes: 16}}
}

func TestRecovererTurnsAPanicIntoAGeneric500AndLogsIt(t *testing.T) {
	t.Parallel()
	var logs bytes.Buffer
	s := newTestServerShell(&logs)
	h := requestID(s.recoverer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {
		panic("secret internal detail")
	})))
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/api/v1/balance", nil))
	if rec.Code != http.StatusInternalServerError {
		t.Fatalf("status %d, want 500", rec.Code)
	}
	var p problem
	if err := json.Unmarshal(rec.Body.Bytes(), &p); err != nil {
		t.Fatalf("body is not a JSON problem: %q", rec.Body.String())
	}
	if p.Error != "internal_error" || strings.Contains(rec.Body.String(), "secret") || p.RequestID == "" {
		t.Fatalf("problem %+v leaks or lacks the request id", p)
	}
	if !strings.Contains(logs.String(), "secret internal detail") || !strings.Contains(logs.String(), "stack") {
		t.Fatalf("panic not logged with its stack: %s", logs.String())
	}
}

// An answer JSON cannot carry is not sent as its status with an empty
// body: it is a logged 500 problem.
func TestAnAnswerJSONCannotCarryIsALogged500(t *testing.T) {
	t.Parallel()
	var logs bytes.Buffer
	s := newTestServerShell(&logs)
	h := requestID(s.recoverer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, map[string]any{"next_expiry": time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC)})
	})))
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/api/v1/balance", nil))
	if rec.Code != http.StatusInternalServerError {
		t.Fatalf("status %d, want 500; body %q", rec.Code, rec.Body.String())
	}
	var p problem
	if err := json.Unmarshal(rec.Body.Bytes(), &p); err != nil || p.Error != "internal_error" || p.RequestID == "" {
		t.Fatalf("body %q is not a 500 problem with the request id (%v)", rec.Body.String(), err)
	}
	if !strings.Contains(logs.String(), "year outside of range") {
		t.Fatalf("the encoding error is not logged: %s", logs.String())
	}
}

func TestLimitBodyRefusesOversizedRequests(t *testing.T) {
	t.Parallel()
	var logs bytes.Buffer
	s := newTestServerShell(&logs)
	var readErr error
	h := limitBody(s.cfg.MaxBodyBytes)(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		buf := make([]byte, 64)
		_, readErr = r.Body.Read(buf)
		for readErr == nil {
			_, readErr = r.Body.Read(buf)
		}
	}))
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/contact", strings.NewReader(strings.Repeat("x", 100))))
	if rec.Code != http.StatusRequestEntityTooLarge {
		t.Fatalf("declared length over the cap: %d, want 413", rec.Code)
	}
	// The JSON API checks the key first: its oversized bodies reach the
	// handler, and are cut off when read.
	readErr = nil
	h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest(http.MethodPost, "/api/v1/usage", strings.NewReader(strings.Repeat("x", 100))))
	if !isMaxBytesError(readErr) {
		t.Fatalf("API body over the cap: reading gave %v, want a MaxBytesError", readErr)
	}
	// A body without a declared length is cut off while reading.
	req := httptest.NewRequest(http.MethodPost, "/contact", strings.NewReader(strings.Repeat("x", 100)))
	req.ContentLength = -1
	h.ServeHTTP(httptest.NewRecorder(), req)
	if !isMaxBytesError(readErr) {
		t.Fatalf("reading past the cap gave %v, want a MaxBytesError", readErr)
	}
}

func TestRequestIDIsKeptWhenSaneAndMadeOtherwise(t *testing.T) {
	t.Parallel()
	var seen string
	h := requestID(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { seen = RequestIDFrom(r.Context()) }))
	for in, keep := range map[string]bool{"abc-123_X": true, "bad id with spaces": false, "": false, strings.Repeat("a", 65): false} {
		rec := httptest.NewRecorder()
		req := httptest.NewRequest(http.MethodGet, "/", nil)
		req.Header.Set("X-Request-Id", in)
		h.ServeHTTP(rec, req)
		if got := rec.Header().Get("X-Request-Id"); got != seen || got == "" || (got == in) != keep {
			t.Errorf("incoming %q: response id %q, context id %q", in, got, seen)
		}
	}
}

// A process that is not ready answers /readyz 503 every few seconds until
// it is: that is logged as a warning, not as an error each time; other 5xx
// stay errors.
func TestAccessLogLevels(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		path   string
		status int
		level  string
	}{
		{"/readyz", http.StatusServiceUnavailable, "WARN"},
		{"/api/v1/balance", http.StatusServiceUnavailable, "ERROR"},
		{"/readyz", http.StatusInternalServerError, "ERROR"},
		{"/login", http.StatusOK, "INFO"},
	} {
		var logs bytes.Buffer
		s := newTestServerShell(&logs)
		s.logger = slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
		h := s.accessLog(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(c.status) }))
		h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest(http.MethodGet, c.path, nil))
		var line struct{ Level string }
		if err := json.Unmarshal(logs.Bytes(), &line); err != nil || line.Level != c.level {
			t.Errorf("%s %d: logged %q (%v), want level %s", c.path, c.status, logs.String(), err, c.level)
		}
	}
}

// A request that ran out of time is worth retrying, and says when.
func TestAPITimeoutIs503WithRetryAfter(t *testing.T) {
	t.Parallel()
	var logs bytes.Buffer
	s := newTestServerShell(&logs)
	rec := httptest.NewRecorder()
	s.apiError(rec, httptest.NewRequest(http.MethodPost, "/api/v1/usage", nil), fmt.Errorf("consume: %w", context.DeadlineExceeded))
	if rec.Code != http.StatusServiceUnavailable || rec.Header().Get("Retry-After") == "" {
		t.Fatalf("timeout: %d, Retry-After %q; want 503 with a Retry-After", rec.Code, rec.Header().Get("Retry-After"))
	}
}

// POST /api/v1/usage takes exactly {"service": …}: the field spelled
// exactly so, given once, in one object.
func TestDecodeUsageBodyIsStrict(t *testing.T) {
	t.Parallel()
	for body, want := range map[string]int{
		`{"service":"a"}`:                0,
		` {"service" : "a"} `:            0,
		`{"service":null}`:               0, // the handler answers 422: no service named
		`{}`:                             0,
		`{"Service":"a"}`:                http.StatusBadRequest,
		`{"SERVICE":"a"}`:                http.StatusBadRequest,
		`{"ſervice":"a"}`:                http.StatusBadRequest,
		`{"service":"a","Service":"b"}`:  http.StatusBadRequest,
		`{"service":"a","service":"b"}`:  http.StatusBadRequest,
		`{"service":"a","extra":1}`:      http.StatusBadRequest,
		`null`:                           http.StatusBadRequest,
		`["service"]`:                    http.StatusBadRequest,
		`"service"`:                      http.StatusBadRequest,
		`{"service":5}`:                  http.StatusBadRequest,
		`{"service":"a"`:                 http.StatusBadRequest,
		`{"service":"a"}{"service":"a"}`: http.StatusBadRequest,
		`{"service":"a"} x`:              http.StatusBadRequest,
		``:                               http.StatusBadRequest,
	} {
		service, status, code, msg := decodeUsageBody(strings.NewReader(body))
		if status != want || (status != 0 && (code != "invalid_json" || msg == "")) {
			t.Errorf("%s: status %d code %q message %q, want %d", body, status, code, msg, want)
		}
		if status == 0 && strings.Contains(body, `"a"`) && (service == nil || *service != "a") {
			t.Errorf("%s: service %v, want a", body, service)
		}
	}
	// An unknown field is named in the answer, cut short: a name as long as
	// the body is not echoed back (JSON escapes "<" as six characters).
	long := strings.Repeat("<", 100_000)
	_, status, _, msg := decodeUsageBody(strings.NewReader(`{"` + long + `":1}`))
	if status != http.StatusBadRequest || len(msg) > 200 || !strings.Contains(msg, `Unknown field "<<<<`) {
		t.Errorf("a long unknown field: %d, a message of %d bytes: %.200q", status, len(msg), msg)
	}
	if _, _, _, msg := decodeUsageBody(strings.NewReader(`{"extra":1}`)); !strings.HasPrefix(msg, `Unknown field "extra": `) {
		t.Errorf("a short unknown field is named whole: %q", msg)
	}
	// Past the cap while reading: 413, not a JSON error.
	rec := httptest.NewRecorder()
	capped := http.MaxBytesReader(rec, io.NopCloser(strings.NewReader(`{"service":"a"}`+strings.Repeat(" ", 64))), 32)
	if _, status, code, _ := decodeUsageBody(capped); status != http.StatusRequestEntityTooLarge || code != "body_too_large" {
		t.Errorf("body over the cap: %d %q, want 413 body_too_large", status, code)
	}
}

// Our own deadline (the timeout middleware's) is a 503 to retry, not a
// client that gave up; a client that gave up is a 499, its error logged.
func TestOwnTimeoutIs503AndAClientGoneIs499(t *testing.T) {
	t.Parallel()
	var logs bytes.Buffer
	s := newTestServerShell(&logs)
	waitThenFail := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		<-r.Context().Done()
		s.apiError(w, r, fmt.Errorf("consume: %w", r.Context().Err()))
	})
	rec := httptest.NewRecorder()
	requestID(timeout(20*time.Millisecond)(waitThenFail)).ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/api/v1/balance", nil))
	if rec.Code != http.StatusServiceUnavailable || rec.Header().Get("Retry-After") == "" {
		t.Fatalf("our own deadline: status %d, Retry-After %q, want 503 with one; body %s", rec.Code, rec.Header().Get("Retry-After"), rec.Body)
	}

	ctx, hangUp := context.WithCancel(context.Background())
	hangUp()
	rec = httptest.NewRecorder()
	requestID(timeout(time.Minute)(waitThenFail)).ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/api/v1/balance", nil).WithContext(ctx))
	if rec.Code != StatusClientClosedRequest {
		t.Fatalf("a client gone: status %d, want 499", rec.Code)
	}
	if !strings.Contains(logs.String(), "request abandoned by the client") || !strings.Contains(logs.String(), "consume: context canceled") {
		t.Fatalf("the abandoned request's error is not logged: %s", logs.String())
	}
}

// timeoutReader fails as a connection's read deadline does.
type timeoutReader struct{}

func (timeoutReader) Read([]byte) (int, error) { return 0, os.ErrDeadlineExceeded }

// A body that stops coming is not bad JSON: one cut short is 400
// invalid_request, one that came too slowly 408 (retry it); only a body
// that arrived whole and is not the JSON object is invalid_json.
func TestAPIUsageTellsABodyThatStoppedComingFromBadJSON(t *testing.T) {
	t.Parallel()
	for name, tc := range map[string]struct {
		body   io.Reader
		status int
		code   string
	}{
		"too slow":  {io.MultiReader(strings.NewReader(`{"serv`), timeoutReader{}), http.StatusRequestTimeout, "request_timeout"},
		"cut short": {io.MultiReader(strings.NewReader(`{"serv`), iotest.ErrReader(io.ErrUnexpectedEOF)), http.StatusBadRequest, "invalid_request"},
		"bad JSON":  {io.MultiReader(strings.NewReader(`{"serv`)), http.StatusBadRequest, "invalid_json"},
	} {
		var logs bytes.Buffer
		s := newTestServerShell(&logs)
		req := httptest.NewRequest(http.MethodPost, "/api/v1/usage", tc.body)
		req.Header.Set("Idempotency-Key", "k")
		rec := httptest.NewRecorder()
		requestID(s.handleAPIConsume()).ServeHTTP(rec, req)
		var p problem
		require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &p), name)
		if rec.Code != tc.status || p.Error != tc.code {
			t.Errorf("%s: %d %q, want %d %q", name, rec.Code, p.Error, tc.status, tc.code)
		}
	}
}
