package store_test

import (
	"testing"

	"github.com/quickscale/quickscale/store"
)

func TestUnsafeLineAndBlankText(t *testing.T) {
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
		{"\u200b", true, true},
		{" \u00a0 ", false, true},
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
