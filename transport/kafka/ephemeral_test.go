package kafka

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ripplehq/ripple/transport"
)

// TestEphemeral: an ephemeral subscription gets what is published after
// it, retries in memory, and leaves no group or topic behind.
func TestEphemeral(t *testing.T) {
	dr, err := Open(bg, newURL(t), transport.Config{})
	if err != nil {
		t.Fatal(err)
	}
	d := dr.(*Driver)
	defer d.Close()
	pub := func(id string) {
		t.Helper()
		if err := d.Publish(bg, []*transport.Message{{ID: id, Type: "tail.me.seen", Time: time.Now(), Attrs: map[string]string{"source": "t"}}}); err != nil {
			t.Fatal(err)
		}
	}
	pub("before")
	spec := transport.SubscriptionSpec{Name: "tail.abc123", Pattern: "tail.>", Lease: time.Second, Ephemeral: true}
	sub, err := d.Subscribe(bg, spec)
	if err != nil {
		t.Fatal(err)
	}
	pub("after")
	recv := func() *transport.Delivery {
		t.Helper()
		ctx, cancel := context.WithTimeout(bg, 20*time.Second)
		defer cancel()
		ds, err := sub.Receive(ctx, 1)
		if err != nil || len(ds) != 1 {
			t.Fatalf("Receive: %d, %v", len(ds), err)
		}
		return ds[0]
	}
	first := recv()
	if first.ID != "after" || first.Attempt != 1 {
		t.Fatalf("got %s attempt %d, want after attempt 1 (not the event from before the subscription)", first.ID, first.Attempt)
	}
	if err := sub.Settle(bg, []transport.Settlement{{Delivery: first, Outcome: transport.Retry, Delay: 10 * time.Millisecond}}); err != nil {
		t.Fatal(err)
	}
	again := recv()
	if again.ID != "after" || again.Attempt != 2 {
		t.Fatalf("retry got %s attempt %d, want after attempt 2", again.ID, again.Attempt)
	}
	if err := sub.Settle(bg, []transport.Settlement{{Delivery: again, Outcome: transport.Complete}}); err != nil {
		t.Fatal(err)
	}
	if err := sub.Close(); err != nil {
		t.Fatal(err)
	}
	adm := kadm.NewClient(d.cl)
	groups, err := adm.ListGroups(bg)
	if err != nil {
		t.Fatal(err)
	}
	for _, g := range groups.Groups() {
		if strings.Contains(g, "tail.abc123") {
			t.Errorf("the ephemeral subscription left consumer group %s", g)
		}
	}
	topics, err := adm.ListTopics(bg)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range topics.Names() {
		if strings.Contains(name, "tail.abc123") {
			t.Errorf("the ephemeral subscription left topic %s", name)
		}
	}
	if _, err := d.DeadLetters(bg, spec.Name, 10); err == nil {
		t.Errorf("DeadLetters of an ephemeral subscription's name: nil error, want not found")
	}
}

// openDriver opens a Driver on url, closed when the test ends.
func openDriver(t *testing.T, url string) *Driver {
	t.Helper()
	dr, err := Open(bg, url, transport.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = dr.Close() })
	return dr.(*Driver)
}

// statsList reports whether d's Stats lists handler.
func statsList(t *testing.T, d *Driver, handler string) bool {
	t.Helper()
	all, err := d.Stats(bg)
	if err != nil {
		t.Fatalf("Stats: %v", err)
	}
	for _, st := range all {
		if st.Handler == handler {
			return true
		}
	}
	return false
}

// lastEntry returns the last registry record of a handler (nil if none).
func lastEntry(t *testing.T, d *Driver, handler string) *kgo.Record {
	t.Helper()
	var last *kgo.Record
	if err := d.scan(bg, d.registryTopic(), nil, func(r *kgo.Record) {
		if string(r.Key) == handler {
			last = r
		}
	}); err != nil {
		t.Fatal(err)
	}
	return last
}

