package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	goredis "github.com/redis/go-redis/v9"

	"github.com/ripplehq/ripple/examples/signup/signupapp"
	"github.com/ripplehq/ripple/transport"
)

// retrySeed returns a seed with which the Stripe call of at least one of
// the first n event-driven signups fails at first, so that the demo must
// show retries.
func retrySeed(t *testing.T, n int) string {
	for seed := uint64(1); seed < 1000; seed++ {
		for i := 1; i <= n; i++ {
			if signupapp.StripeFails(seed, fmt.Sprintf("evented-%d@example.com", i), 1, signupapp.DefaultConfig().StripeFailureRate) {
				return strconv.FormatUint(seed, 10)
			}
		}
	}
	t.Fatal("no seed makes Stripe fail")
	return ""
}

func TestDemoSummary(t *testing.T) {
	r := mustRun(t, "demo", "--once", "--scale", "0.01", "--signups", "10", "--seed", retrySeed(t, 10), "--url", "memory://")
	out := r.stdout
	for _, want := range []string{
		"transport  memory://",
		"10 signups per version",
		"OK: all 5 handlers completed all 10 signups.",
		"Stripe failed",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("summary lacks %q:\n%s", want, out)
		}
	}
	for _, h := range signupapp.Handlers() {
		row := regexp.MustCompile(`(?m)^  ` + regexp.QuoteMeta(h) + `\s+\S+\s+(\d+)/10\s+(\d+)\s+(\d+)\s+(\d+)$`).FindStringSubmatch(out)
		if row == nil {
			t.Errorf("no summary row for %s:\n%s", h, out)
			continue
		}
		completed, _ := strconv.Atoi(row[1])
		retried, _ := strconv.Atoi(row[2])
		if completed != 10 || row[3] != "0" || row[4] != "0" {
			t.Errorf("%s: completed %s/10, dead %s, queued %s; want 10, 0, 0", h, row[1], row[3], row[4])
		}
		if h == signupapp.HandlerStripeCustomer && retried == 0 {
			t.Errorf("the Stripe handler shows no retries:\n%s", out)
		}
	}
}

func TestDemoJSON(t *testing.T) {
	seed := retrySeed(t, 10)
	r := mustRun(t, "demo", "--once", "--scale", "0.01", "--signups", "10", "--seed", seed, "--url", "memory://", "--json")
	var s demoSummary
	if err := json.Unmarshal([]byte(r.stdout), &s); err != nil {
		t.Fatalf("demo --json printed %q: %v", r.stdout, err)
	}
	checkSummary(t, s, 10)
	if strconv.FormatUint(s.Seed, 10) != seed || s.URL != "memory://" || s.FreshDatabase {
		t.Errorf("summary header: %+v", s)
	}
}

// checkSummary asserts the article's point: the event-driven signup
// answers well before the synchronous one, and every handler still
// completes every signup, with Stripe's failures retried.
func checkSummary(t *testing.T, s demoSummary, n int) {
	t.Helper()
	if !s.AllCompleted || s.Evented.Failed != 0 || s.WaitError != "" {
		t.Fatalf("demo did not complete: %+v", s)
	}
	if s.Evented.P50Seconds*2 > s.Sync.P50Seconds {
		t.Errorf("event-driven p50 %gs is not well under synchronous p50 %gs", s.Evented.P50Seconds, s.Sync.P50Seconds)
	}
	if len(s.Handlers) != 5 {
		t.Fatalf("%d handlers in the summary, want 5", len(s.Handlers))
	}
	for _, h := range s.Handlers {
		if h.Completed != n || h.Dead != 0 {
			t.Errorf("%s: %+v, want %d completed and none dead", h.Handler, h, n)
		}
		if h.Handler == signupapp.HandlerStripeCustomer && h.Retried == 0 {
			t.Errorf("Stripe handler shows no retries: %+v", h)
		}
	}
}

