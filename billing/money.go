package billing

import (
	"fmt"
	"strconv"
	"strings"
)

// FormatCredits writes n with thousands separators: 1234567 → "1,234,567".
func FormatCredits(n int64) string {
	s := strconv.FormatInt(n, 10)
	neg := strings.HasPrefix(s, "-")
	if neg {
		s = s[1:]
	}
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}

// currencySymbol covers the currencies QuickScale prices in; others show
// their ISO code.
func currencySymbol(cur string) string {
	switch strings.ToLower(cur) {
	case "usd":
		return "$"
	case "eur":
		return "€"
	case "gbp":
		return "£"
	}
	return strings.ToUpper(cur) + " "
}

// FormatMoney shows integer minor units as money: (2000, "usd") → "$20.00".
// Every currency used here has two decimals.
func FormatMoney(minor int64, currency string) string {
	neg := minor < 0
	if neg {
		minor = -minor
	}
	s := fmt.Sprintf("%s%s.%02d", currencySymbol(currency), FormatCredits(minor/100), minor%100)
	if neg {
		return "-" + s
	}
	return s
}
