package main

import (
	"context"
	"encoding/json"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ripplehq/ripple"
)

func TestReplay(t *testing.T) {
	bus, u := sharedBus(t, "replay-cli")
	var handled atomic.Int64
	gate := make(chan struct{})
	err := bus.On("order.placed", "orders.projection", func(ctx context.Context, e ripple.Event) error {
		if handled.Load() >= 3 {
			// Replayed deliveries wait until the test has seen the
			// progress at 0.
			select {
			case <-gate:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		handled.Add(1)
		return nil
	}, ripple.Concurrency(1))
	if err != nil {
		t.Fatal(err)
	}
	if err := bus.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if _, err := bus.Publish(context.Background(), "order.placed", map[string]int{"n": 1}); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "the first deliveries", func() bool { return handled.Load() == 3 })

	var out, errb syncBuffer
	done := make(chan int)
	go func() {
		done <- run(context.Background(), []string{"replay", "orders.projection", "--since", "1h", "--wait", "--interval", "5ms", "--url", u}, strings.NewReader(""), &out, &errb)
	}()
	waitFor(t, "the progress at 0", func() bool { return strings.Contains(errb.String(), "orders.projection: 0/3 handled (0%)") })
	close(gate)
	select {
	case code := <-done:
		if code != 0 {
			t.Fatalf("replay --wait: exit %d\nstdout: %s\nstderr: %s", code, out.String(), errb.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("replay --wait did not return once the events were handled\nstderr: %s", errb.String())
	}
	if handled.Load() != 6 {
		t.Errorf("handler ran %d times, want 3 + 3 replayed", handled.Load())
	}
	for _, want := range []string{"replayed 3 events of orders.projection published since ", "orders.projection handled 3 of 3 replayed events; 0 dead letters added"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("stdout lacks %q:\n%s", want, out.String())
		}
	}
	if !strings.Contains(errb.String(), "orders.projection: 3/3 handled (100%)") || strings.Contains(errb.String(), "\r") {
		t.Errorf("stderr (not a terminal) should hold plain progress lines up to 3/3:\n%q", errb.String())
	}

	// --json, without --wait.
	r := mustRun(t, "replay", "orders.projection", "--since", time.Now().Add(-time.Hour).UTC().Format(time.RFC3339), "--json", "--url", u)
	var sum replaySummary
	if err := json.Unmarshal([]byte(r.stdout), &sum); err != nil {
		t.Fatalf("--json output %q: %v", r.stdout, err)
	}
	if sum.Handler != "orders.projection" || sum.Replayed != 3 || sum.Handled != nil {
		t.Errorf("--json summary %+v; want 3 replayed and no handled count without --wait", sum)
	}
	waitFor(t, "the second replay", func() bool { return handled.Load() == 9 })

	// Since after every event: nothing to replay.
	r = mustRun(t, "replay", "orders.projection", "--since", "1ns", "--wait", "--url", u)
	if !strings.Contains(r.stdout, "replayed 0 events") {
		t.Errorf("replay since now: %q", r.stdout)
	}
}

func TestReplayErrors(t *testing.T) {
	_, u := sharedBus(t, "replay-cli-errors")
	wantError(t, rippleCmd(t, "", "replay", "h", "--url", u), "--since is required", "--since 1h")
	wantError(t, rippleCmd(t, "", "replay", "h", "--since", "yesterday", "--url", u), `--since "yesterday"`, "RFC 3339", "90m")
	wantError(t, rippleCmd(t, "", "replay", "h", "--since", "-1h", "--url", u), "positive duration")
	wantError(t, rippleCmd(t, "", "replay", "h", "--since", "2999-01-01", "--url", u), "in the future")
	wantError(t, rippleCmd(t, "", "replay", "--since", "1h", "--url", u), "usage: ripple replay HANDLER --since T")
	wantError(t, rippleCmd(t, "", "replay", "no.such.handler", "--since", "1h", "--url", u), "unknown handler", "no.such.handler")
	wantError(t, rippleCmd(t, "", "replay", "no.such.handler", "--since", "1h", "--wait", "--url", u), "unknown handler", "no.such.handler")
}

func TestParseSince(t *testing.T) {
	now := time.Date(2026, 3, 2, 10, 0, 0, 0, time.UTC)
	for in, want := range map[string]time.Time{
		"1h":                        now.Add(-time.Hour),
		"90m":                       now.Add(-90 * time.Minute),
		"7d":                        now.Add(-7 * 24 * time.Hour),
		"2026-03-01T09:30:00Z":      time.Date(2026, 3, 1, 9, 30, 0, 0, time.UTC),
		"2026-03-01T10:30:00+01:00": time.Date(2026, 3, 1, 9, 30, 0, 0, time.UTC),
		"2026-03-01":                time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC),
	} {
		got, err := parseSince(in, now)
		if err != nil || !got.Equal(want) {
			t.Errorf("parseSince(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
}

// TestProgressOnTerminal: on a terminal the progress line is redrawn in
// place, and ended with a newline.
func TestProgressOnTerminal(t *testing.T) {
	var b strings.Builder
	p := progress{w: &b, tty: true, handler: "h", total: 4}
	p.show(1)
	p.show(4)
	p.end()
	want := "\r\033[K[#######-----------------------] 1/4 handled (25%) h" +
		"\r\033[K[##############################] 4/4 handled (100%) h\n"
	if b.String() != want {
		t.Errorf("terminal progress %q, want %q", b.String(), want)
	}
}
