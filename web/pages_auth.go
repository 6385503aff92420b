package web

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/quickscale/quickscale/jobs"
	"github.com/quickscale/quickscale/store"
)

// limited counts a hit against each key and renders the 429 page when any
// limit is exceeded. It runs before any password is hashed.
func (s *Site) limited(w http.ResponseWriter, r *http.Request, checks ...limitCheck) bool {
	for _, c := range checks {
		ok, retry, err := s.store.Hit(r.Context(), c.key, c.limit)
		if err != nil {
			s.serverError(w, r, err)
			return true
		}
		if !ok {
			s.tooManyRequests(w, r, retry)
			return true
		}
	}
	return false
}

type limitCheck struct {
	key   string
	limit store.Limit
}

// accountKey names a per-account rate limit. The address is hashed so
// that whatever was typed, the key stays short.
func accountKey(prefix, email string) string {
	sum := sha256.Sum256([]byte(strings.ToLower(strings.TrimSpace(email))))
	return prefix + ":acct:" + hex.EncodeToString(sum[:16])
}

// mailAllowed counts an email to address for what (signup, forgot) and
// reports whether it may be sent (MailPerAddress).
func (s *Site) mailAllowed(ctx context.Context, what, address string) (bool, error) {
	ok, _, err := s.store.Hit(ctx, accountKey(what, address), s.limits.MailPerAddress)
	return ok, err
}

// deviceCookie names the cookie of a browser that signed in before.
const deviceCookie = "qs_device"

// knownDevice reports whether the browser signed in before to the account
// of the address typed: its cookie's token names that very account (by id,
// as the database resolves the address, never by comparing text: Unicode
// case folding equates addresses the database keeps apart).
func (s *Site) knownDevice(r *http.Request, typed string) (bool, error) {
	c, err := r.Cookie(deviceCookie)
	if err != nil {
		return false, nil
	}
	id, ok, err := s.store.DeviceUser(r.Context(), c.Value)
	if err != nil || !ok {
		return false, err
	}
	u, err := s.store.UserByEmail(r.Context(), strings.TrimSpace(typed))
	if store.ErrorKind(err) == store.KindNotFound {
		return false, nil
	}
	return err == nil && u.ID == id, err
}

// rememberDevice gives a browser that just signed in as userID a cookie
// that exempts it from the sign-in limit per address. A failure only logs:
// the sign-in stands.
func (s *Site) rememberDevice(w http.ResponseWriter, r *http.Request, userID int64) {
	token, err := s.store.RememberDevice(r.Context(), userID)
	if err != nil {
		s.logger.WarnContext(r.Context(), "remember the browser", "err", err)
		return
	}
	http.SetCookie(w, &http.Cookie{Name: deviceCookie, Value: token, Path: "/login", MaxAge: 365 * 24 * 3600,
		HttpOnly: true, Secure: s.secure, SameSite: http.SameSiteLaxMode})
}

// loginKey names the sign-in limit of one address from one IP.
func loginKey(email, ip string) string {
	return accountKey("login", email) + ":ip:" + ip
}

// clearLoginLimits forgets the failed sign-ins counted for an address, in
// all and from ip, once its owner has shown the password or the mailbox.
func (s *Site) clearLoginLimits(ctx context.Context, email, ip string) {
	for _, key := range []string{accountKey("login", email), loginKey(email, ip)} {
		if err := s.store.ResetLimit(ctx, key); err != nil {
			s.logger.WarnContext(ctx, "clear sign-in limit", "err", err)
		}
	}
}

// sendEmail enqueues a templated email in tx.
func (s *Site) sendEmail(ctx context.Context, tx pgx.Tx, template, to string, data map[string]string) error {
	_, err := s.jobs.InsertTx(ctx, tx, jobs.SendEmail{Template: template, To: to, Data: data}, nil)
	return err
}

