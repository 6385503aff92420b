package web

import (
	"errors"
	"net/http"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/quickscale/quickscale/jobs"
	"github.com/quickscale/quickscale/store"
)

type settingsPage struct {
	PasswordForm *form
	EmailForm    *form
	DeleteForm   *form
	Deleted      bool
	// PendingEmail is the address this session asked to change to, not
	// yet confirmed (its link works until PendingUntil). Kept in the
	// session, not read from the tokens, so that the page is the same
	// whether or not the address belongs to someone else.
	PendingEmail string
	PendingUntil time.Time
	// Balance is what deleting the account forfeits (nil if unknown).
	Balance *store.Balance
	// Plan is the live subscription deleting the account ends (nil: none).
	Plan *store.Subscription
}

// renderSettings renders the settings page with the user's balance, which
// the delete form says will be lost.
func (s *Site) renderSettings(w http.ResponseWriter, r *http.Request, status int, page settingsPage) {
	u := CurrentUser(r.Context())
	if u != nil && page.Balance == nil {
		if b, err := s.store.Balance(r.Context(), u.ID); err == nil {
			page.Balance = &b
		}
	}
	if u != nil {
		if live, found, err := s.store.LiveSubscription(r.Context(), u.ID); err == nil && found {
			page.Plan = &live
		}
	}
	if pending := s.sessions.GetString(r.Context(), sessPendingEmail); pending != "" && u != nil {
		ttl, _ := store.TokenTTL(store.TokenChangeEmail)
		until := time.Unix(s.sessions.GetInt64(r.Context(), sessPendingEmailAt), 0).Add(ttl)
		if s.sessions.GetInt64(r.Context(), sessPendingEmailUser) != u.ID || strings.EqualFold(pending, u.Email) || !time.Now().Before(until) {
			// Confirmed, or its link no longer works.
			s.sessions.Remove(r.Context(), sessPendingEmail)
			s.sessions.Remove(r.Context(), sessPendingEmailAt)
			s.sessions.Remove(r.Context(), sessPendingEmailUser)
		} else {
			page.PendingEmail, page.PendingUntil = pending, until
		}
	}
	s.render(w, r, status, "settings", "Settings", page)
}

func newSettingsPage() settingsPage {
	return settingsPage{PasswordForm: newForm(), EmailForm: newForm(), DeleteForm: newForm()}
}

// Settings serves GET /settings.
func (s *Site) Settings() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.renderSettings(w, r, http.StatusOK, newSettingsPage())
	})
}

// settingsPost reads one settings form, places it on the page (where its
// errors will show) and checks the current password. It reports false
// after writing a response.
func (s *Site) settingsPost(w http.ResponseWriter, r *http.Request, place func(*settingsPage, *form), fields ...string) (*form, settingsPage, bool) {
	f, _ := parseForm(r, fields...)
	page := newSettingsPage()
	place(&page, f)
	return f, page, s.reauth(w, r, f, page)
}

// reauth checks the current password of the signed-in user, rate limited
// per user (not per address: failed sign-ins by others do not lock the
// owner's settings). It reports false after writing a response.
func (s *Site) reauth(w http.ResponseWriter, r *http.Request, f *form, page settingsPage) bool {
	u := CurrentUser(r.Context())
	if s.limited(w, r, limitCheck{reauthKey(u.ID), s.limits.ReauthPerUser}) {
		return false
	}
	ok, _, err := store.VerifyPassword(r.Context(), f.raw("current_password"), u.PasswordHash)
	if err != nil {
		s.serverError(w, r, err)
		return false
	}
	if !ok {
		f.fail("current_password", "That is not your current password.")
		s.renderSettings(w, r, http.StatusUnprocessableEntity, page)
		return false
	}
	// As at sign-in, a correct password clears the failures counted so far,
	// here and at sign-in.
	_ = s.store.ResetLimit(r.Context(), reauthKey(u.ID))
	s.clearLoginLimits(r.Context(), u.Email, s.clientIP(r))
	return true
}

func reauthKey(userID int64) string { return "reauth:user:" + formatInt(userID) }

// ChangePassword serves POST /settings/password. Other sessions end; this
// one continues with a new token.
func (s *Site) ChangePassword() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx := r.Context()
		u := CurrentUser(ctx)
		f, page, ok := s.settingsPost(w, r, func(p *settingsPage, f *form) { p.PasswordForm = f }, "current_password", "new_password")
		if !ok {
			return
		}
		if err := store.CheckPasswordRules(f.raw("new_password")); err != nil {
			f.fail("new_password", err.Error())
		} else if f.raw("new_password") == f.raw("current_password") {
			f.fail("new_password", "Choose a password different from the current one.")
		}
		if !f.ok() {
			s.renderSettings(w, r, http.StatusUnprocessableEntity, page)
			return
		}
		hash, err := store.HashPassword(ctx, f.raw("new_password"))
		if err != nil {
			s.serverError(w, r, err)
			return
		}
		var epoch int
		err = s.store.InTx(ctx, func(tx pgx.Tx) error {
			var err error
			if epoch, err = store.SetPasswordHash(ctx, tx, u.ID, hash, true); err != nil {
				return err
			}
			return s.sendEmail(ctx, tx, jobs.EmailPasswordChanged, u.Email, map[string]string{
				"ResetLink": s.absURL("/password/forgot"), "Reset": "", "KeysRevoked": "0"})
		})
		if err != nil {
			s.serverError(w, r, err)
			return
		}
		u.SessionEpoch = epoch
		if err := s.signIn(ctx, *u); err != nil {
			s.serverError(w, r, err)
			return
		}
		s.flash(ctx, "Your password is changed. Other devices have been signed out.")
		redirect(w, r, "/settings")
	})
}

