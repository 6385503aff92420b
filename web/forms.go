package web

import (
	"net/http"
	"strings"
	"unicode/utf8"
)

// maxFieldLen bounds any one form field or query value.
const maxFieldLen = 10_000

// CleanInput refuses, with a 400 page, any request whose query or form
// values are not text: invalid UTF-8, NUL bytes or over-long values. What
// passes can go to Postgres without it refusing the bytes (which would
// otherwise surface as a 500).
func (s *Site) CleanInput(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := r.ParseForm(); err != nil {
			s.errorPage(w, r, errorPage{Status: http.StatusBadRequest, Heading: "Bad request", Message: "We could not read that request."})
			return
		}
		for _, vs := range r.Form {
			for _, v := range vs {
				if len(v) > maxFieldLen || !utf8.ValidString(v) || strings.ContainsRune(v, 0) {
					s.errorPage(w, r, errorPage{Status: http.StatusBadRequest, Heading: "Bad request",
						Message: "Part of that request is not text we can accept. Check what you typed and try again."})
					return
				}
			}
		}
		next.ServeHTTP(w, r)
	})
}

// form carries what a person typed and what was wrong with it, so a page
// can show errors next to fields and keep the input (never passwords).
type form struct {
	Values  map[string]string
	Errors  map[string]string
	Message string // an error about the form as a whole
}

// passwordFields are never echoed back into a page.
func isPasswordField(name string) bool {
	return name == "password" || name == "new_password" || name == "current_password"
}

func newForm() *form {
	return &form{Values: map[string]string{}, Errors: map[string]string{}}
}

// parseForm reads the named fields of a POST. Text is trimmed; passwords
// are kept as typed.
func parseForm(r *http.Request, fields ...string) (*form, bool) {
	f := newForm()
	if err := r.ParseForm(); err != nil {
		return f, false
	}
	for _, name := range fields {
		v := r.PostForm.Get(name)
		if !isPasswordField(name) {
			v = strings.TrimSpace(v)
		}
		f.Values[name] = v
	}
	return f, true
}

// Get returns a field's value for re-display (empty for passwords).
func (f *form) Get(name string) string {
	if f == nil || isPasswordField(name) {
		return ""
	}
	return f.Values[name]
}

func (f *form) raw(name string) string { return f.Values[name] }

// Err returns the error shown next to a field.
func (f *form) Err(name string) string {
	if f == nil {
		return ""
	}
	return f.Errors[name]
}

func (f *form) fail(name, msg string) {
	if _, ok := f.Errors[name]; !ok {
		f.Errors[name] = msg
	}
}

func (f *form) ok() bool { return len(f.Errors) == 0 && f.Message == "" }