// TestEphemeralRegistry: Stats of another driver lists an ephemeral
// handler while it runs and not after it closed; an ephemeral and a
// durable handler cannot share a name, and the refused one leaves the
// other working; a stale entry (its process killed) is dropped by Stats
// and does not hold its name.
func TestEphemeralRegistry(t *testing.T) {
	url := newURL(t)
	a, b := openDriver(t, url), openDriver(t, url)
	dur, err := b.Subscribe(bg, transport.SubscriptionSpec{Name: "reg.durable", Pattern: "reg.>", Lease: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer dur.Close()
	tail, err := a.Subscribe(bg, transport.SubscriptionSpec{Name: "reg.tail", Pattern: "reg.>", Lease: 5 * time.Second, Ephemeral: true})
	if err != nil {
		t.Fatal(err)
	}
	if !statsList(t, b, "reg.tail") {
		t.Errorf("Stats of another driver does not list the running ephemeral handler")
	}
	if !statsList(t, a, "reg.tail") {
		t.Errorf("Stats of its own driver does not list the running ephemeral handler")
	}
	// A durable handler under the running ephemeral one's name, from
	// another driver and from its own.
	for _, d := range []*Driver{b, a} {
		s, err := d.Subscribe(bg, transport.SubscriptionSpec{Name: "reg.tail", Pattern: "reg.>"})
		if err == nil {
			s.Close()
			t.Fatalf("a durable subscription under a running ephemeral handler's name was accepted")
		}
		if !strings.Contains(err.Error(), "give the durable handler a name of its own") {
			t.Errorf("durable under an ephemeral name: %v; want it to say the name is taken", err)
		}
	}
	// An ephemeral handler under the durable one's name, from another
	// driver and from its own.
	for _, d := range []*Driver{a, b} {
		s, err := d.Subscribe(bg, transport.SubscriptionSpec{Name: "reg.durable", Pattern: "reg.>", Ephemeral: true})
		if err == nil {
			s.Close()
			t.Fatalf("an ephemeral subscription under a durable handler's name was accepted")
		}
		if want := "handler reg.durable is durable; give the ephemeral subscription a name of its own"; !strings.Contains(err.Error(), want) {
			t.Errorf("ephemeral under a durable name: %v; want %q", err, want)
		}
	}
	// Both go on working.
	if err := a.Publish(bg, []*transport.Message{{ID: "r1", Type: "reg.thing.done", Time: time.Now(), Attrs: map[string]string{"source": "t"}}}); err != nil {
		t.Fatal(err)
	}
	for name, s := range map[string]transport.Subscription{"durable": dur, "ephemeral": tail} {
		ctx, cancel := context.WithTimeout(bg, 30*time.Second)
		ds, err := s.Receive(ctx, 1)
		cancel()
		if err != nil || len(ds) != 1 || ds[0].ID != "r1" {
			t.Fatalf("the %s handler after the refusals: %d deliveries, %v", name, len(ds), err)
		}
		if err := s.Settle(bg, []transport.Settlement{{Delivery: ds[0], Outcome: transport.Complete}}); err != nil {
			t.Fatal(err)
		}
	}
	if !statsList(t, b, "reg.durable") || lastEntry(t, b, "reg.durable").Value == nil {
		t.Errorf("the durable handler's registry entry is gone after the refused ephemeral subscriptions")
	}

	if err := tail.Close(); err != nil {
		t.Fatal(err)
	}
	if statsList(t, b, "reg.tail") {
		t.Errorf("Stats of another driver lists the ephemeral handler after it closed")
	}
	if r := lastEntry(t, b, "reg.tail"); r == nil || r.Value != nil {
		t.Errorf("the closed ephemeral handler's registry entry is not tombstoned: %v", r)
	}

	// A process killed while tailing leaves an entry that is no longer
	// renewed; write one by hand.
	stale := func(name string) {
		t.Helper()
		r := &kgo.Record{Topic: b.registryTopic(), Key: []byte(name), Value: []byte("reg.>"),
			Headers: []kgo.RecordHeader{msHeader(hEphemeral, time.Now().Add(-time.Second))}}
		if err := b.produce(bg, []*kgo.Record{r}); err != nil {
			t.Fatal(err)
		}
	}
	stale("reg.killed")
	if statsList(t, b, "reg.killed") {
		t.Errorf("Stats lists a stale ephemeral entry")
	}
	if r := lastEntry(t, b, "reg.killed"); r == nil || r.Value != nil {
		t.Errorf("Stats did not tombstone the stale ephemeral entry: %v", r)
	}
	stale("reg.killed2")
	s, err := a.Subscribe(bg, transport.SubscriptionSpec{Name: "reg.killed2", Pattern: "reg.>"})
	if err != nil {
		t.Fatalf("a durable subscription under a stale ephemeral entry's name: %v", err)
	}
	s.Close()
	if r := lastEntry(t, b, "reg.killed2"); r == nil || r.Value == nil || len(r.Headers) != 0 {
		t.Errorf("the durable handler did not replace the stale ephemeral entry: %v", r)
	}
}

// TestRegistryReasserted: a running handler whose registry entry another
// process removed (a Stats reaping a stale ephemeral entry just as the
// name was taken again) is recorded again.
func TestRegistryReasserted(t *testing.T) {
	url := newURL(t)
	a, b := openDriver(t, url), openDriver(t, url)
	for _, spec := range []transport.SubscriptionSpec{
		{Name: "again.durable", Pattern: "again.>", Lease: 5 * time.Second},
		{Name: "again.tail", Pattern: "again.>", Lease: 5 * time.Second, Ephemeral: true},
	} {
		s, err := a.Subscribe(bg, spec)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		if err := b.unregister(bg, spec.Name); err != nil {
			t.Fatal(err)
		}
		waitFor(t, spec.Name+" to be recorded again", 30*time.Second, func() bool { return statsList(t, b, spec.Name) })
	}
}

// envTailURL tells a re-executed test binary to play the killed tail of
// TestEphemeralKilled against the URL it holds.
const envTailURL = "RIPPLE_KAFKA_TAIL_URL"

// TestEphemeralKilled: a process killed with SIGKILL while it holds an
// ephemeral subscription is listed by Stats while it lives (its entry is
// renewed), and once its entry went stale Stats no longer lists it and
// tombstones it; no consumer group or topic of its name exists.
func TestEphemeralKilled(t *testing.T) {
	if u := os.Getenv(envTailURL); u != "" {
		tailChild(u)
		return
	}
	url := newURL(t)
	d := openDriver(t, url)
	exe, _ := os.Executable()
	cmd := exec.Command(exe, "-test.run=^TestEphemeralKilled$", "-test.count=1")
	cmd.Env = append(os.Environ(), envTailURL+"="+url)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	ready := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if sc.Text() == "ready" {
				close(ready)
			}
		}
	}()
	select {
	case <-ready:
	case <-time.After(60 * time.Second):
		t.Fatalf("the child tail did not get ready; its stderr:\n%s", stderr.String())
	}
	const name = "killed.tail"
	if !statsList(t, d, name) {
		t.Fatalf("Stats does not list the child's ephemeral handler")
	}
	first := lastEntry(t, d, name)
	until := func(r *kgo.Record) time.Time { e, _ := parseEntry(r); return e.until }
	waitFor(t, "the child's entry to be renewed", 60*time.Second, func() bool {
		return until(lastEntry(t, d, name)).After(until(first))
	})
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
	if !statsList(t, d, name) {
		t.Errorf("Stats forgot the killed child's handler before its entry went stale")
	}
	waitFor(t, "Stats to forget the killed child's handler", 2*ephemeralTTL(time.Second)+30*time.Second, func() bool {
		if statsList(t, d, name) {
			time.Sleep(500 * time.Millisecond)
			return false
		}
		return true
	})
	if r := lastEntry(t, d, name); r == nil || r.Value != nil {
		t.Errorf("the stale entry is not tombstoned: %v", r)
	}
	adm := kadm.NewClient(d.cl)
	groups, err := adm.ListGroups(bg)
	if err != nil {
		t.Fatal(err)
	}
	for _, g := range groups.Groups() {
		if strings.Contains(g, name) {
			t.Errorf("the killed tail left consumer group %s", g)
		}
	}
	topics, err := adm.ListTopics(bg)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range topics.Names() {
		if strings.Contains(n, name) {
			t.Errorf("the killed tail left topic %s", n)
		}
	}
}

// tailChild holds an ephemeral subscription until it is killed.
func tailChild(url string) {
	dr, err := Open(bg, url, transport.Config{})
	if err != nil {
		fmt.Fprintln(os.Stderr, "open:", err)
		os.Exit(2)
	}
	if _, err := dr.Subscribe(bg, transport.SubscriptionSpec{Name: "killed.tail", Pattern: "killed.>", Lease: time.Second, Ephemeral: true}); err != nil {
		fmt.Fprintln(os.Stderr, "subscribe:", err)
		os.Exit(2)
	}
	fmt.Println("ready")
	select {}
}