func TestDemoFlags(t *testing.T) {
	wantError(t, rippleCmd(t, "", "demo", "--once", "--signups", "0"), "--signups 0")
	wantError(t, rippleCmd(t, "", "demo", "--once", "--scale", "-1"), "--scale -1")
	wantError(t, rippleCmd(t, "", "demo", "--once", "--url", ""), "--url is empty")
	wantError(t, rippleCmd(t, "", "demo", "--once", "--scale", "fast"), "invalid argument", "--scale")
}

func TestDemoOnSQLite(t *testing.T) {
	if _, ok := transport.Lookup("sqlite"); !ok {
		t.Skip("the sqlite transport is not registered in this build")
	}
	// Without --url the demo recreates ripple-demo.db in the working
	// directory; a stale file from an earlier run must not leak into it.
	t.Chdir(t.TempDir())
	if err := os.WriteFile(demoDB, []byte("not a database"), 0o600); err != nil {
		t.Fatal(err)
	}
	// Scale 0.1 keeps the simulated work (190 ms per synchronous signup)
	// well above the cost of a durable commit.
	r := mustRun(t, "demo", "--once", "--scale", "0.1", "--signups", "10", "--seed", retrySeed(t, 10), "--json")
	var s demoSummary
	if err := json.Unmarshal([]byte(r.stdout), &s); err != nil {
		t.Fatalf("demo --json printed %q: %v", r.stdout, err)
	}
	if s.URL != "sqlite://"+demoDB || !s.FreshDatabase {
		t.Errorf("demo used %s (fresh %v), want a fresh sqlite://%s", s.URL, s.FreshDatabase, demoDB)
	}
	checkSummary(t, s, 10)

	// The database outlives the demo, so the other commands can read it.
	st := mustRun(t, "stats", "--url", "sqlite://"+demoDB, "--json")
	var stats []map[string]any
	if err := json.Unmarshal([]byte(st.stdout), &stats); err != nil || len(stats) != 5 {
		t.Errorf("stats after the demo: %v %s", err, st.stdout)
	}

	// A second run starts from an empty database again.
	r = mustRun(t, "demo", "--once", "--scale", "0.1", "--signups", "3", "--seed", retrySeed(t, 3), "--json")
	if err := json.Unmarshal([]byte(r.stdout), &s); err != nil {
		t.Fatal(err)
	}
	checkSummary(t, s, 3)
	if _, err := os.Stat(filepath.Join(".", demoDB)); err != nil {
		t.Errorf("demo database missing after the run: %v", err)
	}
}

// redisTestURL returns a URL on the test Redis server whose keys start
// with a prefix of their own, deleted when the test ends; without a
// server the test is skipped.
func redisTestURL(t *testing.T, name string) string {
	t.Helper()
	base := os.Getenv("RIPPLE_TEST_REDIS_URL")
	if base == "" {
		if os.Getenv("RIPPLE_TEST_REQUIRE_SERVERS") == "1" {
			t.Fatal("RIPPLE_TEST_REDIS_URL is not set; scripts/test starts a redis-server and sets it")
		}
		t.Skip("no Redis server: set RIPPLE_TEST_REDIS_URL (scripts/test starts one)")
	}
	sep := "?"
	if strings.Contains(base, "?") {
		sep = "&"
	}
	prefix := name + "-" + randomSuffix()
	t.Cleanup(func() { deleteRedisPrefix(t, base, prefix) })
	return base + sep + "prefix=" + prefix
}

// The signup app runs unchanged on Redis: only the URL differs.
func TestDemoOnRedis(t *testing.T) {
	u := redisTestURL(t, "demo-test")
	r := mustRun(t, "demo", "--once", "--scale", "0.05", "--signups", "10", "--seed", retrySeed(t, 10), "--url", u, "--json")
	var s demoSummary
	if err := json.Unmarshal([]byte(r.stdout), &s); err != nil {
		t.Fatalf("demo --json printed %q: %v", r.stdout, err)
	}
	checkSummary(t, s, 10)
}

