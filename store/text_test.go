package store_test

import (
	"context"
	"strings"
	"testing"

	"github.com/quickscale/quickscale/store"
	"github.com/quickscale/quickscale/store/storetest"
)

func TestUnsafeLineAndBlankText(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		s             string
		unsafe, blank bool
	}{
		{"Jane Doe", false, false},
		{"Zoë 🙂 family 👨\u200d👩\u200d👧", false, false}, // the zero-width joiner is allowed
		{"two\nlines", true, false},
		{"tab\there", true, false},
		{"esc\x1b[31m", true, false},
		{"abc\u202egnp.exe", true, false}, // right-to-left override
		{"alice@example.com\u200b", true, false},
		{"\ufeffbom", true, false},
		{"arabic mark \u061c", true, false},
		{"line\u2028separator", true, false},
		{"soft\u00adhyphen", true, false},
		{"\u3164", true, true}, // Hangul filler
		{"\u200b", true, true},
		{" \u00a0 ", false, true},
		{"\u2800\u2800", false, true}, // braille blank
		{"a\u2800b", false, false},
		{"", false, true},
	} {
		if got := store.UnsafeLine(c.s); got != c.unsafe {
			t.Errorf("UnsafeLine(%q) = %v, want %v", c.s, got, c.unsafe)
		}
		if got := store.BlankText(c.s); got != c.blank {
			t.Errorf("BlankText(%q) = %v, want %v", c.s, got, c.blank)
		}
	}
}

// An address an account takes may hold nothing invisible; looking one up
// (sign-in, reset links) only checks its shape, so that addresses stored
// before the rule keep working.
func TestNewEmailAddressesHoldNothingInvisible(t *testing.T) {
	t.Parallel()
	for _, addr := range []string{"alice\u200b@example.com", "alice@exa\u00admple.com", "al\u3164ice@example.com", "ali\u200dce@example.com", "alice\u202e@example.com"} {
		if _, err := store.NormalizeNewEmail(addr); store.ErrorKind(err) != store.KindInvalid {
			t.Errorf("NormalizeNewEmail(%q) = %v, want refused", addr, err)
		}
		if _, err := store.NormalizeEmail(addr); err != nil {
			t.Errorf("NormalizeEmail(%q) = %v: a stored address must still be found", addr, err)
		}
	}
	if got, err := store.NormalizeNewEmail(" Zoë@example.com "); err != nil || got != "Zoë@example.com" {
		t.Errorf("NormalizeNewEmail(Zoë) = %q, %v", got, err)
	}
}

// An address an account takes cannot stand in for another one (uniqueness
// compares lower(email)) and keeps to the limits of mail; ordinary
// addresses, accented ones included, are taken as typed.
func TestNewEmailAddressesCannotStandInForAnother(t *testing.T) {
	t.Parallel()
	for name, addr := range map[string]string{
		"Kelvin sign for K":        "\u212Aate@example.com",
		"dotted capital I":         "\u0130nfo@example.com",
		"decomposed ü":             "u\u0308ni@example.com",
		"fullwidth letters":        "u@\uFF25\uFF38AMPLE.com",
		"Angstrom sign":            "\u212Bsa@example.com",
		"65-octet local part":      strings.Repeat("a", 65) + "@example.com",
		"64-octet label":           "a@" + strings.Repeat("b", 64) + ".com",
		"label starting with -":    "a@-example.com",
		"label ending with -":      "a@example-.com",
		"IP literal":               "x@[127.0.0.1]",
		"IP address":               "x@127.0.0.1",
		"underscore in domain":     "x@ex_ample.com",
		"empty label":              "x@example..com",
		"IDN label over 63 as DNS": "user@" + strings.Repeat("中", 60) + ".cn",
		// Labels already in DNS form pass the same checks as typed ones.
		"A-label of a capital İ":  "a@xn--nfo-eua.com",
		"A-label of a zero width": "a@xn--info-w76a.com",
		"A-label of fullwidth":    "a@xn--th7cjb.com",
		"A-label of a control":    "a@xn--a.com",
	} {
		if _, err := store.NormalizeNewEmail(addr); store.ErrorKind(err) != store.KindInvalid {
			t.Errorf("%s: NormalizeNewEmail(%q) = %v, want refused", name, addr, err)
		}
	}
	// The refusal of a capital that stands in for another letter names it.
	_, err := store.NormalizeNewEmail("\u0130pek@example.com")
	if err == nil || !strings.Contains(err.Error(), `Write 'İ' in lower case`) {
		t.Errorf("İpek@: %v", err)
	}
	for _, addr := range []string{"Zoë@example.com", "ÜNÏ@exämple.com", "Σίσυφος@παράδειγμα.δοκιμή", strings.Repeat("a", 64) + "@example.com",
		"a@" + strings.Repeat("b", 63) + ".com", "first.last+tag@sub-domain.example.co.uk", "x@123.example.com",
		// 66 octets of UTF-8, 28 as DNS writes it (xn--…).
		"user@" + strings.Repeat("中", 22) + ".cn", "ayşe@örnek.com.tr", "Işık@example.com", "Müller@bücher.de",
		"info@xn--bcher-kva.de", "info@XN--BCHER-KVA.de"} {
		if got, err := store.NormalizeNewEmail(addr); err != nil || got != addr {
			t.Errorf("NormalizeNewEmail(%q) = %q, %v, want it as typed", addr, got, err)
		}
	}
}

// Service names and descriptions, shown to every user and served by the
// API, are one line of visible text, whoever writes them.
func TestServiceTextIsOneVisibleLine(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	st := store.New(storetest.NewPool(t), nil)
	good := store.Service{Slug: "render", Name: "Render", Description: "Render a page.", CreditCost: 1, Active: true}
	if _, err := st.UpsertService(ctx, good); err != nil {
		t.Fatalf("a plain service: %v", err)
	}
	for name, sv := range map[string]store.Service{
		"two-line description":  {Slug: "render", Name: "Render", Description: "one\ntwo", CreditCost: 1},
		"escape in description": {Slug: "render", Name: "Render", Description: "\x1b[31mred", CreditCost: 1},
		"bidi override":         {Slug: "render", Name: "Render", Description: "Free \u202egnp.exe", CreditCost: 1},
		"hidden name":           {Slug: "render", Name: "Ren\u200bder", CreditCost: 1},
		"long name":             {Slug: "render", Name: strings.Repeat("n", 101), CreditCost: 1},
	} {
		if _, err := st.UpsertService(ctx, sv); store.ErrorKind(err) != store.KindInvalid {
			t.Errorf("%s: %v, want refused as invalid", name, err)
		}
	}
}
