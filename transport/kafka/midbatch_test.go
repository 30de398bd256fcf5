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

	"github.com/ripplehq/ripple/transport"
)

// envChildURL tells a re-executed test binary to play the killed consumer
// of TestKilledMidBatch against the URL it holds.
const envChildURL = "RIPPLE_KAFKA_MIDBATCH_URL"

var midbatchSpec = transport.SubscriptionSpec{Name: "midbatch.worker", Pattern: "midbatch.>", Lease: 30 * time.Second, MaxAttempts: 5}

// TestKilledMidBatch: a consumer killed with SIGKILL after finishing every
// event of a batch but the first loses nothing: the group's committed
// offset stayed at the unfinished event, which comes back with its attempt
// counted (a crash re-delivers, never skips), while the events finished
// after it, which the commit metadata recorded as finished, are not
// handled again.
func TestKilledMidBatch(t *testing.T) {
	if u := os.Getenv(envChildURL); u != "" {
		midbatchChild(u)
		return
	}
	url := newURL(t, "partitions=1")
	dr, err := Open(bg, url, transport.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer dr.Close()
	setup, err := dr.Subscribe(bg, midbatchSpec)
	if err != nil {
		t.Fatal(err)
	}
	setup.Close()
	var ids []string
	for i := range 5 {
		id := fmt.Sprintf("mb-%d", i)
		ids = append(ids, id)
		if err := dr.Publish(bg, []*transport.Message{{ID: id, Type: "midbatch.job.queued", Time: time.Now(), Attrs: map[string]string{"source": "t"}}}); err != nil {
			t.Fatal(err)
		}
	}
	exe, _ := os.Executable()
	cmd := exec.Command(exe, "-test.run=^TestKilledMidBatch$", "-test.count=1")
	cmd.Env = append(os.Environ(), envChildURL+"="+url)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
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
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		t.Fatalf("the child consumer did not get ready; its stderr:\n%s", stderr.String())
	}
	_ = cmd.Process.Kill()
	_ = cmd.Wait()

	sub, err := dr.Subscribe(bg, midbatchSpec)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	got := map[string]int{}
	attempts := map[string]int{}
	deadline := time.Now().Add(60 * time.Second)
	for got["mb-0"] == 0 && time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(bg, time.Second)
		ds, _ := sub.Receive(ctx, 10)
		cancel()
		var ss []transport.Settlement
		for _, d := range ds {
			got[d.ID]++
			attempts[d.ID] = d.Attempt
			ss = append(ss, transport.Settlement{Delivery: d, Outcome: transport.Complete})
		}
		if err := sub.Settle(bg, ss); err != nil {
			t.Fatal(err)
		}
	}
	// "after" follows the five in the one partition: once it is
	// delivered, any of the five read again has been delivered too.
	if err := dr.Publish(bg, []*transport.Message{{ID: "after", Type: "midbatch.job.queued", Time: time.Now(), Attrs: map[string]string{"source": "t"}}}); err != nil {
		t.Fatal(err)
	}
	for got["after"] == 0 && time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(bg, time.Second)
		ds, _ := sub.Receive(ctx, 10)
		cancel()
		var ss []transport.Settlement
		for _, d := range ds {
			got[d.ID]++
			attempts[d.ID] = d.Attempt
			ss = append(ss, transport.Settlement{Delivery: d, Outcome: transport.Complete})
		}
		if err := sub.Settle(bg, ss); err != nil {
			t.Fatal(err)
		}
	}
	if got["mb-0"] != 1 || got["after"] != 1 {
		t.Errorf("the unfinished event and the next one were delivered %d and %d times after the consumer was killed, want once each", got["mb-0"], got["after"])
	}
	for _, id := range ids[1:] {
		if got[id] != 0 {
			t.Errorf("event %s, finished and committed as finished before the kill, was delivered again", id)
		}
	}
	if attempts["mb-0"] != 2 {
		t.Errorf("the unfinished event came back with Attempt %d, want 2 (its first attempt counted)", attempts["mb-0"])
	}
	t.Logf("after the kill: deliveries %v, attempts %v", got, attempts)
}

// midbatchChild takes the five events, completes all but the first,
// waits for the commits and reports ready; the parent kills it.
func midbatchChild(url string) {
	fail := func(err error) {
		fmt.Fprintln(os.Stderr, "midbatch child:", err)
		os.Exit(2)
	}
	dr, err := Open(bg, url, transport.Config{})
	if err != nil {
		fail(err)
	}
	sub, err := dr.Subscribe(bg, midbatchSpec)
	if err != nil {
		fail(err)
	}
	var ds []*transport.Delivery
	deadline := time.Now().Add(50 * time.Second)
	for len(ds) < 5 && time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(bg, time.Second)
		more, _ := sub.Receive(ctx, 5-len(ds))
		cancel()
		ds = append(ds, more...)
	}
	if len(ds) < 5 {
		fail(fmt.Errorf("received %d of 5 events", len(ds)))
	}
	var ss []transport.Settlement
	for _, d := range ds {
		if d.ID != "mb-0" {
			ss = append(ss, transport.Settlement{Delivery: d, Outcome: transport.Complete})
		}
	}
	if err := sub.Settle(bg, ss); err != nil {
		fail(err)
	}
	// What the background commit does within 100ms, now, so that the
	// kill comes after it.
	sub.(*receiver).g.commit(bg, true)
	fmt.Println("ready")
	select {}
}
