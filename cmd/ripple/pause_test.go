package main

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ripplehq/ripple"
)

func TestPauseResume(t *testing.T) {
	bus, u := sharedBus(t, "cli-pause-"+randomSuffix())
	var handled atomic.Int64
	if err := bus.On("mail.send", "mailer", func(context.Context, ripple.Event) error {
		handled.Add(1)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := bus.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	r := mustRun(t, "pause", "mailer", "--url", u)
	if !strings.Contains(r.stdout, "paused mailer") || !strings.Contains(r.stdout, "ripple resume mailer") {
		t.Errorf("pause printed %q", r.stdout)
	}
	for range 3 {
		if _, err := bus.Publish(context.Background(), "mail.send", struct{}{}); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(200 * time.Millisecond)
	if n := handled.Load(); n != 0 {
		t.Errorf("a paused handler ran %d times", n)
	}
	r = mustRun(t, "stats", "--url", u)
	if !strings.Contains(r.stdout, "mailer (paused)") {
		t.Errorf("stats does not show the handler paused:\n%s", r.stdout)
	}
	r = mustRun(t, "stats", "--url", u, "--json")
	if !strings.Contains(r.stdout, `"paused": true`) {
		t.Errorf("stats --json does not show the handler paused:\n%s", r.stdout)
	}
	r = mustRun(t, "resume", "mailer", "--url", u)
	if !strings.Contains(r.stdout, "resumed mailer") {
		t.Errorf("resume printed %q", r.stdout)
	}
	waitFor(t, "the waiting events to run after resume", func() bool { return handled.Load() == 3 })
	if r := mustRun(t, "stats", "--url", u); strings.Contains(r.stdout, "paused") {
		t.Errorf("stats after resume:\n%s", r.stdout)
	}
	wantError(t, rippleCmd(t, "", "pause", "no.such-handler", "--url", u), "unknown handler")
	wantError(t, rippleCmd(t, "", "pause", "--url", u), "usage: ripple pause HANDLER")
	wantError(t, rippleCmd(t, "", "resume", "Bad Name", "--url", u), "handler name")
}

func TestPublishDuplicateSaysAlreadyStored(t *testing.T) {
	_, u := sharedBus(t, "cli-dup-"+randomSuffix())
	mustRun(t, "publish", "order.placed", "--url", u, "--id", "order-7", "--data", `{"v":1}`)
	r := mustRun(t, "publish", "order.placed", "--url", u, "--id", "order-7", "--data", `{"v":2}`)
	if !strings.Contains(r.stdout, "already stored") || !strings.Contains(r.stdout, `{"v":1}`) || strings.Contains(r.stdout, `{"v":2}`) {
		t.Errorf("publishing a stored id printed:\n%s", r.stdout)
	}
	if !strings.Contains(r.stderr, "already stored") || !strings.Contains(r.stderr, "order-7") {
		t.Errorf("publishing a stored id noted %q", r.stderr)
	}
}

// tail's subscription is ephemeral where the transport has them, so a
// tail that is killed leaves nothing durable: the memory store knows it as
// ephemeral while it runs, and it is gone when tail stops.
func TestTailIsEphemeral(t *testing.T) {
	bus, u := sharedBus(t, "cli-tail-eph-"+randomSuffix())
	_, errb, stop := startTail(t, "user.>", "--url", u)
	waitFor(t, "tail to start", func() bool { return strings.Contains(errb.String(), "as handler tail.") })
	stats, err := bus.Stats(context.Background())
	if err != nil || len(stats) != 1 {
		t.Fatalf("subscriptions while tailing: %+v, %v", stats, err)
	}
	probe, err := ripple.Open(context.Background(), u)
	if err != nil {
		t.Fatal(err)
	}
	defer probe.Close()
	if err := probe.On("user.>", stats[0].Handler, func(context.Context, ripple.Event) error { return nil }); err != nil {
		t.Fatal(err)
	}
	if err := probe.Start(context.Background()); err == nil || !strings.Contains(err.Error(), "ephemeral") {
		t.Errorf("a durable subscription under tail's name: %v; want it refused as tail's is ephemeral", err)
	}
	if code := stop(); code != 0 {
		t.Fatalf("tail exited %d: %s", code, errb.String())
	}
	if strings.Contains(errb.String(), "could not delete") || strings.Contains(errb.String(), "stays on") {
		t.Errorf("tail reported leaving a subscription: %s", errb.String())
	}
}
