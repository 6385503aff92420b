package store

import (
	"strings"
	"unicode"
)

// hiddenFormatting are the format characters that change how text reads
// without showing themselves: zero-width space and no-break space, the
// word joiner and invisible operators, the byte-order mark, and the
// directional marks, embeddings, overrides and isolates. (The zero-width
// joiner and non-joiner, which emoji and some scripts need, are not.)
func hiddenFormatting(r rune) bool {
	switch {
	case r == '\u200b', r == '\u200e', r == '\u200f', r == '\ufeff':
		return true
	case r >= '\u202a' && r <= '\u202e', r >= '\u2060' && r <= '\u2064', r >= '\u2066' && r <= '\u2069':
		return true
	}
	return false
}

// UnsafeLine reports whether s, one line of text people will read (a
// name, a reason), holds a control character (a line break included) or
// hidden formatting that could make it read as something it is not.
func UnsafeLine(s string) bool {
	return strings.ContainsFunc(s, func(r rune) bool { return unicode.IsControl(r) || hiddenFormatting(r) })
}

// BlankText reports whether s has nothing visible: only spaces and
// invisible characters.
func BlankText(s string) bool {
	return !strings.ContainsFunc(s, func(r rune) bool {
		return !unicode.IsSpace(r) && !unicode.Is(unicode.Cf, r) && !unicode.IsControl(r)
	})
}
