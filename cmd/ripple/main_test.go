package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ripplehq/ripple"
)

// syncBuffer is a bytes.Buffer safe for a command writing while the test
// reads.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

type result struct {
	code           int
	stdout, stderr string
}

// ripple runs the command line in-process.
func rippleCmd(t *testing.T, stdin string, args ...string) result {
	t.Helper()
	var out, errb syncBuffer
	code := run(context.Background(), args, strings.NewReader(stdin), &out, &errb)
	return result{code, out.String(), errb.String()}
}

// mustRun runs the command line and fails the test unless it exits 0.
func mustRun(t *testing.T, args ...string) result {
	t.Helper()
	r := rippleCmd(t, "", args...)
	if r.code != 0 {
		t.Fatalf("ripple %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), r.code, r.stdout, r.stderr)
	}
	return r
}

// wantError checks that the command failed with one line on stderr
// containing every fragment.
func wantError(t *testing.T, r result, fragments ...string) {
	t.Helper()
	if r.code == 0 {
		t.Fatalf("exit 0, want failure; stdout: %s", r.stdout)
	}
	lines := strings.Split(strings.TrimSpace(r.stderr), "\n")
	last := lines[len(lines)-1]
	if !strings.HasPrefix(last, "ripple: ") || strings.HasPrefix(last, "ripple: ripple:") {
		t.Errorf("error line %q should start with a single \"ripple: \"", last)
	}
	for _, f := range fragments {
		if !strings.Contains(last, f) {
			t.Errorf("error line %q does not mention %q", last, f)
		}
	}
}

// sharedBus opens a bus on a named memory store and keeps it open for the
// test, so that the commands, which open the same URL, share its store.
func sharedBus(t *testing.T, name string) (*ripple.Bus, string) {
	t.Helper()
	u := "memory://" + name
	bus, err := ripple.Open(context.Background(), u, ripple.WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil))))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = bus.Close() })
	return bus, u
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestLint(t *testing.T) {
	r := mustRun(t, "lint", "user.signup.completed", "order.payment.failed")
	if r.stdout != "user.signup.completed: ok\norder.payment.failed: ok\n" {
		t.Errorf("clean names: %q", r.stdout)
	}

	r = rippleCmd(t, "", "lint", "user.signup.completed", "createUser", "USER_CREATED")
	if r.code != 1 {
		t.Fatalf("names with advice: exit %d, want 1", r.code)
	}
	for _, want := range []string{"createUser: ", "reads as a command", "USER_CREATED: ", "upper case", "user.signup.completed: ok"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("lint output lacks %q:\n%s", want, r.stdout)
		}
	}
	wantError(t, r, "2 of 3 names have advice")

	r = rippleCmd(t, "", "lint", "--json", "handle-signup")
	var got []struct {
		Name   string
		Advice []string
	}
	if err := json.Unmarshal([]byte(r.stdout), &got); err != nil || len(got) != 1 || len(got[0].Advice) == 0 || r.code != 1 {
		t.Fatalf("lint --json: exit %d, %v, %q", r.code, err, r.stdout)
	}

	wantError(t, rippleCmd(t, "", "lint"), "usage: ripple lint NAME")
}

