package store

import (
	"errors"
	"fmt"
)

// Kind classifies a domain error so that each surface (HTML, JSON, CLI) can
// turn it into the right response in one place.
type Kind int

// Error kinds.
const (
	KindInternal Kind = iota
	KindNotFound
	KindInvalid
	KindConflict
	KindInsufficientCredits
	KindUnauthorized
	KindForbidden
)

func (k Kind) String() string {
	switch k {
	case KindNotFound:
		return "not_found"
	case KindInvalid:
		return "invalid"
	case KindConflict:
		return "conflict"
	case KindInsufficientCredits:
		return "insufficient_credits"
	case KindUnauthorized:
		return "unauthorized"
	case KindForbidden:
		return "forbidden"
	default:
		return "internal"
	}
}

// Error is a domain error: a kind and a message safe to show to the user.
type Error struct {
	Kind    Kind
	Message string
}

func (e *Error) Error() string { return e.Message }

// Errorf builds a domain error of kind k.
func Errorf(k Kind, format string, args ...any) error {
	return &Error{Kind: k, Message: fmt.Sprintf(format, args...)}
}

// ErrorKind returns the kind of err, KindInternal when it is not a domain error.
func ErrorKind(err error) Kind {
	var de *Error
	if errors.As(err, &de) {
		return de.Kind
	}
	var ie *InsufficientCreditsError
	if errors.As(err, &ie) {
		return KindInsufficientCredits
	}
	return KindInternal
}

// ErrNotFound is returned when a looked-up row does not exist.
var ErrNotFound = &Error{Kind: KindNotFound, Message: "We could not find that."}
