package api

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
)

// problem is the JSON error body of the API: a stable machine-readable
// code and a message for people.
type problem struct {
	Error     string `json:"error"`
	Message   string `json:"message"`
	RequestID string `json:"request_id,omitempty"`
	Balance   *int64 `json:"balance,omitempty"`
	Required  *int64 `json:"required,omitempty"`
}

// writeJSON encodes v before it sends the status. A value JSON cannot
// carry (a time after year 9999, say) is a bug: it panics, before anything
// is written, so that the recoverer logs it with its stack and answers a
// 500 problem with the request id, instead of the status promised with an
// empty body.
func writeJSON(w http.ResponseWriter, status int, v any) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(true)
	if err := enc.Encode(v); err != nil {
		panic(fmt.Errorf("api: encoding a %T answer: %w", v, err))
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_, _ = w.Write(buf.Bytes())
}

func writeProblem(w http.ResponseWriter, r *http.Request, status int, code, msg string) {
	writeJSON(w, status, problem{Error: code, Message: msg, RequestID: RequestIDFrom(r.Context())})
}