func TestPublishStatsAndDeadLetters(t *testing.T) {
	bus, u := sharedBus(t, "cli-publish")
	if err := bus.On("user.>", "audit.record", func(context.Context, ripple.Event) error {
		return ripple.Permanent(errors.New("audit store rejected the record"))
	}); err != nil {
		t.Fatal(err)
	}
	if err := bus.Start(context.Background()); err != nil {
		t.Fatal(err)
	}

	r := mustRun(t, "publish", "user.signup.completed", "--url", u, "--json",
		"--data", `{"email":"ada@example.com"}`, "--key", "user-1", "--id", "evt-1")
	var ce map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &ce); err != nil {
		t.Fatalf("publish --json printed %q: %v", r.stdout, err)
	}
	if ce["specversion"] != "1.0" || ce["id"] != "evt-1" || ce["type"] != "user.signup.completed" ||
		ce["partitionkey"] != "user-1" || ce["data"].(map[string]any)["email"] != "ada@example.com" {
		t.Errorf("published event %v", ce)
	}
	if strings.Contains(r.stderr, "no handler") {
		t.Errorf("warned about a type that audit.record matches: %s", r.stderr)
	}

	waitFor(t, "the dead letter", func() bool {
		s, err := bus.Stats(context.Background())
		return err == nil && len(s) == 1 && s[0].Dead == 1
	})

	r = mustRun(t, "stats", "--url", u)
	if !strings.Contains(r.stdout, "HANDLER") || !strings.Contains(r.stdout, "audit.record") || !strings.Contains(r.stdout, "user.>") {
		t.Errorf("stats table:\n%s", r.stdout)
	}
	r = mustRun(t, "stats", "--url", u, "--json")
	var stats []ripple.HandlerStats
	if err := json.Unmarshal([]byte(r.stdout), &stats); err != nil || len(stats) != 1 || stats[0].Dead != 1 {
		t.Fatalf("stats --json: %v %q", err, r.stdout)
	}

	r = mustRun(t, "dlq", "list", "audit.record", "--url", u)
	if !strings.Contains(r.stdout, "evt-1") || !strings.Contains(r.stdout, "audit store rejected") {
		t.Errorf("dlq list:\n%s", r.stdout)
	}
	r = mustRun(t, "dlq", "list", "audit.record", "--url", u, "--json")
	var dead []map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &dead); err != nil || len(dead) != 1 || dead[0]["event"].(map[string]any)["id"] != "evt-1" {
		t.Fatalf("dlq list --json: %v %q", err, r.stdout)
	}
	wantError(t, rippleCmd(t, "", "dlq", "list", "no.such-handler", "--url", u), "unknown handler")
	wantError(t, rippleCmd(t, "", "dlq", "list", "audit.record", "--url", u, "--limit", "0"), "--limit 0")

	wantError(t, rippleCmd(t, "", "dlq", "purge", "audit.record", "--url", u), "--all")
	wantError(t, rippleCmd(t, "", "dlq", "purge", "audit.record", "evt-1", "--all", "--url", u), "not both")

	r = mustRun(t, "dlq", "requeue", "audit.record", "evt-1", "missing-id", "--url", u)
	if r.stdout != "requeued 1 dead letter of audit.record\n" || !strings.Contains(r.stderr, "1 of the 2 ids") {
		t.Errorf("requeue: %q / %q", r.stdout, r.stderr)
	}
	// The requeued event fails again, permanently.
	waitFor(t, "the event to be dead again", func() bool {
		d, err := bus.DeadLetters(context.Background(), "audit.record", 10)
		return err == nil && len(d) == 1
	})
	r = mustRun(t, "dlq", "purge", "audit.record", "--all", "--url", u)
	if r.stdout != "purged 1 dead letter of audit.record\n" {
		t.Errorf("purge --all: %q", r.stdout)
	}
	if d, _ := bus.DeadLetters(context.Background(), "audit.record", 10); len(d) != 0 {
		t.Errorf("%d dead letters left after purge --all", len(d))
	}
}

