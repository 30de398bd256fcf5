package transporttest

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ripplehq/ripple"
)

// The environment of a crash-test child process.
const (
	envRole = "RIPPLE_TRANSPORTTEST_ROLE"
	envURL  = "RIPPLE_TRANSPORTTEST_URL"

	roleWorker    = "worker"
	rolePublisher = "publisher"
)

// What the crash-test children and their parents agree on.
const (
	crashWorkType   = "conformance.crash.assigned"
	crashWorkName   = "crash.worker"
	crashWorkLease  = time.Second
	crashWorkSlots  = 4
	crashPubType    = "conformance.crash.published"
	crashPubName    = "crash.sink"
	childWatchdog   = 2 * time.Minute
	ackLinePrefix   = "ack "
	gotLinePrefix   = "got "
	readyLine       = "ready"
	ackLineSuffix   = " ok"
	crashWorkEvents = 10
)

// runChild plays a crash-test child's role and exits the process; the
// parent kills it with SIGKILL before it would return on its own.
func runChild(t *testing.T, h Harness, role, url string) {
	go func() {
		// A parent that died without killing its child must not leave it
		// running forever.
		time.Sleep(childWatchdog)
		fmt.Fprintln(os.Stderr, "transporttest child: watchdog expired; exiting")
		os.Exit(3)
	}()
	fail := func(format string, args ...any) {
		fmt.Fprintf(os.Stderr, "transporttest child (%s): %s\n", role, fmt.Sprintf(format, args...))
		os.Exit(2)
	}
	opts := append([]ripple.Option{ripple.WithLogger(slog.New(slog.NewTextHandler(os.Stderr, nil)))}, h.Options...)
	bus, err := ripple.Open(bg, url, opts...)
	if err != nil {
		fail("open %s: %v", url, err)
	}
	switch role {
	case roleWorker:
		// Takes events and never finishes them: the parent kills the
		// process while every slot holds a leased event.
		err := bus.On(crashWorkType, crashWorkName, func(ctx context.Context, e ripple.Event) error {
			fmt.Println(gotLinePrefix + e.ID)
			<-ctx.Done()
			return ctx.Err()
		}, ripple.Lease(crashWorkLease), ripple.Concurrency(crashWorkSlots), ripple.Timeout(time.Hour))
		if err != nil {
			fail("On: %v", err)
		}
		if err := bus.Start(bg); err != nil {
			fail("Start: %v", err)
		}
		fmt.Println(readyLine)
		select {}
	case rolePublisher:
		// Publishes as fast as it can and reports each acknowledged id;
		// a line is printed only after Publish returned nil.
		for i := 0; ; i++ {
			ev, err := bus.Publish(bg, crashPubType, map[string]int{"i": i})
			if err != nil {
				fail("Publish: %v", err)
			}
			fmt.Println(ackLinePrefix + ev.ID + ackLineSuffix)
		}
	case roleConcurrentPublishers:
		runConcurrentPublishers(bus)
	default:
		fail("unknown role %q in %s", role, envRole)
	}
	t.Fatal("unreachable")
}

// child is a crash-test child process seen from the parent.
type child struct {
	cmd    *exec.Cmd
	stderr *syncBuffer

	mu    sync.Mutex
	lines []string
	eof   chan struct{}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// startChild runs the test binary again, running only this test, as a
// child that plays role against url.
func (s *suite) startChild(t *testing.T, role, url string) *child {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		exe = os.Args[0]
	}
	cmd := exec.Command(exe, "-test.run=^"+regexp.QuoteMeta(s.topTest)+"$", "-test.count=1", "-test.timeout=3m")
	cmd.Env = append(os.Environ(), envRole+"="+role, envURL+"="+url)
	c := &child{cmd: cmd, stderr: &syncBuffer{}, eof: make(chan struct{})}
	cmd.Stderr = c.stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatalf("stdout pipe: %v", err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start child %s: %v", exe, err)
	}
	go func() {
		defer close(c.eof)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			c.mu.Lock()
			c.lines = append(c.lines, sc.Text())
			c.mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		c.kill(t)
		if t.Failed() {
			t.Logf("child %s stderr:\n%s", role, c.stderr.String())
		}
	})
	return c
}

// linesWith returns the complete lines with prefix, trimmed of it.
func (c *child) linesWith(prefix string) []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	for _, l := range c.lines {
		if rest, ok := strings.CutPrefix(l, prefix); ok {
			out = append(out, rest)
		}
	}
	return out
}