// Redis keeps no priorities; the error says which flag to leave out.
func TestPublishPriorityOnRedis(t *testing.T) {
	u := redisTestURL(t, "cli-priority")
	r := rippleCmd(t, "", "publish", "report.requested", "--url", u, "--priority", "3")
	wantError(t, r, "--priority is not supported by the redis transport")
	if strings.Contains(r.stderr, "WithPriority") {
		t.Errorf("the error names the Go option: %q", r.stderr)
	}
}

// The demo's summary is shared as it is, so it never shows the password
// of its transport URL.
func TestDemoHidesPassword(t *testing.T) {
	const secret = "s3cret"
	u := "memory://ops:" + secret + "@demo-redact-" + randomSuffix()
	shown := strings.Replace(u, secret, "xxxxx", 1)
	seed := retrySeed(t, 3)
	r := mustRun(t, "demo", "--once", "--scale", "0.01", "--signups", "3", "--seed", seed, "--url", u)
	if strings.Contains(r.stdout+r.stderr, secret) || !strings.Contains(r.stdout, "transport  "+shown) {
		t.Errorf("demo shows the password or not the URL:\nstdout: %s\nstderr: %s", r.stdout, r.stderr)
	}
	r = mustRun(t, "demo", "--once", "--scale", "0.01", "--signups", "3", "--seed", seed, "--url", u, "--json")
	var s demoSummary
	if err := json.Unmarshal([]byte(r.stdout), &s); err != nil {
		t.Fatalf("demo --json printed %q: %v", r.stdout, err)
	}
	if s.URL != shown || strings.Contains(r.stdout+r.stderr, secret) {
		t.Errorf("demo --json url %q, want %q:\nstdout: %s\nstderr: %s", s.URL, shown, r.stdout, r.stderr)
	}

	// The commands the demo suggests carry the hidden URL, and say so.
	var out strings.Builder
	printServing(&out, &demoSummary{URL: "redis://:xxxxx@10.0.0.5:6379/0", passwordHidden: true, Addr: "http://127.0.0.1:8080"}, false, io.Discard)
	if !strings.Contains(out.String(), "ripple stats --url redis://:xxxxx@10.0.0.5:6379/0 (with your password in place of xxxxx)") {
		t.Errorf("serving hints:\n%s", out.String())
	}
}

// deleteRedisPrefix removes the keys a test wrote under prefix, so a
// shared test server is left as it was found.
func deleteRedisPrefix(t *testing.T, base, prefix string) {
	opts, err := goredis.ParseURL(base)
	if err != nil {
		t.Errorf("parsing %s: %v", base, err)
		return
	}
	c := goredis.NewClient(opts)
	defer c.Close()
	ctx := context.Background()
	var keys []string
	iter := c.Scan(ctx, 0, prefix+":*", 1000).Iterator()
	for iter.Next(ctx) {
		keys = append(keys, iter.Val())
	}
	if err := iter.Err(); err != nil {
		t.Errorf("listing the keys under %s: %v", prefix, err)
		return
	}
	if len(keys) > 0 {
		if err := c.Del(ctx, keys...).Err(); err != nil {
			t.Errorf("deleting the keys under %s: %v", prefix, err)
		}
	}
}

func TestShellQuote(t *testing.T) {
	for in, want := range map[string]string{
		"sqlite://ripple-demo.db":               "sqlite://ripple-demo.db",
		"redis://127.0.0.1:6379/0?prefix=d&x=1": "'redis://127.0.0.1:6379/0?prefix=d&x=1'",
		"sqlite:///tmp/it's.db":                 `'sqlite:///tmp/it'\''s.db'`,
		"redis://:p%40ss@host:6379/0":           "redis://:p%40ss@host:6379/0",
		"":                                      "''",
	} {
		if got := shellQuote(in); got != want {
			t.Errorf("shellQuote(%q) = %s, want %s", in, got, want)
		}
	}
}