func TestPublishOptionsAndInput(t *testing.T) {
	_, u := sharedBus(t, "cli-publish-opts")

	r := mustRun(t, "publish", "report.requested", "--url", u, "--delay", "10m", "--priority", "5", "--key", "acme")
	for _, want := range []string{"published ", "report.requested", "deliver after", "key", "acme", "priority", "5", "data", "{}"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("publish output lacks %q:\n%s", want, r.stdout)
		}
	}
	if !strings.Contains(r.stderr, "no handler on "+u+" subscribes to report.requested") {
		t.Errorf("no warning about the missing subscriber: %q", r.stderr)
	}

	file := filepath.Join(t.TempDir(), "payload.json")
	if err := os.WriteFile(file, []byte(`{"from":"file"}`+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	r = mustRun(t, "publish", "report.requested", "--url", u, "--data", "@"+file, "--json")
	if !strings.Contains(r.stdout, `"from": "file"`) {
		t.Errorf("--data @file: %s", r.stdout)
	}
	r = rippleCmd(t, `{"from":"stdin"}`, "publish", "report.requested", "--url", u, "--data", "-", "--json")
	if r.code != 0 || !strings.Contains(r.stdout, `"from": "stdin"`) {
		t.Errorf("--data -: exit %d %s %s", r.code, r.stdout, r.stderr)
	}

	wantError(t, rippleCmd(t, "", "publish", "report.requested", "--url", u, "--data", `{"a":`), "not valid JSON", "--data")
	wantError(t, rippleCmd(t, "", "publish", "report.requested", "--url", u, "--data", "@/no/such/file.json"), "reading --data")
	wantError(t, rippleCmd(t, "", "publish", "User.Created", "--url", u), "invalid name", "upper case")
	wantError(t, rippleCmd(t, "", "publish", "report.requested", "--url", u, "--delay", "-1s"), "--delay -1s is negative")
	wantError(t, rippleCmd(t, "", "publish", "report.requested", "--url", u, "--id", "has space"), "WithID")
	wantError(t, rippleCmd(t, "", "publish", "--url", u), "usage: ripple publish TYPE")
	wantError(t, rippleCmd(t, "", "publish", "a.b", "--bogus"), "unknown flag: --bogus", "ripple publish --help")
}

func TestURLResolution(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "nowhere.db")

	wantError(t, rippleCmd(t, "", "stats", "--url", "sqlite://"+missing), "no Ripple database at "+missing)

	t.Setenv(envURL, "sqlite://"+missing)
	wantError(t, rippleCmd(t, "", "stats"), "no Ripple database at "+missing, "RIPPLE_URL")
	// --url wins over the environment.
	_, u := sharedBus(t, "cli-url")
	if r := mustRun(t, "stats", "--url", u); !strings.Contains(r.stdout, "no handler has subscribed on "+u) {
		t.Errorf("stats on an empty store: %q", r.stdout)
	}

	t.Setenv(envURL, "")
	wantError(t, rippleCmd(t, "", "stats", "--url", "bogus://x"), "unknown transport", "bogus")
	wantError(t, rippleCmd(t, "", "stats", "--url", "no-scheme"), "has no scheme")
	wantError(t, rippleCmd(t, "", "stats", "--url", ""), "--url is empty")
	wantError(t, rippleCmd(t, "", "nonsense"), `unknown command "nonsense"`)
}

func TestTail(t *testing.T) {
	bus, u := sharedBus(t, "cli-tail-"+randomSuffix())
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var out, errb syncBuffer
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{"tail", "user.>", "--url", u, "--json"}, strings.NewReader(""), &out, &errb)
	}()

	// tail announces itself once its subscription exists.
	waitFor(t, "tail to start", func() bool { return strings.Contains(errb.String(), "as handler tail.") })
	stats, err := bus.Stats(context.Background())
	if err != nil || len(stats) != 1 || !strings.HasPrefix(stats[0].Handler, "tail.") || stats[0].Pattern != "user.>" {
		t.Fatalf("subscriptions while tailing: %+v, %v", stats, err)
	}
	if !strings.Contains(errb.String(), "as handler "+stats[0].Handler) {
		t.Errorf("tail named another handler than %s: %q", stats[0].Handler, errb.String())
	}
	for _, typ := range []string{"user.signup.completed", "order.placed", "user.deleted"} {
		if _, err := bus.Publish(context.Background(), typ, map[string]string{"t": typ}); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "both user events to be printed", func() bool { return strings.Count(out.String(), "\n") >= 2 })
	cancel()
	select {
	case code := <-done:
		if code != 0 {
			t.Fatalf("tail exited %d: %s", code, errb.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("tail did not stop after its context was cancelled")
	}
	if stats, err := bus.Stats(context.Background()); err != nil || len(stats) != 0 {
		t.Errorf("tail left subscriptions behind: %+v, %v", stats, err)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("tail printed %d lines, want the 2 user events:\n%s", len(lines), out.String())
	}
	var types []string
	for _, line := range lines {
		var ce map[string]any
		if err := json.Unmarshal([]byte(line), &ce); err != nil || ce["specversion"] != "1.0" {
			t.Errorf("line %s is not a CloudEvent: %v", line, err)
		}
		types = append(types, fmt.Sprint(ce["type"]))
	}
	slices.Sort(types)
	if !slices.Equal(types, []string{"user.deleted", "user.signup.completed"}) {
		t.Errorf("tail printed %v, want the two user events", types)
	}

	wantError(t, rippleCmd(t, "", "tail", "user.>", "--url", u, "--name", "Bad Name"), "handler name")
	wantError(t, rippleCmd(t, "", "tail", "user.>.x", "--url", u), "pattern")
}
