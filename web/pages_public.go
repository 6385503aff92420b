package web

import (
	"net/http"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"

	"github.com/quickscale/quickscale/jobs"
	"github.com/quickscale/quickscale/store"
)

// Home serves GET /.
func (s *Site) Home() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		services, err := s.store.ActiveServices(r.Context())
		if err != nil {
			s.serverError(w, r, err)
			return
		}
		s.render(w, r, http.StatusOK, "home", "Credits for your SaaS", map[string]any{
			"Services": services, "Deleted": hasSession(r) && s.sessions.PopBool(r.Context(), sessNoticeDeleted),
		})
	})
}

// About serves GET /about.
func (s *Site) About() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.render(w, r, http.StatusOK, "about", "About", nil)
	})
}

type contactPage struct {
	Form *form
	Sent bool
}

// Contact serves GET and POST /contact. A filled honeypot field ("website",
// hidden from people) is thanked and dropped.
func (s *Site) Contact() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			f := newForm()
			if u := CurrentUser(r.Context()); u != nil {
				f.Values["email"] = u.Email
			}
			s.render(w, r, http.StatusOK, "contact", "Contact us", contactPage{Form: f})
			return
		}
		if s.limited(w, r, limitCheck{"contact:ip:" + s.clientIP(r), s.limits.ContactPerIP}) {
			return
		}
		f, ok := parseForm(r, "name", "email", "message", "website")
		if !ok {
			s.errorPage(w, r, errorPage{Status: http.StatusBadRequest, Heading: "Bad request", Message: "We could not read that form."})
			return
		}
		if f.raw("website") != "" {
			s.render(w, r, http.StatusOK, "contact", "Thanks", contactPage{Form: newForm(), Sent: true})
			return
		}
		if n := utf8.RuneCountInString(f.raw("name")); n == 0 || n > 100 || store.UnsafeLine(f.raw("name")) || store.BlankText(f.raw("name")) {
			f.fail("name", "Tell us your name (one line, up to 100 characters).")
		}
		email, err := store.NormalizeEmail(f.raw("email"))
		if err != nil {
			f.fail("email", err.Error())
		}
		if n := utf8.RuneCountInString(f.raw("message")); n < 10 || n > 5000 {
			f.fail("message", "Write a message of 10 to 5,000 characters.")
		}
		if !f.ok() {
			s.render(w, r, http.StatusUnprocessableEntity, "contact", "Contact us", contactPage{Form: f})
			return
		}
		// Reply-To is the sender, so that Reply answers them, not the
		// site's no-reply address.
		err = s.store.InTx(r.Context(), func(tx pgx.Tx) error {
			_, err := s.jobs.InsertTx(r.Context(), tx, jobs.SendEmail{Template: jobs.EmailContact, To: s.cfg.ContactEmail, ReplyTo: email,
				Data: map[string]string{"Name": f.raw("name"), "Email": email, "Message": f.raw("message")}}, nil)
			return err
		})
		if err != nil {
			s.serverError(w, r, err)
			return
		}
		s.render(w, r, http.StatusOK, "contact", "Thanks", contactPage{Form: newForm(), Sent: true})
	})
}
