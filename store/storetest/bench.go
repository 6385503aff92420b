package storetest

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// Latencies collects operation latencies from many goroutines.
type Latencies struct {
	mu sync.Mutex
	d  []time.Duration
}

// Add records one latency.
func (l *Latencies) Add(d time.Duration) {
	l.mu.Lock()
	l.d = append(l.d, d)
	l.mu.Unlock()
}

// AddAll records every latency of o.
func (l *Latencies) AddAll(o *Latencies) {
	o.mu.Lock()
	d := slices.Clone(o.d)
	o.mu.Unlock()
	l.mu.Lock()
	l.d = append(l.d, d...)
	l.mu.Unlock()
}

// Count is how many latencies were recorded.
func (l *Latencies) Count() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.d)
}

// Quantile returns the q-quantile (0..1) of the recorded latencies.
func (l *Latencies) Quantile(q float64) time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.d) == 0 {
		return 0
	}
	s := slices.Clone(l.d)
	slices.Sort(s)
	i := int(q * float64(len(s)-1))
	return s[i]
}

// PgbenchResult is one pgbench run, or the rounds of a Compare.
type PgbenchResult struct {
	TPS      float64
	P50, P99 time.Duration
	Txns     int
	// Ratios are the subject's throughput over the reference's, per round
	// of a Compare.
	Ratios []float64
	lat    *Latencies
}

var tpsRE = regexp.MustCompile(`tps = ([0-9.]+) \(without initial connection time\)`)

// Pgbench runs `pgbench -n -M prepared -c clients -j 2 -T seconds -f script`
// against dbURL and returns its throughput and latency quantiles (from its
// per-transaction log). It fails the benchmark when pgbench is missing.
func Pgbench(tb testing.TB, dbURL, script string, clients int, duration time.Duration) PgbenchResult {
	tb.Helper()
	bin, err := exec.LookPath("pgbench")
	if err != nil {
		tb.Fatalf("pgbench is needed for the reference (Debian: apt-get install postgresql-contrib): %v", err)
	}
	dir := tb.TempDir()
	scriptPath := filepath.Join(dir, "script.sql")
	if err := os.WriteFile(scriptPath, []byte(script), 0o644); err != nil {
		tb.Fatal(err)
	}
	secs := int(duration / time.Second)
	if secs < 1 {
		secs = 1
	}
	cmd := exec.Command(bin, "-n", "-M", "prepared", "-c", strconv.Itoa(clients), "-j", "2",
		"-T", strconv.Itoa(secs), "-f", scriptPath, "-l", "--log-prefix", filepath.Join(dir, "log"), dbURL)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		tb.Fatalf("pgbench: %v\n%s", err, out)
	}
	m := tpsRE.FindSubmatch(out)
	if m == nil {
		tb.Fatalf("pgbench printed no tps:\n%s", out)
	}
	res := PgbenchResult{}
	res.TPS, _ = strconv.ParseFloat(string(m[1]), 64)
	logs, _ := filepath.Glob(filepath.Join(dir, "log.*"))
	var lat Latencies
	for _, f := range logs {
		fh, err := os.Open(f)
		if err != nil {
			tb.Fatal(err)
		}
		sc := bufio.NewScanner(fh)
		for sc.Scan() {
			// client_id transaction_no time script_no time_epoch time_us
			fields := strings.Fields(sc.Text())
			if len(fields) < 3 {
				continue
			}
			us, err := strconv.ParseInt(fields[2], 10, 64)
			if err == nil {
				lat.Add(time.Duration(us) * time.Microsecond)
			}
		}
		fh.Close()
	}
	res.P50, res.P99, res.Txns, res.lat = lat.Quantile(0.50), lat.Quantile(0.99), lat.Count(), &lat
	return res
}

// Compare measures subject and the pgbench reference in rounds that
// alternate between them, so that both see the same machine even when its
// speed drifts (on a shared machine it does, by a third within minutes).
// subject runs for the time it is given and returns its throughput and
// latencies. The result holds the subject's mean throughput and all its
// latencies, and the reference's over all rounds with the per-round ratios.
func Compare(tb testing.TB, rounds int, d time.Duration, subject func(time.Duration) (float64, *Latencies), dbURL, script string, clients int) (float64, *Latencies, PgbenchResult) {
	tb.Helper()
	each := max((d / time.Duration(rounds)).Truncate(time.Second), time.Second)
	var ops float64
	var lat, refLat Latencies
	var ref PgbenchResult
	for range rounds {
		o, l := subject(each)
		r := Pgbench(tb, dbURL, script, clients, each)
		ops += o / float64(rounds)
		lat.AddAll(l)
		refLat.AddAll(r.lat)
		ref.TPS += r.TPS / float64(rounds)
		ref.Txns += r.Txns
		ref.Ratios = append(ref.Ratios, o/r.TPS)
	}
	ref.P50, ref.P99, ref.lat = refLat.Quantile(0.50), refLat.Quantile(0.99), &refLat
	return ops, &lat, ref
}

// Report prints one row of the benchmark table.
func Report(w io.Writer, name string, opsPerSec float64, p50, p99 time.Duration, ref *PgbenchResult, target string) {
	row := fmt.Sprintf("%-44s %10.0f/s  p50 %8s  p99 %8s", name, opsPerSec, ms(p50), ms(p99))
	if ref != nil {
		row += fmt.Sprintf("  | pgbench %8.0f/s p50 %8s p99 %8s  ratio %.2f", ref.TPS, ms(ref.P50), ms(ref.P99), opsPerSec/ref.TPS)
		if len(ref.Ratios) > 0 {
			var rs []string
			for _, r := range ref.Ratios {
				rs = append(rs, fmt.Sprintf("%.2f", r))
			}
			row += " (rounds " + strings.Join(rs, " ") + ")"
		}
	}
	if target != "" {
		row += "  (target " + target + ")"
	}
	fmt.Fprintln(w, row)
}

func ms(d time.Duration) string { return fmt.Sprintf("%.2fms", float64(d)/float64(time.Millisecond)) }
