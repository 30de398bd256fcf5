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
