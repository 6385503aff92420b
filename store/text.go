package store

import (
	"strings"
	"unicode"
)

// hiddenFormatting reports characters that change how text reads without
// showing themselves: format characters (zero-width space, soft hyphen,
// word joiner, byte-order mark, direction marks, embeddings, overrides and
// isolates, the Arabic letter mark), the other default-ignorable code
// points (e.g. the Hangul filler) — but not the zero-width joiner and
// non-joiner, which emoji and some scripts need.
func hiddenFormatting(r rune) bool {
	if r == '\u200c' || r == '\u200d' {
		return false
	}
	return unicode.Is(unicode.Cf, r) || unicode.Is(unicode.Bidi_Control, r) || unicode.Is(unicode.Other_Default_Ignorable_Code_Point, r)
}

// UnsafeLine reports whether s, one line of text people will read (a
// name, a reason), holds a control character, a line or paragraph
// separator, or hidden formatting that could make it read as something it
// is not.
func UnsafeLine(s string) bool {
	return strings.ContainsFunc(s, func(r rune) bool {
		return unicode.IsControl(r) || unicode.In(r, unicode.Zl, unicode.Zp) || hiddenFormatting(r)
	})
}

// BlankText reports whether s has nothing visible: only spaces and
// invisible characters. The braille blank (U+2800) is a symbol, not a
// space, to Unicode, but it shows as one: a name of it alone reads as
// empty.
func BlankText(s string) bool {
	return !strings.ContainsFunc(s, func(r rune) bool {
		return !unicode.IsSpace(r) && !unicode.IsControl(r) && !unicode.Is(unicode.Cf, r) && !hiddenFormatting(r) && r != '\u2800'
	})
}

// invisibleInAddress reports characters an email address must not hold
// (NormalizeNewEmail): any space (no-break and ideographic ones
// included), control character or hidden formatting, joiners included —
// anything that lets two addresses look the same.
func invisibleInAddress(r rune) bool {
	return unicode.IsSpace(r) || unicode.IsControl(r) || unicode.Is(unicode.Cf, r) || hiddenFormatting(r)
}
