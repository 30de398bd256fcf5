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
	"github.com/ripplehq/ripple/transport"
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
	if !strings.HasPrefix(last, "ripple: ") || strings.HasPrefix(last, "ripple: ripple") {
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

	// Ids that are not there fail the command, named, after the others
	// are done.
	r = rippleCmd(t, "", "dlq", "requeue", "audit.record", "evt-1", "missing-id", "--url", u)
	wantError(t, r, "1 of the 2 ids given is not in audit.record's dead-letter queue: missing-id")
	if r.stdout != "requeued 1 dead letter of audit.record\n" {
		t.Errorf("requeue: %q / %q", r.stdout, r.stderr)
	}
	// The requeued event fails again, permanently.
	waitFor(t, "the event to be dead again", func() bool {
		d, err := bus.DeadLetters(context.Background(), "audit.record", 10)
		return err == nil && len(d) == 1
	})
	wantError(t, rippleCmd(t, "", "dlq", "purge", "audit.record", "gone-1", "gone-2", "--url", u),
		"2 of the 2 ids given are not in audit.record's dead-letter queue: gone-1, gone-2")
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
	wantError(t, rippleCmd(t, "", "publish", "report.requested", "--url", u, "--id", "has space"), `--id "has space"`, "printable ASCII")
	wantError(t, rippleCmd(t, "", "publish", "--url", u), "usage: ripple publish TYPE")
	wantError(t, rippleCmd(t, "", "publish", "a.b", "--bogus"), "unknown flag: --bogus", "ripple publish --help")
	// An empty --data is a mistake (an unset shell variable), not {}.
	wantError(t, rippleCmd(t, "", "publish", "report.requested", "--url", u, "--data", ""), "--data is empty", "--data '{}'")
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

// runFor runs the command line with a deadline, so that a command that
// should have failed at once, such as a tail, ends the test instead of
// hanging it.
func runFor(t *testing.T, d time.Duration, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	var out, errb syncBuffer
	code := run(ctx, args, strings.NewReader(""), &out, &errb)
	return result{code, out.String(), errb.String()}
}

// startTail runs tail in the background until the returned stop is called;
// stop returns its exit status.
func startTail(t *testing.T, args ...string) (out, errb *syncBuffer, stop func() int) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	out, errb = &syncBuffer{}, &syncBuffer{}
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, append([]string{"tail"}, args...), strings.NewReader(""), out, errb)
	}()
	stopped := false
	stop = func() int {
		t.Helper()
		cancel()
		select {
		case code := <-done:
			stopped = true
			return code
		case <-time.After(10 * time.Second):
			t.Fatal("tail did not stop after its context was cancelled")
			return -1
		}
	}
	t.Cleanup(func() {
		if !stopped {
			stop()
		}
	})
	return out, errb, stop
}

// A tail under the name of an application's handler would complete that
// handler's waiting events unhandled and rewrite its pattern.
func TestTailRefusesHandlerName(t *testing.T) {
	if _, ok := transport.Lookup("sqlite"); !ok {
		t.Skip("the sqlite transport is not registered in this build")
	}
	ctx := context.Background()
	u := "sqlite://" + filepath.Join(t.TempDir(), "app.db")
	quiet := ripple.WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil)))

	// The application has subscribed email.welcome and is down while two
	// signups wait for it.
	app, err := ripple.Open(ctx, u, quiet)
	if err != nil {
		t.Fatal(err)
	}
	if err := app.On("user.signup.completed", "email.welcome", func(context.Context, ripple.Event) error { return nil }); err != nil {
		t.Fatal(err)
	}
	if err := app.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := app.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	bus, err := ripple.Open(ctx, u, quiet)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = bus.Close() })
	for i := range 2 {
		if _, err := bus.Publish(ctx, "user.signup.completed", map[string]int{"user": i}); err != nil {
			t.Fatal(err)
		}
	}

	r := runFor(t, 3*time.Second, "tail", "user.>", "--name", "email.welcome", "--url", u)
	wantError(t, r, "--name email.welcome is a handler on "+u, "pattern user.signup.completed",
		"--name tail.email.welcome", "leave --name out")
	if r.stdout != "" {
		t.Errorf("the refused tail printed events:\n%s", r.stdout)
	}
	stats, err := bus.Stats(ctx)
	if err != nil || len(stats) != 1 || stats[0].Handler != "email.welcome" ||
		stats[0].Pattern != "user.signup.completed" || stats[0].Waiting != 2 {
		t.Errorf("after the refused tail: %+v, %v; want email.welcome on user.signup.completed with 2 waiting", stats, err)
	}

	// A name no handler has yet is refused too unless it is tail's own:
	// the application could subscribe it later.
	wantError(t, runFor(t, 3*time.Second, "tail", "user.>", "--name", "ops.watch", "--url", u),
		"--name ops.watch", "start with tail.", "--name tail.ops.watch")
}

