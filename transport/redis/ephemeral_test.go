package redis

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/ripplehq/ripple/transport"
)

// envEphemeralChildURL makes the test binary an ephemeral receiver that
// receives until it is killed (see ephemeralChild).
const envEphemeralChildURL = "RIPPLE_REDIS_TEST_EPHEMERAL_URL"

const ephemeralLease = 300 * time.Millisecond

func ephemeralChild(u string) int {
	ctx := context.Background()
	d, err := Open(ctx, u, transport.Config{})
	if err != nil {
		fmt.Println("error:", err)
		return 1
	}
	s, err := d.Subscribe(ctx, transport.SubscriptionSpec{Name: "tail.child", Pattern: ">", Lease: ephemeralLease, Ephemeral: true})
	if err != nil {
		fmt.Println("error:", err)
		return 1
	}
	fmt.Println("subscribed")
	for {
		ds, err := s.Receive(ctx, 10)
		if err == nil {
			_ = s.Settle(ctx, completeAll(ds))
		}
	}
}

// ephemeralKeys lists the keys of subscription name under d's prefix, and
// whether the registry still has it.
func ephemeralKeys(t *testing.T, d *Driver, name string) ([]string, bool) {
	t.Helper()
	ctx := context.Background()
	var keys []string
	iter := d.client.Scan(ctx, 0, d.prefix+":*", 1000).Iterator()
	for iter.Next(ctx) {
		if strings.HasSuffix(iter.Val(), ":"+name) {
			keys = append(keys, iter.Val())
		}
	}
	registered := d.client.HExists(ctx, d.subsKey(), name).Val() || d.client.HExists(ctx, d.prefix+":eph", name).Val()
	return keys, registered
}

// TestEphemeralDeletedWhenLastReceiverCloses checks that an ephemeral
// subscription keeps what is published for it while a receiver holds it,
// and is deleted, with everything kept for it, when the last one closes.
func TestEphemeralDeletedWhenLastReceiverCloses(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	u := prefixURL(t)
	d := openURL(t, u, transport.Config{})
	other := openURL(t, u, transport.Config{})
	spec := transport.SubscriptionSpec{Name: "tail.x", Pattern: "a.>", Lease: time.Second, Ephemeral: true}
	s1, err := d.Subscribe(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	s2, err := other.Subscribe(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	durable := subscribe(t, d, "durable", "a.>", time.Second)
	if _, err := d.Subscribe(ctx, transport.SubscriptionSpec{Name: "durable", Pattern: "a.>", Ephemeral: true}); err == nil {
		t.Fatal("an ephemeral subscription under a durable handler's name was accepted")
	}
	if _, err := d.Subscribe(ctx, transport.SubscriptionSpec{Name: "tail.x", Pattern: "a.>"}); err == nil {
		t.Fatal("a durable handler under an ephemeral subscription's name was accepted")
	}
	publish(t, d, msg("a.b"), msg("a.c"))
	receive(t, s1, 1, 5*time.Second)
	if err := s1.Close(); err != nil {
		t.Fatal(err)
	}
	if keys, registered := ephemeralKeys(t, d, "tail.x"); !registered || len(keys) == 0 {
		t.Fatalf("with a receiver still open the subscription is gone (keys %v, registered %v)", keys, registered)
	}
	receive(t, s2, 1, 5*time.Second)
	publish(t, d, msg("a.d"))
	if err := s2.Close(); err != nil {
		t.Fatal(err)
	}
	if keys, registered := ephemeralKeys(t, d, "tail.x"); registered || len(keys) > 0 {
		t.Fatalf("after the last receiver closed: keys %v, registered %v; want nothing left", keys, registered)
	}
	// Publishers that routed to it carry on, and the durable handler keeps
	// its events.
	publish(t, d, msg("a.e"))
	publish(t, other, msg("a.f"))
	receive(t, durable, 5, 5*time.Second)
	if keys, registered := ephemeralKeys(t, d, "tail.x"); registered || len(keys) > 0 {
		t.Fatalf("after publishing on: keys %v, registered %v; want nothing left", keys, registered)
	}
	for _, st := range statsAll(t, d) {
		if st.Handler == "tail.x" {
			t.Fatalf("Stats still reports the ephemeral subscription: %+v", st)
		}
	}
}

func statsAll(t *testing.T, d *Driver) []transport.Stats {
	t.Helper()
	st, err := d.Stats(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// TestEphemeralReapedAfterKill checks that an ephemeral subscription whose
// process was killed (SIGKILL: nothing closes it) is kept while its
// receiver lives and reaped by another process once no receiver has
// touched it for a few leases.
func TestEphemeralReapedAfterKill(t *testing.T) {
	t.Parallel()
	u := prefixURL(t)
	d := openURL(t, u, transport.Config{})
	s := subscribe(t, d, "worker", "a.*", time.Second)

	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), envEphemeralChildURL+"="+u)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	line := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		if sc.Scan() {
			line <- sc.Text()
		}
		close(line)
	}()
	select {
	case l := <-line:
		if l != "subscribed" {
			t.Fatalf("child said %q", l)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("child did not subscribe")
	}
	// Alive for longer than the reaping bound: kept, while this process
	// receives (and so reaps) and asks for Stats.
	alive := time.Now()
	for time.Since(alive) < 3*ephemeralLease+3*time.Second {
		publish(t, d, msg("a.b"))
		settle(t, s, transport.Complete, 0, receive(t, s, 1, 5*time.Second)...)
		statsAll(t, d)
		time.Sleep(100 * time.Millisecond)
	}
	if _, registered := ephemeralKeys(t, d, "tail.child"); !registered {
		t.Fatal("the ephemeral subscription of a live process was reaped")
	}
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	killed := time.Now()
	deadline := killed.Add(30 * time.Second)
	for {
		// This process's receiver reaps at its reclaim scans.
		rctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		_, _ = s.Receive(rctx, 1)
		cancel()
		keys, registered := ephemeralKeys(t, d, "tail.child")
		if !registered && len(keys) == 0 {
			t.Logf("reaped %v after the kill", time.Since(killed))
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("30s after the kill: keys %v, registered %v; want the subscription reaped", keys, registered)
		}
	}
}