// sendLinkEmail enqueues an email carrying a one-time link: the worker
// issues the token when it sends, so no token is ever stored in clear.
func (s *Site) sendLinkEmail(ctx context.Context, tx pgx.Tx, template string, userID int64, purpose, to, path string, data map[string]string) error {
	_, err := s.jobs.InsertTx(ctx, tx, jobs.SendEmail{Template: template, To: to, Data: data,
		Link: &jobs.OneTimeLink{UserID: userID, Purpose: purpose, Email: to, Path: path}}, nil)
	return err
}

// sendEmailNow enqueues an email in its own transaction.
func (s *Site) sendEmailNow(ctx context.Context, template, to string, data map[string]string) error {
	return s.store.InTx(ctx, func(tx pgx.Tx) error { return s.sendEmail(ctx, tx, template, to, data) })
}

type authPage struct {
	Form *form
	Next string
	// Sent is set once a "check your email" step is done.
	Sent  bool
	Email string
	Token string
	// Reset is set on the sign-in page reached after a password reset;
	// KeysRevoked when that reset revoked the account's API keys.
	Reset       bool
	KeysRevoked bool
}

// Signup serves GET and POST /signup.
func (s *Site) Signup() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			s.render(w, r, http.StatusOK, "signup", "Create your account", authPage{Form: newForm()})
			return
		}
		if s.limited(w, r, limitCheck{"signup:ip:" + s.clientIP(r), s.limits.SignupPerIP}) {
			return
		}
		f, ok := parseForm(r, "email", "password")
		if !ok {
			s.errorPage(w, r, errorPage{Status: http.StatusBadRequest, Heading: "Bad request", Message: "We could not read that form."})
			return
		}
		email, err := store.NormalizeNewEmail(f.raw("email"))
		if err != nil {
			f.fail("email", err.Error())
		}
		if err := store.CheckPasswordRules(f.raw("password")); err != nil {
			f.fail("password", err.Error())
		}
		if !f.ok() {
			s.render(w, r, http.StatusUnprocessableEntity, "signup", "Create your account", authPage{Form: f})
			return
		}
		// Hash first in every case, so a taken address costs the same time.
		hash, err := store.HashPassword(r.Context(), f.raw("password"))
		if err != nil {
			s.serverError(w, r, err)
			return
		}
		ctx := r.Context()
		err = s.store.InTx(ctx, func(tx pgx.Tx) error {
			u, err := store.CreateUser(ctx, tx, email, hash, store.RoleUser, false)
			if err != nil {
				return err
			}
			return s.sendLinkEmail(ctx, tx, jobs.EmailVerify, u.ID, store.TokenVerifyEmail, u.Email, "/verify", nil)
		})
		if store.ErrorKind(err) == store.KindConflict {
			// The address has an account: tell its owner, and answer exactly
			// as for a new address so the page reveals nothing.
			// It goes to the address as the account has it, at most
			// MailPerAddress an hour (past it nothing is sent, silently).
			var owner string
			var mail bool
			if mail, err = s.mailAllowed(ctx, "signup", email); err == nil && mail {
				owner, err = s.store.EmailOwner(ctx, email)
			}
			if err == nil && owner != "" {
				err = s.sendEmailNow(ctx, jobs.EmailSignupExisting, owner, map[string]string{
					"LoginLink": s.absURL("/login"), "ResetLink": s.absURL("/password/forgot"),
				})
			}
		}
		if err != nil {
			s.serverError(w, r, err)
			return
		}
		s.render(w, r, http.StatusOK, "signup", "Check your email", authPage{Form: newForm(), Sent: true, Email: email})
	})
}

