package sqlite

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ripplehq/ripple/transport"
)

// TestHelperProcess is the child of TestKilledProcessLeaseRedelivered: it
// leases one delivery, reports it and hangs until killed.
func TestHelperProcess(t *testing.T) {
	path := os.Getenv("RIPPLE_SQLITE_CHILD")
	if path == "" {
		t.Skip("helper process for TestKilledProcessLeaseRedelivered")
	}
	d, err := Open(context.Background(), "sqlite://"+path, transport.Config{})
	if err != nil {
		fmt.Println("error", err)
		os.Exit(1)
	}
	s, err := d.Subscribe(context.Background(), transport.SubscriptionSpec{Name: "h", Pattern: "a.>", Lease: 500 * time.Millisecond})
	if err != nil {
		fmt.Println("error", err)
		os.Exit(1)
	}
	ds, err := s.Receive(context.Background(), 1)
	if err != nil {
		fmt.Println("error", err)
		os.Exit(1)
	}
	fmt.Println("leased", ds[0].ID)
	select {} // a hung handler
}

func TestKilledProcessLeaseRedelivered(t *testing.T) {
	path := filepath.Join(t.TempDir(), "kill.db")
	d := open(t, path, transport.Config{})
	s := subscribe(t, d, transport.SubscriptionSpec{Name: "h", Pattern: "a.>", Lease: 500 * time.Millisecond})
	m := msg("a.b")
	publish(t, d, m)

	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$", "-test.v")
	cmd.Env = append(os.Environ(), "RIPPLE_SQLITE_CHILD="+path)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	lines := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if l := sc.Text(); strings.HasPrefix(l, "leased ") || strings.HasPrefix(l, "error ") {
				lines <- l
				return
			}
		}
		close(lines)
	}()
	select {
	case l := <-lines:
		if l != "leased "+m.ID {
			t.Fatalf("child said %q", l)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("child did not lease the event")
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	_ = cmd.Wait()
	// While the dead process's lease lasts, nobody gets the event; then we do.
	ds := receive(t, s, 1, 5*time.Second)
	if ds[0].ID != m.ID || ds[0].Attempt != 2 {
		t.Fatalf("got %s attempt %d", ds[0].ID, ds[0].Attempt)
	}
	t.Logf("redelivered %v after the kill", time.Since(killed))
	settle(t, s, ds[0], transport.Complete, 0, "")
}

func TestCrossProcessWakeAndFanOut(t *testing.T) {
	path := filepath.Join(t.TempDir(), "x.db")
	d1 := open(t, path, transport.Config{})
	d2 := open(t, path, transport.Config{})
	a := subscribe(t, d1, transport.SubscriptionSpec{Name: "a", Pattern: "a.>"})
	publish(t, d1, msg("a.warm")) // d1 caches the subscription list
	receive(t, a, 10, time.Second)
	// A subscription made by another process is seen by d1's next publish.
	b := subscribe(t, d2, transport.SubscriptionSpec{Name: "b", Pattern: "a.>"})
	got := make(chan time.Time, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if ds, err := b.Receive(ctx, 1); err == nil && len(ds) == 1 {
			got <- time.Now()
		}
		close(got)
	}()
	time.Sleep(100 * time.Millisecond)
	start := time.Now()
	publish(t, d1, msg("a.b"))
	at, ok := <-got
	if !ok {
		t.Fatal("the other driver's receiver did not get the event")
	}
	if lat := at.Sub(start); lat > 200*time.Millisecond {
		t.Errorf("cross-process wake took %v, want about the %v poll interval", lat, pollInterval)
	}
}

// TestSubscriptionSeenAfterOwnBookkeeping subscribes from a second
// driver, as another process would, then lets the first driver commit a
// transaction that neither publishes nor reads the subscription list (a
// lease): its next publish must still reach the new subscription.
func TestSubscriptionSeenAfterOwnBookkeeping(t *testing.T) {
	path := filepath.Join(t.TempDir(), "x.db")
	d1 := open(t, path, transport.Config{})
	d2 := open(t, path, transport.Config{})
	s1 := subscribe(t, d1, transport.SubscriptionSpec{Name: "one", Pattern: "a.>"})
	publish(t, d1, msg("a.warm")) // d1 caches the subscription list
	settle(t, s1, receive(t, s1, 1, time.Second)[0], transport.Complete, 0, "")

	s2 := subscribe(t, d2, transport.SubscriptionSpec{Name: "two", Pattern: "a.>"})
	receiveNone(t, s1, 100*time.Millisecond) // d1 leases, finding nothing

	m := msg("a.b")
	publish(t, d1, m)
	ds := receive(t, s2, 1, 2*time.Second)
	if ds[0].ID != m.ID {
		t.Fatalf("got %s, want %s", ds[0].ID, m.ID)
	}
}

// keepNothing prunes every finished event at once.
var keepNothing = transport.Config{Retention: transport.Retention{CompletedCount: -1, CompletedAge: -1, DedupWindow: -1}}

// TestPrunedEventNumberNotReused prunes the newest event and publishes
// another, delayed (so the publisher does not cache it) or from a second
// driver on the file: the receiver must get the new event, not the pruned
// one's contents under its number.
func TestPrunedEventNumberNotReused(t *testing.T) {
	for _, tc := range []struct {
		name    string
		delay   time.Duration
		otherDB bool
	}{{"delayed", 10 * time.Millisecond, false}, {"other process", 0, true}} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "r.db")
			d := open(t, path, keepNothing)
			pub := d
			if tc.otherDB {
				pub = open(t, path, keepNothing)
			}
			s := subscribe(t, d, transport.SubscriptionSpec{Name: "h", Pattern: "a.>"})
			publish(t, d, &transport.Message{ID: "old", Type: "a.x", Time: time.Now(), Data: []byte(`"old"`)})
			settle(t, s, receive(t, s, 1, 2*time.Second)[0], transport.Complete, 0, "")
			time.Sleep(2 * time.Millisecond)
			d.pruneNow(t)
			publish(t, pub, &transport.Message{ID: "new", Type: "a.x", Time: time.Now(), Data: []byte(`"new"`), Delay: tc.delay})
			ds := receive(t, s, 1, 2*time.Second)
			if ds[0].ID != "new" || string(ds[0].Data) != `"new"` {
				t.Fatalf("received %s %s, want the new event", ds[0].ID, ds[0].Data)
			}
		})
	}
}

// TestUnsubscribedIDNotReused unsubscribes a handler from a second
// driver, as another process would, and subscribes another: a receiver
// left running for the first must not get the second's events.
func TestUnsubscribedIDNotReused(t *testing.T) {
	path := filepath.Join(t.TempDir(), "r.db")
	d1, d2 := open(t, path, transport.Config{}), open(t, path, transport.Config{})
	old := subscribe(t, d1, transport.SubscriptionSpec{Name: "old", Pattern: "a.>"})
	ctx := context.Background()
	if err := d2.Unsubscribe(ctx, "old"); err != nil {
		t.Fatal(err)
	}
	subscribe(t, d2, transport.SubscriptionSpec{Name: "new", Pattern: "b.>"})
	publish(t, d2, &transport.Message{ID: "b1", Type: "b.x", Time: time.Now(), Data: []byte(`{}`)})
	receiveNone(t, old, 500*time.Millisecond) // the event is the new handler's
}
