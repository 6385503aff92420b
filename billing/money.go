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

// threeDecimal are the currencies Stripe counts in thousandths (its
// "three-decimal currencies"): an amount of 1000 KWD is 1.000 KWD.
var threeDecimal = map[string]bool{"bhd": true, "jod": true, "kwd": true, "omr": true, "tnd": true}

// CurrencyDecimals is how many decimals a currency's amounts have, as
// Stripe counts its minor units: 0 for its zero-decimal currencies, 3 for
// its three-decimal ones, 2 for the others.
func CurrencyDecimals(currency string) int {
	switch c := strings.ToLower(currency); {
	case zeroDecimal[c]:
		return 0
	case threeDecimal[c]:
		return 3
	}
	return 2
}

// minorPerUnit is how many minor units make one unit of a currency.
func minorPerUnit(currency string) int64 {
	n := int64(1)
	for range CurrencyDecimals(currency) {
		n *= 10
	}
	return n
}

// splitMinor splits non-negative minor units into whole units and the
// decimals written out ("" in a zero-decimal currency).
func splitMinor(minor int64, currency string) (whole int64, frac string) {
	d := CurrencyDecimals(currency)
	if d == 0 {
		return minor, ""
	}
	per := minorPerUnit(currency)
	return minor / per, fmt.Sprintf("%0*d", d, minor%per)
}

// FormatMoney shows integer minor units as money: (2000, "usd") → "$20.00",
// (3000, "jpy") → "JPY 3,000", (1500, "kwd") → "KWD 1.500".
func FormatMoney(minor int64, currency string) string {
	neg := minor < 0
	if neg {
		minor = -minor
	}
	whole, frac := splitMinor(minor, currency)
	s := currencySymbol(currency) + FormatCredits(whole)
	if frac != "" {
		s += "." + frac
	}
	if neg {
		return "-" + s
	}
	return s
}

// FormatDecimal writes minor units as a plain decimal in the currency's
// units, without symbol or grouping: (1500, "usd") → "15.00", (-500,
// "usd") → "-5.00", (3000, "jpy") → "3000", (1500, "kwd") → "1.500".
func FormatDecimal(minor int64, currency string) string {
	sign := ""
	if minor < 0 {
		sign, minor = "-", -minor
	}
	whole, frac := splitMinor(minor, currency)
	s := sign + strconv.FormatInt(whole, 10)
	if frac != "" {
		s += "." + frac
	}
	return s
}

// ParseDecimal reads a plain decimal amount in a currency's units ("12",
// "12.5", "12.50"; no sign or grouping) as minor units. It refuses more
// decimals than the currency has, and amounts beyond 10^12 units.
func ParseDecimal(v, currency string) (int64, bool) {
	whole, frac, hasPoint := strings.Cut(v, ".")
	d := CurrencyDecimals(currency)
	if whole == "" || len(whole) > 12 || (hasPoint && (frac == "" || len(frac) > d)) {
		return 0, false
	}
	for _, part := range []string{whole, frac} {
		for _, c := range part {
			if c < '0' || c > '9' {
				return 0, false
			}
		}
	}
	n, err := strconv.ParseInt(whole, 10, 64)
	if err != nil {
		return 0, false
	}
	n *= minorPerUnit(currency)
	if frac != "" {
		f, _ := strconv.ParseInt(frac, 10, 64)
		for range d - len(frac) {
			f *= 10
		}
		n += f
	}
	return n, true
}