// Login serves GET and POST /login.
func (s *Site) Login() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		next := safeNext(r.URL.Query().Get("next"))
		if r.Method != http.MethodPost {
			if CurrentUser(r.Context()) != nil {
				redirect(w, r, next)
				return
			}
			reset := hasSession(r) && s.sessions.PopBool(r.Context(), sessNoticeReset)
			keys := reset && s.sessions.PopBool(r.Context(), sessKeysRevoked)
			s.render(w, r, http.StatusOK, "login", "Sign in", authPage{Form: newForm(), Next: next, Reset: reset, KeysRevoked: keys})
			return
		}
		f, ok := parseForm(r, "email", "password", "next")
		if !ok {
			s.errorPage(w, r, errorPage{Status: http.StatusBadRequest, Heading: "Bad request", Message: "We could not read that form."})
			return
		}
		next = safeNext(f.raw("next"))
		ip := s.clientIP(r)
		ctx := r.Context()
		// One IP reaches its limit for an address long before the address's
		// own limit, so guesses from one IP never lock its owner out; and a
		// browser the owner signed in with before is exempt from both limits
		// of the address, so guesses from many IPs do not either, nor
		// guesses from the owner's own IP (a shared NAT).
		// The per-IP limit first: a guess it refuses costs no more reads.
		// Past it, a browser with a device cookie costs a read or two for
		// the check (bounded by that limit), one without costs none.
		if s.limited(w, r, limitCheck{"login:ip:" + ip, s.limits.LoginPerIP}) {
			return
		}
		known, err := s.knownDevice(r, f.raw("email"))
		if err != nil {
			s.serverError(w, r, err)
			return
		}
		if !known && s.limited(w, r, limitCheck{loginKey(f.raw("email"), ip), s.limits.LoginPerAccountIP},
			limitCheck{accountKey("login", f.raw("email")), s.limits.LoginPerAccount}) {
			return
		}
		u, err := s.store.UserByEmail(ctx, strings.TrimSpace(f.raw("email")))
		if err != nil && store.ErrorKind(err) != store.KindNotFound {
			s.serverError(w, r, err)
			return
		}
		// VerifyPassword spends the same time when there is no such user.
		match, rehash, err := store.VerifyPassword(ctx, f.raw("password"), u.PasswordHash)
		if err != nil {
			s.serverError(w, r, err)
			return
		}
		if !match {
			f.Message = "That email and password do not match an account."
			s.render(w, r, http.StatusUnprocessableEntity, "login", "Sign in", authPage{Form: f, Next: next})
			return
		}
		if rehash {
			if h, err := store.HashPassword(ctx, f.raw("password")); err == nil {
				if _, err := s.store.SetPasswordHash(ctx, u.ID, h, false); err != nil {
					s.logger.WarnContext(ctx, "rehash password", "err", err)
				}
			}
		}
		s.clearLoginLimits(ctx, f.raw("email"), ip)
		if err := s.signIn(ctx, u); err != nil {
			s.serverError(w, r, err)
			return
		}
		if !known {
			s.rememberDevice(w, r, u.ID)
		}
		redirect(w, r, next)
	})
}

// Logout serves POST /logout.
func (s *Site) Logout() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := s.sessions.Destroy(r.Context()); err != nil {
			s.serverError(w, r, err)
			return
		}
		redirect(w, r, "/")
	})
}

