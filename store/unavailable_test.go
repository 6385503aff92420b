package store_test

import (
	"context"
	"io"
	"net"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/quickscale/quickscale/store"
	"github.com/quickscale/quickscale/store/storetest"
)

// A database out of reach is "unavailable" (a 503, retry later); a
// configuration fault (no such database, role or password) is not: it
// would never pass, and must show as an error.
func TestIsUnavailableTellsOutagesFromConfigurationFaults(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	server, err := pgx.ParseConfig(storetest.ServerURL())
	if err != nil {
		t.Fatal(err)
	}
	server.ConnectTimeout = 5 * time.Second
	noPort, noDatabase, noRole := server.Copy(), server.Copy(), server.Copy()
	noPort.Port, noPort.Fallbacks = 1, nil
	noDatabase.Database = "no_such_database_here"
	noRole.User, noRole.Password = "no_such_role_here", ""
	for name, c := range map[string]struct {
		cfg  *pgx.ConnConfig
		want bool
	}{
		"nothing listening": {noPort, true},
		"no such database":  {noDatabase, false},
		"no such role":      {noRole, false},
	} {
		conn, err := pgx.ConnectConfig(ctx, c.cfg)
		if err == nil {
			_ = conn.Close(ctx)
			t.Fatalf("%s: connected", name)
		}
		if got := store.IsUnavailable(err); got != c.want {
			t.Errorf("%s: IsUnavailable %v, want %v (%v)", name, got, c.want, err)
		}
	}
}

// cutProxy forwards TCP connections to the test server until cut, which
// closes every connection at once: the database lost in the middle of a
// statement, as when its host or the network goes away.
type cutProxy struct {
	ln    net.Listener
	mu    sync.Mutex
	conns []net.Conn
}

func newCutProxy(t *testing.T, target string) *cutProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	p := &cutProxy{ln: ln}
	t.Cleanup(func() { _ = ln.Close(); p.cut() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s, err := net.Dial("tcp", target)
			if err != nil {
				_ = c.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, c, s)
			p.mu.Unlock()
			go func() { _, _ = io.Copy(s, c); _ = s.Close() }()
			go func() { _, _ = io.Copy(c, s); _ = c.Close() }()
		}
	}()
	return p
}

func (p *cutProxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		_ = c.Close()
	}
	p.conns = nil
}

// A connection lost while a statement runs is an outage (503, retry with
// the same key), not a fault of ours (500): the JSON API answered a spend
// cut this way with 500, and the spend was made all the same.
func TestIsUnavailableCountsAConnectionLostMidStatement(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	cfg, err := pgx.ParseConfig(storetest.ServerURL())
	require.NoError(t, err)
	proxy := newCutProxy(t, net.JoinHostPort(cfg.Host, strconv.Itoa(int(cfg.Port))))
	through := cfg.Copy()
	through.Host, through.Port, through.Fallbacks = "127.0.0.1", uint16(proxy.ln.Addr().(*net.TCPAddr).Port), nil
	through.RuntimeParams["application_name"] = "qs-cut-" + store.NewSecret()[:8]
	conn, err := pgx.ConnectConfig(ctx, through)
	require.NoError(t, err)
	defer func() { _ = conn.Close(ctx) }()
	direct, err := pgx.ConnectConfig(ctx, cfg)
	require.NoError(t, err)
	defer func() { _ = direct.Close(ctx) }()

	done := make(chan error, 1)
	go func() {
		var x int
		err := conn.QueryRow(ctx, `SELECT 1 FROM pg_sleep($1)`, 30).Scan(&x)
		done <- err
	}()
	storetest.WaitFor(t, "the statement to run", func() bool {
		var n int
		require.NoError(t, direct.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 AND query LIKE '%pg_sleep%'`,
			through.RuntimeParams["application_name"]).Scan(&n))
		return n > 0
	})
	proxy.cut()
	err = <-done
	require.Error(t, err)
	require.True(t, store.IsUnavailable(err), "a connection lost mid-statement: %v (%T)", err, err)
	_, err = direct.Exec(ctx, `SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1`, through.RuntimeParams["application_name"])
	require.NoError(t, err)
}
