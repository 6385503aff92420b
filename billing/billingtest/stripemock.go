// Package billingtest runs stripe-mock v0.183.0 for tests: Stripe's
// OpenAPI spec for API version 2023-10-16, which answers 400 to any
// parameter that version does not accept.
package billingtest

import (
	"bufio"
	"bytes"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// stripeMockBin finds the stripe-mock binary: STRIPE_MOCK_BIN (the Makefile
// exports it), the repository's .bin (`make tools`), PATH, then ~/go/bin.
func stripeMockBin(t testing.TB) string {
	t.Helper()
	var tried []string
	candidates := []string{os.Getenv("STRIPE_MOCK_BIN"), filepath.Join("..", ".bin", "stripe-mock"), filepath.Join("..", "..", ".bin", "stripe-mock")}
	if p, err := exec.LookPath("stripe-mock"); err == nil {
		candidates = append(candidates, p)
	}
	if home, err := os.UserHomeDir(); err == nil {
		candidates = append(candidates, filepath.Join(home, "go", "bin", "stripe-mock"))
	}
	for _, c := range candidates {
		if c == "" {
			continue
		}
		tried = append(tried, c)
		if fi, err := os.Stat(c); err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0 {
			return c
		}
	}
	t.Fatalf("stripe-mock v0.183.0 is required but was not found (tried %s): run `make tools` or set STRIPE_MOCK_BIN", strings.Join(tried, ", "))
	return ""
}

// StartStripeMock runs a private stripe-mock on free ports and returns its
// base URL once it answers; it is stopped when the test ends. The test
// fails (never skips) when the binary is missing or does not start.
func StartStripeMock(t testing.TB) string {
	t.Helper()
	bin := stripeMockBin(t)
	cmd := exec.Command(bin, "-http-addr", "127.0.0.1:0", "-https-addr", "127.0.0.1:0", "-strict-version-check")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("start stripe-mock (%s): %v", bin, err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	addr := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if a, ok := strings.CutPrefix(sc.Text(), "Listening for HTTP at address: "); ok {
				addr <- strings.TrimSpace(a)
			}
		}
		close(addr)
	}()
	var base string
	select {
	case a, ok := <-addr:
		if !ok {
			t.Fatalf("stripe-mock (%s) exited without listening: %s", bin, stderr.String())
		}
		base = "http://" + a
	case <-time.After(30 * time.Second):
		t.Fatalf("stripe-mock (%s) did not report its address within 30s: %s", bin, stderr.String())
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		req, _ := http.NewRequest(http.MethodGet, base+"/v1/customers", nil)
		req.SetBasicAuth("sk_test_123", "")
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return base
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("stripe-mock at %s does not answer: %v", base, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