// Verify serves GET /verify (a confirm button: links are not acted on by a
// GET, which mail scanners fetch) and POST /verify (redeems the token, for
// a new account or a changed address).
func (s *Site) Verify() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			token := r.URL.Query().Get("token")
			if token == "" {
				s.errorPage(w, r, errorPage{Status: http.StatusBadRequest, Heading: "Link incomplete", Message: "This verification link is missing its code. Copy the whole link from the email."})
				return
			}
			s.render(w, r, http.StatusOK, "verify", "Confirm your email", authPage{Token: token})
			return
		}
		f, _ := parseForm(r, "token")
		ctx := r.Context()
		var email string
		err := s.store.InTx(ctx, func(tx pgx.Tx) error {
			t, err := store.UseToken(ctx, tx, f.raw("token"), store.TokenVerifyEmail)
			if err == nil {
				email = t.Email
				ok, err := store.MarkVerified(ctx, tx, t.UserID, t.Email)
				if err != nil {
					return err
				}
				if !ok {
					// The account has moved to another address since.
					return store.Errorf(store.KindInvalid, "This link is invalid or has expired.")
				}
				return s.sendEmail(ctx, tx, jobs.EmailWelcome, t.Email, map[string]string{"DashboardLink": s.absURL("/dashboard")})
			}
			if store.ErrorKind(err) != store.KindInvalid {
				return err
			}
			t, err = store.UseToken(ctx, tx, f.raw("token"), store.TokenChangeEmail)
			if err != nil {
				return err
			}
			email = t.Email
			old, _, err := store.EmailAndBalance(ctx, tx, t.UserID)
			if err != nil {
				return err
			}
			if err := store.ChangeEmail(ctx, tx, t.UserID, t.Email); err != nil {
				return err
			}
			// The payment provider's customer takes the new address too
			// (its receipts), once this commits.
			if _, err := s.jobs.InsertTx(ctx, tx, jobs.SyncCustomerEmail{UserID: t.UserID}, nil); err != nil {
				return err
			}
			// The address the account leaves is told: if the move was not
			// its owner's doing, that is how they find out.
			if old == "" {
				return nil
			}
			return s.sendEmail(ctx, tx, jobs.EmailAddressChanged, old, map[string]string{
				"NewEmail": t.Email, "ContactLink": s.absURL("/contact"),
			})
		})
		if err != nil {
			if k := store.ErrorKind(err); k == store.KindInvalid || k == store.KindConflict {
				s.render(w, r, http.StatusBadRequest, "verify", "Confirm your email", authPage{Form: &form{Message: err.Error()}})
				return
			}
			s.serverError(w, r, err)
			return
		}
		if CurrentUser(ctx) != nil {
			s.flash(ctx, "Thanks, "+email+" is confirmed.")
			redirect(w, r, "/dashboard")
			return
		}
		s.flash(ctx, "Thanks, "+email+" is confirmed. Sign in to continue.")
		redirect(w, r, "/login")
	})
}

// ResendVerification serves POST /verify/resend for a signed-in user.
func (s *Site) ResendVerification() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u := CurrentUser(r.Context())
		if u.Verified() {
			redirect(w, r, "/dashboard")
			return
		}
		if s.limited(w, r, limitCheck{"resend:user:" + formatInt(u.ID), s.limits.ResendPerUser}) {
			return
		}
		ctx := r.Context()
		err := s.store.InTx(ctx, func(tx pgx.Tx) error {
			return s.sendLinkEmail(ctx, tx, jobs.EmailVerify, u.ID, store.TokenVerifyEmail, u.Email, "/verify", nil)
		})
		if err != nil {
			s.serverError(w, r, err)
			return
		}
		s.flash(ctx, "We sent a new confirmation link to "+u.Email+".")
		redirect(w, r, "/dashboard")
	})
}

// ForgotPassword serves GET and POST /password/forgot. The answer is the
// same whether or not the address has an account.
func (s *Site) ForgotPassword() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			s.render(w, r, http.StatusOK, "forgot", "Reset your password", authPage{Form: newForm()})
			return
		}
		// Asking for links and using them are counted apart: a user who
		// asked a few times must still be able to use the link they got.
		if s.limited(w, r, limitCheck{"forgot:ip:" + s.clientIP(r), s.limits.ResetPerIP}) {
			return
		}
		f, _ := parseForm(r, "email")
		email, err := store.NormalizeEmail(f.raw("email"))
		if err != nil {
			f.fail("email", err.Error())
			s.render(w, r, http.StatusUnprocessableEntity, "forgot", "Reset your password", authPage{Form: f})
			return
		}
		ctx := r.Context()
		// Every address is counted, with an account or not; past the limit
		// nothing is sent and the answer is the same: the mailbox holds the
		// earlier emails, the newest with a valid link, so an attacker
		// asking on the owner's behalf cannot deny them one.
		mail, err := s.mailAllowed(ctx, "forgot", email)
		if err != nil {
			s.serverError(w, r, err)
			return
		}
		u, err := s.store.UserByEmail(ctx, email)
		switch {
		case err == nil && !mail:
		case err == nil:
			err = s.store.InTx(ctx, func(tx pgx.Tx) error {
				return s.sendLinkEmail(ctx, tx, jobs.EmailResetPassword, u.ID, store.TokenResetPassword, u.Email, "/password/reset", nil)
			})
		case store.ErrorKind(err) == store.KindNotFound:
			err = nil
		}
		if err != nil {
			s.serverError(w, r, err)
			return
		}
		s.render(w, r, http.StatusOK, "forgot", "Check your email", authPage{Form: newForm(), Sent: true, Email: email})
	})
}

