package workers

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"time"

	"github.com/wneessen/go-mail"

	"github.com/quickscale/quickscale/store"
)

// Message is a rendered email.
type Message struct {
	From, To, Subject, Text, HTML string
	// ReplyTo is where replies go, when set.
	ReplyTo string
}

// Mailer delivers rendered email.
type Mailer interface {
	Send(ctx context.Context, m Message) error
}

// ErrPermanent marks a delivery that will never succeed (e.g. the server
// refused the recipient); the job stops instead of retrying.
var ErrPermanent = errors.New("permanent delivery failure")

// SMTPMailer sends over SMTP with github.com/wneessen/go-mail.
type SMTPMailer struct {
	host     string
	port     int
	ssl      bool
	user     string
	password string
}

// NewSMTPMailer parses smtp://[user:pass@]host[:port] (STARTTLS when the
// server offers it) or smtps://… (implicit TLS).
func NewSMTPMailer(rawURL string) (*SMTPMailer, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, err
	}
	m := &SMTPMailer{host: u.Hostname(), ssl: u.Scheme == "smtps"}
	if m.host == "" || (u.Scheme != "smtp" && u.Scheme != "smtps") {
		return nil, fmt.Errorf("SMTP_URL must be smtp://host[:port] or smtps://host[:port]")
	}
	m.port = 587
	if m.ssl {
		m.port = 465
	}
	if p := u.Port(); p != "" {
		if m.port, err = strconv.Atoi(p); err != nil {
			return nil, fmt.Errorf("SMTP_URL port: %w", err)
		}
	}
	if u.User != nil {
		m.user = u.User.Username()
		m.password, _ = u.User.Password()
	}
	return m, nil
}

// Send implements Mailer. Rejections with a 5xx code are ErrPermanent.
func (s *SMTPMailer) Send(ctx context.Context, m Message) error {
	opts := []mail.Option{mail.WithPort(s.port), mail.WithTimeout(20 * time.Second), mail.WithTLSPolicy(mail.TLSOpportunistic)}
	if s.ssl {
		opts = append(opts, mail.WithSSL())
	}
	if s.user != "" {
		opts = append(opts, mail.WithSMTPAuth(mail.SMTPAuthAutoDiscover), mail.WithUsername(s.user), mail.WithPassword(s.password))
	}
	client, err := mail.NewClient(s.host, opts...)
	if err != nil {
		return fmt.Errorf("smtp client: %w", err)
	}
	msg := mail.NewMsg()
	if err := msg.From(m.From); err != nil {
		return fmt.Errorf("%w: bad sender %q: %v", ErrPermanent, m.From, err)
	}
	if err := msg.To(m.To); err != nil {
		return fmt.Errorf("%w: bad recipient %q: %v", ErrPermanent, m.To, err)
	}
	if m.ReplyTo != "" {
		// An address the site checked; should the library still refuse
		// it, the email goes without it (its text names the sender).
		_ = msg.ReplyTo(m.ReplyTo)
	}
	msg.Subject(m.Subject)
	msg.SetDate()
	msg.SetMessageID()
	msg.SetBodyString(mail.TypeTextPlain, m.Text)
	msg.AddAlternativeString(mail.TypeTextHTML, m.HTML)
	// The send gives up when ctx ends (a worker shutting down): the SMTP
	// library's own timeout (20 s) does not watch ctx once connected, and
	// a job still sending past River's stop would be left "running" until
	// River rescues it. A send abandoned here finishes or times out on its
	// own; the job is retried (emails are at least once).
	sent := make(chan error, 1)
	go func() { sent <- client.DialAndSendWithContext(ctx, msg) }()
	select {
	case err = <-sent:
	case <-ctx.Done():
		return fmt.Errorf("smtp send: %w", context.Cause(ctx))
	}
	if err != nil {
		var se *mail.SendError
		if errors.As(err, &se) && !se.IsTemp() && se.ErrorCode() >= 500 {
			return fmt.Errorf("%w: %v", ErrPermanent, err)
		}
		return fmt.Errorf("smtp send: %w", err)
	}
	return nil
}

// MailboxMailer keeps mail in Postgres for /dev/mailbox (no SMTP server).
type MailboxMailer struct {
	store *store.Store
}

// NewMailboxMailer returns a Mailer that stores messages in the dev mailbox.
func NewMailboxMailer(st *store.Store) *MailboxMailer { return &MailboxMailer{store: st} }

// Send implements Mailer.
func (mb *MailboxMailer) Send(ctx context.Context, m Message) error {
	return mb.store.DeliverToMailbox(ctx, store.Mail{To: m.To, Subject: m.Subject, Text: m.Text, HTML: m.HTML})
}