// --name keeps the subscription, and a later tail with the same name
// prints what arrived in between.
func TestTailNamedResumes(t *testing.T) {
	bus, u := sharedBus(t, "cli-tail-named-"+randomSuffix())
	_, errb, stop := startTail(t, "user.>", "--name", "tail.ops", "--url", u)
	waitFor(t, "tail to start", func() bool { return strings.Contains(errb.String(), "as handler tail.ops") })
	if code := stop(); code != 0 {
		t.Fatalf("tail exited %d: %s", code, errb.String())
	}
	if _, err := bus.Publish(context.Background(), "user.deleted", map[string]string{"user": "7"}); err != nil {
		t.Fatal(err)
	}
	out, errb, stop := startTail(t, "user.>", "--name", "tail.ops", "--url", u)
	waitFor(t, "the event published while tail was away", func() bool { return strings.Contains(out.String(), "user.deleted") })
	if code := stop(); code != 0 {
		t.Fatalf("tail exited %d: %s", code, errb.String())
	}
}

// The CLI's output is pasted into tickets and CI logs, so it never shows
// the password of a transport URL.
func TestURLsPrintedWithoutPassword(t *testing.T) {
	const secret = "s3cret"
	_, u := sharedBus(t, "ops:"+secret+"@cli-redact-"+randomSuffix())
	shown := strings.Replace(u, secret, "xxxxx", 1)
	noSecret := func(what string, r result) {
		t.Helper()
		if strings.Contains(r.stdout+r.stderr, secret) {
			t.Errorf("%s shows the password:\nstdout: %s\nstderr: %s", what, r.stdout, r.stderr)
		}
	}

	r := mustRun(t, "stats", "--url", u)
	noSecret("stats", r)
	if !strings.Contains(r.stdout, "no handler has subscribed on "+shown) {
		t.Errorf("stats: %q", r.stdout)
	}
	t.Setenv(envURL, u)
	noSecret("stats with $"+envURL, mustRun(t, "stats"))
	t.Setenv(envURL, "")

	r = mustRun(t, "publish", "user.deleted", "--url", u)
	noSecret("publish", r)
	if !strings.Contains(r.stderr, "no handler on "+shown+" subscribes to user.deleted") {
		t.Errorf("publish: %q", r.stderr)
	}

	_, errb, stop := startTail(t, "user.>", "--url", u)
	waitFor(t, "tail to start", func() bool { return strings.Contains(errb.String(), "as handler tail.") })
	stop()
	noSecret("tail", result{stderr: errb.String()})
	if !strings.Contains(errb.String(), "tailing user.> on "+shown) {
		t.Errorf("tail: %q", errb.String())
	}
}

// Mistyped subcommands and help topics fail instead of printing help and
// exiting 0, so a script notices.
func TestUnknownCommands(t *testing.T) {
	wantError(t, rippleCmd(t, "", "dlq", "lsit", "foo"), `unknown command "lsit" for "ripple dlq"`, "did you mean list?", "see 'ripple dlq --help'")
	wantError(t, rippleCmd(t, "", "dlq", "frob", "x"), `unknown command "frob" for "ripple dlq"`, "see 'ripple dlq --help'")
	// The subcommand's flags after a mistyped subcommand do not hide it.
	wantError(t, rippleCmd(t, "", "dlq", "foo", "x", "--url", "memory://"), `unknown command "foo" for "ripple dlq"`)
	wantError(t, rippleCmd(t, "", "dlq", "lsit", "x", "--limit", "3", "--json"), `unknown command "lsit" for "ripple dlq"`, "did you mean list?")
	wantError(t, rippleCmd(t, "", "help", "bogus"), `unknown help topic "bogus"`, "see 'ripple --help'")
	wantError(t, rippleCmd(t, "", "help", "dlq", "lsit"), `unknown help topic "dlq lsit"`, "did you mean list?")
	wantError(t, rippleCmd(t, "", "bogus"), `unknown command "bogus" for "ripple"`, "see 'ripple --help'")
	wantError(t, rippleCmd(t, "", "stast", "--url", "memory://"), `unknown command "stast"`, "did you mean stats?", "see 'ripple --help'")

	for _, args := range [][]string{{"dlq"}, {"dlq", "--help"}, {"help", "dlq"}} {
		if r := mustRun(t, args...); !strings.Contains(r.stdout, "requeue") {
			t.Errorf("ripple %s: %q", strings.Join(args, " "), r.stdout)
		}
	}
	if r := mustRun(t, "help", "dlq", "purge"); !strings.Contains(r.stdout, "--all") {
		t.Errorf("ripple help dlq purge: %q", r.stdout)
	}
	if r := mustRun(t, "help"); !strings.Contains(r.stdout, "publish") {
		t.Errorf("ripple help: %q", r.stdout)
	}
}

