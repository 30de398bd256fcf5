package redis

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/ripplehq/ripple/transport"
)

// serverURL returns the test server's URL from RIPPLE_TEST_REDIS_URL, or
// skips (fails under RIPPLE_TEST_REQUIRE_SERVERS=1) when it is unset.
func serverURL(t testing.TB) string {
	t.Helper()
	u := os.Getenv("RIPPLE_TEST_REDIS_URL")
	if u == "" {
		if os.Getenv("RIPPLE_TEST_REQUIRE_SERVERS") == "1" {
			t.Fatal("RIPPLE_TEST_REDIS_URL is not set but RIPPLE_TEST_REQUIRE_SERVERS=1: start redis-server (scripts/test does) and export RIPPLE_TEST_REDIS_URL=redis://127.0.0.1:PORT/0")
		}
		t.Skip("no Redis server: set RIPPLE_TEST_REDIS_URL=redis://127.0.0.1:6379/0 to run the redis transport tests")
	}
	return u
}

// withParams adds query parameters to a URL.
func withParams(raw string, kv ...string) string {
	sep := "?"
	if strings.Contains(raw, "?") {
		sep = "&"
	}
	var b strings.Builder
	b.WriteString(raw)
	for i := 0; i+1 < len(kv); i += 2 {
		b.WriteString(sep + url.QueryEscape(kv[i]) + "=" + url.QueryEscape(kv[i+1]))
		sep = "&"
	}
	return b.String()
}

// testPrefix is a key namespace unique to one test, so tests run in
// parallel on one server.
func testPrefix(t testing.TB) string {
	name := strings.NewReplacer("/", ".", " ", "_", "#", "_", "=", "_").Replace(t.Name())
	return fmt.Sprintf("rt.%s.%s", name, randHex(3))
}

// prefixURL returns the server URL with a fresh prefix whose keys are
// deleted when the test ends.
func prefixURL(t testing.TB) string {
	t.Helper()
	base := serverURL(t)
	p := testPrefix(t)
	t.Cleanup(func() { deletePrefix(base, p) })
	return withParams(base, "prefix", p)
}

func deletePrefix(base, prefix string) {
	opts, err := goredis.ParseURL(base)
	if err != nil {
		return
	}
	c := goredis.NewClient(opts)
	defer c.Close()
	ctx := context.Background()
	iter := c.Scan(ctx, 0, prefix+":*", 1000).Iterator()
	var keys []string
	for iter.Next(ctx) {
		keys = append(keys, iter.Val())
	}
	if len(keys) > 0 {
		c.Del(ctx, keys...)
	}
}

func openURL(t testing.TB, u string, cfg transport.Config) *Driver {
	t.Helper()
	d, err := Open(context.Background(), u, cfg)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { d.Close() })
	return d.(*Driver)
}

func openTest(t testing.TB) *Driver {
	t.Helper()
	return openURL(t, prefixURL(t), transport.Config{})
}

func subscribe(t testing.TB, d *Driver, name, pattern string, lease time.Duration) transport.Subscription {
	t.Helper()
	s, err := d.Subscribe(context.Background(), transport.SubscriptionSpec{Name: name, Pattern: pattern, Lease: lease, MaxAttempts: 5})
	if err != nil {
		t.Fatalf("Subscribe(%s): %v", name, err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

var msgSeq atomic.Int64

func msg(typ string) *transport.Message {
	n := msgSeq.Add(1)
	return &transport.Message{
		ID:    fmt.Sprintf("ev-%d-%s", n, randHex(4)),
		Type:  typ,
		Time:  time.Now(),
		Attrs: map[string]string{"source": "test"},
		Data:  []byte(fmt.Sprintf(`{"n":%d}`, n)),
	}
}

func publish(t testing.TB, d transport.Driver, ms ...*transport.Message) {
	t.Helper()
	if err := d.Publish(context.Background(), ms); err != nil {
		t.Fatalf("Publish: %v", err)
	}
}

// receive waits up to timeout for n deliveries.
func receive(t testing.TB, s transport.Subscription, n int, timeout time.Duration) []*transport.Delivery {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var out []*transport.Delivery
	for len(out) < n {
		ds, err := s.Receive(ctx, n-len(out))
		if err != nil {
			t.Fatalf("Receive: got %d of %d deliveries: %v", len(out), n, err)
		}
		out = append(out, ds...)
	}
	return out
}

// receiveNone asserts nothing arrives within d.
func receiveNone(t testing.TB, s transport.Subscription, d time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	ds, err := s.Receive(ctx, 10)
	if err == nil {
		t.Fatalf("Receive: got %d deliveries (first %s attempt %d), want none", len(ds), ds[0].ID, ds[0].Attempt)
	}
}

func settle(t testing.TB, s transport.Subscription, o transport.Outcome, delay time.Duration, ds ...*transport.Delivery) {
	t.Helper()
	ss := make([]transport.Settlement, len(ds))
	for i, d := range ds {
		ss[i] = transport.Settlement{Delivery: d, Outcome: o, Delay: delay, Error: "boom"}
	}
	if err := s.Settle(context.Background(), ss); err != nil {
		t.Fatalf("Settle: %v", err)
	}
}

func rawClient(t testing.TB, d *Driver) *goredis.Client {
	var c *goredis.Client
	if !d.As(&c) {
		t.Fatal("As(*redis.Client) = false")
	}
	return c
}

// server is a private redis-server process for fault tests.
type server struct {
	t    testing.TB
	bin  string
	dir  string
	port int
	args []string
	cmd  *exec.Cmd
}

// startServer starts a private redis-server with AOF always on a free
// port. It uses RIPPLE_TEST_REDIS_SERVER or redis-server from PATH.
func startServer(t testing.TB, args ...string) *server {
	t.Helper()
	bin := os.Getenv("RIPPLE_TEST_REDIS_SERVER")
	if bin == "" {
		var err error
		if bin, err = exec.LookPath("redis-server"); err != nil {
			if os.Getenv("RIPPLE_TEST_REQUIRE_SERVERS") == "1" {
				t.Fatal("redis-server not found: set RIPPLE_TEST_REDIS_SERVER or put redis-server in PATH")
			}
			t.Skip("redis-server not found (set RIPPLE_TEST_REDIS_SERVER or install redis-server); skipping a test that needs a private server")
		}
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	s := &server{t: t, bin: bin, dir: t.TempDir(), port: port, args: args}
	s.start()
	t.Cleanup(s.stop)
	return s
}

func (s *server) url() string { return fmt.Sprintf("redis://127.0.0.1:%d/0", s.port) }

func (s *server) start() {
	s.t.Helper()
	args := append([]string{"--port", strconv.Itoa(s.port), "--bind", "127.0.0.1", "--dir", s.dir,
		"--appendonly", "yes", "--appendfsync", "always", "--save", "", "--daemonize", "no",
		"--logfile", filepath.Join(s.dir, "redis.log")}, s.args...)
	s.cmd = exec.Command(s.bin, args...)
	if err := s.cmd.Start(); err != nil {
		s.t.Fatalf("start redis-server: %v", err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", s.port))
		if err == nil {
			c.Close()
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	log, _ := os.ReadFile(filepath.Join(s.dir, "redis.log"))
	s.t.Fatalf("redis-server did not start on port %d:\n%s", s.port, log)
}

// kill stops the server with SIGKILL, as a crash would.
func (s *server) kill() {
	if s.cmd != nil && s.cmd.Process != nil {
		_ = s.cmd.Process.Kill()
		_ = s.cmd.Wait()
		s.cmd = nil
	}
}

func (s *server) stop() { s.kill() }
