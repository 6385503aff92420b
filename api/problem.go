package api

import (
	"encoding/json"
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

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(true)
	_ = enc.Encode(v)
}

func writeProblem(w http.ResponseWriter, r *http.Request, status int, code, msg string) {
	writeJSON(w, status, problem{Error: code, Message: msg, RequestID: RequestIDFrom(r.Context())})
}