// A CLI user sets flags, not Go options, so errors name the flags and
// what the user can do.
func TestPublishErrorsNameFlags(t *testing.T) {
	_, u := sharedBus(t, "cli-publish-flags")
	big := `{"blob":"` + strings.Repeat("a", ripple.DefaultMaxEventSize) + `"}`
	for _, c := range []struct {
		args []string
		want []string
	}{
		{[]string{"--priority", "99999999999"}, []string{"--priority 99999999999 does not fit in 32 bits"}},
		{[]string{"--id", "a b"}, []string{`--id "a b"`, "printable ASCII"}},
		{[]string{"--id", strings.Repeat("i", 300)}, []string{"--id", "1 to 255 bytes"}},
		{[]string{"--key", strings.Repeat("k", 300)}, []string{"--key is 300 bytes"}},
		{[]string{"--priority", "x"}, []string{`invalid argument "x" for "--priority"`, "see 'ripple publish --help'"}},
		{[]string{"--data", big}, []string{"the payload is", "store the data elsewhere"}},
		// A payload under the limit that the key takes over it.
		{[]string{"--data", `"` + strings.Repeat("a", ripple.DefaultMaxEventSize-200) + `"`, "--key", strings.Repeat("k", 255)},
			[]string{"over the 1048576-byte limit", "publish a reference"}},
	} {
		r := rippleCmd(t, "", append([]string{"publish", "report.requested", "--url", u}, c.args...)...)
		wantError(t, r, c.want...)
		if strings.Contains(r.stderr, "With") || strings.Contains(r.stderr, "MaxEventSize") {
			t.Errorf("%s: the error names a Go option: %q", c.args[0], r.stderr)
		}
	}
}

func TestUnsupportedFlag(t *testing.T) {
	for opt, flag := range map[string]string{
		"WithPriority":                   "--priority",
		"WithDelay/WithDeliverAt":        "--delay",
		"WithID (publish deduplication)": "--id",
	} {
		err := fmt.Errorf("ripple: publish: %w", &ripple.NotSupportedError{Transport: "kafka", Option: opt, Hint: "use Idempotent() on handlers"})
		msg := unsupportedFlag(err).Error()
		if !strings.HasPrefix(msg, flag+" is not supported by the kafka transport") || strings.Contains(msg, "With") || strings.Contains(msg, "Idempotent") {
			t.Errorf("%s: %q", opt, msg)
		}
	}
	other := errors.New("ripple: publish on kafka: broker down")
	if got := unsupportedFlag(other); got != other {
		t.Errorf("another error became %v", got)
	}
}

// dlq list says how many dead letters a --limit left out.
func TestDeadLetterListSaysHowManyMore(t *testing.T) {
	bus, u := sharedBus(t, "cli-dlq-more")
	if err := bus.On("job.run", "job.reject", func(context.Context, ripple.Event) error {
		return ripple.Permanent(errors.New("rejected"))
	}); err != nil {
		t.Fatal(err)
	}
	if err := bus.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		if _, err := bus.Publish(context.Background(), "job.run", i); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "5 dead letters", func() bool {
		d, err := bus.DeadLetters(context.Background(), "job.reject", 10)
		return err == nil && len(d) == 5
	})
	r := mustRun(t, "dlq", "list", "job.reject", "--limit", "3", "--url", u)
	if n := strings.Count(r.stdout, "rejected"); n != 3 || !strings.Contains(r.stdout, "and 2 more (5 dead letters in all)") {
		t.Errorf("dlq list --limit 3 of 5:\n%s", r.stdout)
	}
	r = mustRun(t, "dlq", "list", "job.reject", "--limit", "3", "--url", u, "--json")
	var dead []map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &dead); err != nil || len(dead) != 3 || !strings.Contains(r.stderr, "and 2 more") {
		t.Errorf("dlq list --json --limit 3 of 5: %v %q %q", err, r.stdout, r.stderr)
	}
	if r := mustRun(t, "dlq", "list", "job.reject", "--limit", "5", "--url", u); strings.Contains(r.stdout, "more") {
		t.Errorf("dlq list --limit 5 of 5 says there are more:\n%s", r.stdout)
	}
}

// publish on a sqlite file that does not exist says how to create one,
// and --create does.
func TestPublishCreate(t *testing.T) {
	if _, ok := transport.Lookup("sqlite"); !ok {
		t.Skip("the sqlite transport is not registered in this build")
	}
	db := filepath.Join(t.TempDir(), "new.db")
	u := "sqlite://" + db
	wantError(t, rippleCmd(t, "", "publish", "user.signup.completed", "--url", u), "no Ripple database at "+db, "--create")
	wantError(t, rippleCmd(t, "", "stats", "--url", u), "no Ripple database at "+db, "ripple publish TYPE --create --url "+u)
	if _, err := os.Stat(db); err == nil {
		t.Fatal("a refused publish created the database")
	}
	r := mustRun(t, "publish", "user.signup.completed", "--url", u, "--create", "--data", `{"a":1}`)
	if !strings.Contains(r.stdout, "published") {
		t.Errorf("publish --create: %q", r.stdout)
	}
	if _, err := os.Stat(db); err != nil {
		t.Errorf("publish --create left no database: %v", err)
	}
	mustRun(t, "stats", "--url", u)
	wantError(t, rippleCmd(t, "", "publish", "user.signup.completed", "--url", "memory://", "--create"), "--create applies to sqlite:// databases only")
}
