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

// zeroDecimal are the currencies Stripe counts in whole units (its
// "zero-decimal currencies"): an amount of 3000 JPY is ¥3,000, not 30.00.
var zeroDecimal = map[string]bool{
	"bif": true, "clp": true, "djf": true, "gnf": true, "jpy": true, "kmf": true, "krw": true, "mga": true,
	"pyg": true, "rwf": true, "ugx": true, "vnd": true, "vuv": true, "xaf": true, "xof": true, "xpf": true,
}

// CurrencyDecimals is how many decimals a currency's amounts have: 0 for
// Stripe's zero-decimal currencies, 2 for the others used here.
func CurrencyDecimals(currency string) int {
	if zeroDecimal[strings.ToLower(currency)] {
		return 0
	}
	return 2
}

// FormatMoney shows integer minor units as money: (2000, "usd") → "$20.00",
// (3000, "jpy") → "JPY 3,000".
func FormatMoney(minor int64, currency string) string {
	neg := minor < 0
	if neg {
		minor = -minor
	}
	s := currencySymbol(currency) + FormatCredits(minor)
	if CurrencyDecimals(currency) == 2 {
		s = fmt.Sprintf("%s%s.%02d", currencySymbol(currency), FormatCredits(minor/100), minor%100)
	}
	if neg {
		return "-" + s
	}
	return s
}