// waitLines waits until the child printed n lines with prefix.
func (c *child) waitLines(t *testing.T, prefix string, n int, what string) {
	t.Helper()
	deadline := time.Now().Add(waitBound)
	for len(c.linesWith(prefix)) < n {
		select {
		case <-c.eof:
			t.Fatalf("child exited before %s; its stderr:\n%s", what, c.stderr.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s; child printed %q; child stderr:\n%s", waitBound, what, c.linesWith(""), c.stderr.String())
		}
		time.Sleep(pollEvery)
	}
}

// kill sends SIGKILL, reads the rest of the child's output and reaps it.
func (c *child) kill(t *testing.T) {
	if c.cmd.ProcessState != nil {
		return
	}
	_ = c.cmd.Process.Kill()
	select {
	case <-c.eof:
	case <-time.After(waitBound):
		t.Errorf("child's stdout did not close after SIGKILL")
	}
	_ = c.cmd.Wait()
}

// testCrashWorker: a worker process killed with SIGKILL in the middle of
// its handlers loses nothing: its leased events are delivered to another
// bus after their leases run out, with their attempts counted.
func testCrashWorker(t *testing.T, s *suite) {
	if !s.caps.Durable {
		t.Skipf("the %s transport does not declare Durable; crash tests apply to durable transports", s.name)
	}
	url := s.h.NewURL(t)
	c := s.startChild(t, roleWorker, url)
	c.waitLines(t, readyLine, 1, "the worker child to start")

	publisher := s.open(t, url)
	var ids []string
	for i := range crashWorkEvents {
		ids = append(ids, publish(t, publisher, crashWorkType, map[string]int{"i": i}).ID)
	}
	c.waitLines(t, gotLinePrefix, crashWorkSlots, "the worker child to take an event into each slot")
	c.kill(t)
	inFlight := c.linesWith(gotLinePrefix)

	var rec recorder
	survivor := s.open(t, url)
	on(t, survivor, crashWorkType, crashWorkName, rec.handler("", nil), ripple.Lease(crashWorkLease))
	start(t, survivor)
	rec.waitSucceeded(t, "every event, including those the killed worker held, to be handled", ids...)
	for _, id := range inFlight {
		calls := rec.of(id)
		if len(calls) == 0 {
			t.Errorf("event %s, leased by the killed worker, was not handled", id)
			continue
		}
		if calls[0].ev.Attempt < 2 {
			t.Errorf("event %s, leased by the killed worker, came back with Attempt %d, want at least 2", id, calls[0].ev.Attempt)
		}
	}
	s.settled(t, survivor, crashWorkName)
	for id, n := range rec.succeeded() {
		if n != 1 {
			t.Errorf("event %s was handled %d times after the crash, want once", id, n)
		}
	}
}

// testCrashPublisher: every event whose Publish returned nil in a process
// killed with SIGKILL right after is delivered.
func testCrashPublisher(t *testing.T, s *suite) {
	if !s.caps.Durable {
		t.Skipf("the %s transport does not declare Durable; crash tests apply to durable transports", s.name)
	}
	url := s.h.NewURL(t)
	// The subscription outlives the bus that created it.
	setup := s.open(t, url)
	on(t, setup, crashPubType, crashPubName, func(context.Context, ripple.Event) error { return nil })
	start(t, setup)
	if err := setup.Shutdown(bg); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}

	c := s.startChild(t, rolePublisher, url)
	killAt := 5 + rand.IntN(60)
	c.waitLines(t, ackLinePrefix, killAt, fmt.Sprintf("the publisher child to acknowledge %d events", killAt))
	c.kill(t)
	var acked []string
	for _, l := range c.linesWith(ackLinePrefix) {
		// The last line may have been cut by the kill; only complete
		// lines are acknowledgements.
		if id, ok := strings.CutSuffix(l, ackLineSuffix); ok {
			acked = append(acked, id)
		}
	}
	t.Logf("killed the publisher after %d acknowledged publishes (aimed at %d)", len(acked), killAt)

	var rec recorder
	reader := s.open(t, url)
	on(t, reader, crashPubType, crashPubName, rec.handler("", nil))
	start(t, reader)
	rec.waitSucceeded(t, fmt.Sprintf("all %d acknowledged events to be handled", len(acked)), acked...)
}
