package web

import (
	"net/http/httptest"
	"testing"
)

// The address rate limits count a caller under.
func TestClientIP(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name   string
		remote string
		xff    []string
		trust  bool
		want   string
	}{
		{"IPv4 connection", "203.0.113.7:5555", nil, false, "203.0.113.7"},
		{"forwarded header ignored without a trusted proxy", "203.0.113.7:5555", []string{"10.0.0.1"}, false, "203.0.113.7"},
		{"last hop of a trusted proxy", "10.0.0.2:80", []string{"198.51.100.1, 203.0.113.9"}, true, "203.0.113.9"},
		{"a forged first line: the proxy's own line is last", "10.0.0.2:80", []string{"10.9.9.9", "203.0.113.9"}, true, "203.0.113.9"},
		{"IPv6 counts as its /64", "[2001:db8:1:2:3:4:5:6]:443", nil, false, "2001:db8:1:2::/64"},
		{"two hosts of one /64 are one", "[2001:db8:1:2::ffff]:443", nil, false, "2001:db8:1:2::/64"},
		{"IPv6 forwarded", "10.0.0.2:80", []string{"2001:db8:aa:bb::1"}, true, "2001:db8:aa:bb::/64"},
		{"IPv4-mapped IPv6 is IPv4", "[::ffff:203.0.113.7]:1", nil, false, "203.0.113.7"},
		{"zone dropped", "[fe80::1%eth0]:1", nil, false, "fe80::/64"},
		{"empty forwarded value falls back", "203.0.113.7:5555", []string{""}, true, "203.0.113.7"},
		{"a port in the forwarded hop is dropped", "10.0.0.2:80", []string{"1.2.3.4:5678"}, true, "1.2.3.4"},
		{"an IPv6 hop with a port", "10.0.0.2:80", []string{"[2001:db8:1:2::9]:443"}, true, "2001:db8:1:2::/64"},
		{"a hop that is no address falls back", "203.0.113.7:5555", []string{"garbage"}, true, "203.0.113.7"},
		{"a connection address that is no address", "pipe", nil, false, "pipe"},
		{"nor with a port", "garbage:80", nil, false, "garbage:80"},
	} {
		r := httptest.NewRequest("GET", "/", nil)
		r.RemoteAddr = c.remote
		for _, v := range c.xff {
			r.Header.Add("X-Forwarded-For", v)
		}
		if got := ClientIP(r, c.trust); got != c.want {
			t.Errorf("%s: %q, want %q", c.name, got, c.want)
		}
	}
}