// ResetPassword serves GET and POST /password/reset.
func (s *Site) ResetPassword() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			token := r.URL.Query().Get("token")
			if token == "" {
				s.errorPage(w, r, errorPage{Status: http.StatusBadRequest, Heading: "Link incomplete", Message: "This reset link is missing its code. Copy the whole link from the email, or ask for a new one.", ActionURL: "/password/forgot", ActionLabel: "Ask for a new link"})
				return
			}
			s.render(w, r, http.StatusOK, "reset", "Choose a new password", authPage{Form: newForm(), Token: token})
			return
		}
		if s.limited(w, r, limitCheck{"reset:ip:" + s.clientIP(r), s.limits.ResetPerIP}) {
			return
		}
		f, _ := parseForm(r, "token", "new_password")
		if err := store.CheckPasswordRules(f.raw("new_password")); err != nil {
			f.fail("new_password", err.Error())
			s.render(w, r, http.StatusUnprocessableEntity, "reset", "Choose a new password", authPage{Form: f, Token: f.raw("token")})
			return
		}
		hash, err := store.HashPassword(r.Context(), f.raw("new_password"))
		if err != nil {
			s.serverError(w, r, err)
			return
		}
		ctx := r.Context()
		var revokedKeys int64
		var resetEmail string
		err = s.store.InTx(ctx, func(tx pgx.Tx) error {
			t, err := store.UseToken(ctx, tx, f.raw("token"), store.TokenResetPassword)
			if err != nil {
				return err
			}
			resetEmail = t.Email
			if _, err := store.SetPasswordHash(ctx, tx, t.UserID, hash, true); err != nil {
				return err
			}
			// A reset is what someone does who lost control of the account:
			// API keys made meanwhile (they can spend credits) stop working.
			if revokedKeys, err = store.RevokeAllAPIKeys(ctx, tx, t.UserID); err != nil {
				return err
			}
			// Following the emailed link proved the address.
			if _, err := store.MarkVerified(ctx, tx, t.UserID, t.Email); err != nil {
				return err
			}
			return s.sendEmail(ctx, tx, jobs.EmailPasswordChanged, t.Email, map[string]string{
				"ResetLink": s.absURL("/password/forgot"), "Reset": "yes", "KeysRevoked": formatInt(revokedKeys)})
		})
		if store.ErrorKind(err) == store.KindInvalid {
			f.Message = err.Error()
			s.render(w, r, http.StatusBadRequest, "reset", "Choose a new password", authPage{Form: f})
			return
		}
		if err != nil {
			s.serverError(w, r, err)
			return
		}
		// The owner proved the mailbox: failed sign-ins counted against
		// the address (perhaps someone else's guesses) no longer hold it.
		s.clearLoginLimits(ctx, resetEmail, s.clientIP(r))
		_ = s.sessions.Destroy(ctx)
		s.sessions.Put(ctx, sessNoticeReset, true) // in a new, anonymous session
		s.sessions.Put(ctx, sessKeysRevoked, revokedKeys > 0)
		redirect(w, r, "/login")
	})
}
