package web

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/quickscale/quickscale/store"
)

func TestCSVCellsCannotBeReadAsFormulas(t *testing.T) {
	for in, want := range map[string]string{
		"=HYPERLINK(\"x\")": "'=HYPERLINK(\"x\")",
		"+1":                "'+1",
		"-2":                "'-2",
		"@SUM(A1)":          "'@SUM(A1)",
		"\tx":               "'\tx",
		"\rx":               "'\rx",
		"refund 1=2":        "refund 1=2",
		"":                  "",
		"ok":                "ok",
	} {
		if got := cell(in); got != want {
			t.Errorf("cell(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestCSVAmountsArePlainDecimals(t *testing.T) {
	for _, c := range []struct {
		minor    int64
		currency string
		want     string
	}{
		{1500, "usd", "15.00"}, {-500, "usd", "-5.00"}, {5, "eur", "0.05"}, {-7, "usd", "-0.07"},
		{123456789, "usd", "1234567.89"}, {3000, "jpy", "3000"}, {-3000, "JPY", "-3000"}, {0, "usd", "0.00"},
		{1500, "kwd", "1.500"}, {-5, "bhd", "-0.005"},
	} {
		if got := csvAmount(c.minor, c.currency); got != c.want {
			t.Errorf("csvAmount(%d, %s) = %q, want %q", c.minor, c.currency, got, c.want)
		}
	}
}

func TestExportRangeReadsDaysBothIncluded(t *testing.T) {
	day := func(s string) time.Time { d, _ := time.Parse(time.DateOnly, s); return d }
	for _, c := range []struct {
		query    string
		from, to time.Time
		bad      bool
	}{
		{query: ""},
		{query: "from=&to="},
		{query: "from=2026-11-01&to=2026-11-30", from: day("2026-11-01"), to: day("2026-12-01")},
		{query: "from=2026-11-05&to=2026-11-05", from: day("2026-11-05"), to: day("2026-11-06")},
		{query: "to=2026-12-31", to: day("2027-01-01")},
		{query: "from=+2026-11-01+", from: day("2026-11-01")},
		{query: "from=2026-11-30&to=2026-11-01", bad: true},
		{query: "from=yesterday", bad: true},
		{query: "to=2026-02-30", bad: true},
		{query: "from=0001-01-01", bad: true},
		{query: "to=99999-01-01", bad: true},
	} {
		r := httptest.NewRequest(http.MethodGet, "/x?"+c.query, nil)
		from, to, problem := exportRange(r)
		if (problem != "") != c.bad {
			t.Errorf("%q: problem %q, want bad=%v", c.query, problem, c.bad)
			continue
		}
		if !c.bad && (!from.Equal(c.from) || !to.Equal(c.to)) {
			t.Errorf("%q: [%v, %v), want [%v, %v)", c.query, from, to, c.from, c.to)
		}
	}
	if got := rangeName(day("2026-11-01"), day("2026-12-01")); got != "2026-11-01_2026-11-30" {
		t.Errorf("rangeName = %q", got)
	}
	if got := rangeName(time.Time{}, time.Time{}); got != "all" {
		t.Errorf("rangeName of everything = %q", got)
	}
}

// An export that fails after part of it was sent must not look whole: the
// connection ends without the chunked body's last chunk, so the client
// reads an error rather than a shorter file.
func TestACSVExportCutShortFailsTheDownload(t *testing.T) {
	s := &Site{logger: slog.New(slog.DiscardHandler), exports: newExportLimiter(4)}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r = r.WithContext(context.WithValue(r.Context(), userKey, &store.User{ID: 1}))
		s.serveCSV(w, r, "x.csv", []string{"n"}, func(e *csvExport) error {
			for i := range 20000 {
				if err := e.row(strings.Repeat("x", 10), url.QueryEscape(string(rune('a'+i%26)))); err != nil {
					return err
				}
			}
			return errors.New("the database went away")
		})
	}))
	defer srv.Close()
	resp, err := http.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "text/csv; charset=utf-8" {
		t.Fatalf("status %d, type %q", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	body, err := io.ReadAll(resp.Body)
	if err == nil {
		t.Fatalf("read %d bytes of a cut export without an error", len(body))
	}
	if len(body) < csvHead {
		t.Fatalf("only %d bytes arrived before the cut; the head (%d) was sent first", len(body), csvHead)
	}
}

// One export at a time per account (h32: one customer's four stalled
// downloads held every turn of the process): a second waits for nobody
// and is told; the process's slots are taken in turn, each given back.
func TestExportsAreOneAtATimePerAccount(t *testing.T) {
	l := newExportLimiter(2)
	ctx := context.Background()
	ok, endA, err := l.begin(ctx, 1)
	if !ok || err != nil {
		t.Fatalf("first export of account 1: %v %v", ok, err)
	}
	if ok, _, _ := l.begin(ctx, 1); ok {
		t.Fatal("a second export of account 1 ran beside the first")
	}
	ok, endB, err := l.begin(ctx, 2)
	if !ok || err != nil {
		t.Fatalf("account 2: %v %v", ok, err)
	}
	// Both slots taken: account 3 waits until its deadline.
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if ok, _, err := l.begin(short, 3); !ok || err == nil {
		t.Fatalf("account 3 got a slot none was free for: %v %v", ok, err)
	}
	// Its wait gave its turn back; a slot freed serves it.
	endA()
	ok, endC, err := l.begin(ctx, 3)
	if !ok || err != nil {
		t.Fatalf("account 3 after a slot was freed: %v %v", ok, err)
	}
	endB()
	endC()
	if ok, end, err := l.begin(ctx, 1); !ok || err != nil {
		t.Fatalf("account 1 again: %v %v", ok, err)
	} else {
		end()
	}
}