// ChangeEmail serves POST /settings/email: the new address gets a link and
// becomes the sign-in address only once it is confirmed.
func (s *Site) ChangeEmail() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx := r.Context()
		u := CurrentUser(ctx)
		// Each request may send an email to the address typed: counted per
		// user and per address before the password is checked (hashing is
		// the expensive part), whether or not it is right, and never
		// cleared by a right one.
		checks := []limitCheck{{"change-email:user:" + formatInt(u.ID), s.limits.ChangeEmailPerUser}}
		if typed, err := store.NormalizeNewEmail(r.PostFormValue("email")); err == nil {
			// The address is emailed: bounded per address too, or many
			// accounts could flood one mailbox (taken or not, alike).
			checks = append(checks, limitCheck{accountKey("change-email", typed), s.limits.MailPerAddress})
		}
		if s.limited(w, r, checks...) {
			return
		}
		f, page, ok := s.settingsPost(w, r, func(p *settingsPage, f *form) { p.EmailForm = f }, "current_password", "email")
		if !ok {
			return
		}
		email, err := store.NormalizeNewEmail(f.raw("email"))
		if err != nil {
			f.fail("email", err.Error())
		} else if strings.EqualFold(email, u.Email) {
			f.fail("email", "That is already your address.")
		}
		if !f.ok() {
			s.renderSettings(w, r, http.StatusUnprocessableEntity, page)
			return
		}
		owner, err := s.store.EmailOwner(ctx, email)
		if err != nil {
			s.serverError(w, r, err)
			return
		}
		err = s.store.InTx(ctx, func(tx pgx.Tx) error {
			if owner != "" {
				// Answer as if it worked; tell the address's owner instead,
				// at the address as their account has it.
				return s.sendEmail(ctx, tx, jobs.EmailChangeToTaken, owner, map[string]string{
					"LoginLink": s.absURL("/login"), "ResetLink": s.absURL("/password/forgot"),
				})
			}
			return s.sendLinkEmail(ctx, tx, jobs.EmailChangeEmail, u.ID, store.TokenChangeEmail, email, "/verify",
				map[string]string{"OldEmail": u.Email})
		})
		if err != nil {
			s.serverError(w, r, err)
			return
		}
		s.sessions.Put(ctx, sessPendingEmail, email)
		s.sessions.Put(ctx, sessPendingEmailAt, time.Now().Unix())
		s.sessions.Put(ctx, sessPendingEmailUser, u.ID)
		s.flash(ctx, "We sent a confirmation link to "+email+". Your address changes once you follow it.")
		redirect(w, r, "/settings")
	})
}

// DeleteAccount serves POST /settings/delete. It needs the password and
// the word DELETE typed; the account is anonymised and every session ends.
func (s *Site) DeleteAccount() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx := r.Context()
		u := CurrentUser(ctx)
		f, page, ok := s.settingsPost(w, r, func(p *settingsPage, f *form) { p.DeleteForm = f }, "current_password", "confirm")
		if !ok {
			return
		}
		if f.raw("confirm") != "DELETE" {
			f.fail("confirm", "Type DELETE in capitals to confirm.")
			s.renderSettings(w, r, http.StatusUnprocessableEntity, page)
			return
		}
		var forfeited int64
		err := s.store.InTx(ctx, func(tx pgx.Tx) error {
			var err error
			if forfeited, err = store.DeleteUser(ctx, tx, u.ID); err != nil {
				return err
			}
			// Its checkouts still open, for plans and for packs, are closed
			// at the provider by jobs enqueued with the deletion (retried
			// while the provider cannot be reached), so that none is paid
			// for an account that is gone (one paid all the same, say in
			// that instant, is cancelled or its credits forfeited by the
			// worker, and refunded by support, as the event it fails says).
			packs, plans, err := store.OpenCheckoutsOf(ctx, tx, u.ID)
			if err != nil {
				return err
			}
			for _, id := range packs {
				if _, err := s.jobs.InsertTx(ctx, tx, jobs.CloseCheckout{PaymentID: id}, nil); err != nil {
					return err
				}
			}
			for _, id := range plans {
				if _, err := s.jobs.InsertTx(ctx, tx, jobs.CloseCheckout{SubscriptionID: id}, nil); err != nil {
					return err
				}
			}
			// A subscription must not renew for an account that is gone:
			// ended at the provider by a job, with the deletion.
			subs, err := store.LiveSubscriptionsOfUser(ctx, tx, u.ID)
			if err != nil {
				return err
			}
			for _, id := range subs {
				if _, err := s.jobs.InsertTx(ctx, tx, jobs.CancelSubscription{SubscriptionID: id}, nil); err != nil {
					return err
				}
			}
			return nil
		})
		if errors.Is(err, store.ErrLastAdmin) {
			f.fail("confirm", "You are the last admin: nobody could reach the admin pages after you. Make another user an admin first (quickscale users promote).")
			s.renderSettings(w, r, http.StatusConflict, page)
			return
		}
		if err != nil {
			s.serverError(w, r, err)
			return
		}
		if forfeited > 0 && s.metrics != nil {
			s.metrics.CreditsRemoved.WithLabelValues("forfeited").Add(float64(forfeited))
		}
		if err := s.sessions.Destroy(ctx); err != nil {
			s.serverError(w, r, err)
			return
		}
		s.sessions.Put(ctx, sessNoticeDeleted, true) // in a new, anonymous session
		redirect(w, r, "/")
	})
}
