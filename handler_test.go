package ripple

import (
	"errors"
	"fmt"
	"testing"
	"time"
)

func TestBackoffGrowsWithJitterAndCap(t *testing.T) {
	lo, hi := time.Second, 30*time.Second
	for attempt, base := range map[int]time.Duration{1: time.Second, 2: 2 * time.Second, 3: 4 * time.Second, 5: 16 * time.Second, 9: hi} {
		seen := map[time.Duration]bool{}
		for range 200 {
			d := backoff(attempt, lo, hi)
			if d < base*8/10 || d > base*12/10 {
				t.Fatalf("backoff(%d) = %s, want %s ±20%%", attempt, d, base)
			}
			seen[d] = true
		}
		if len(seen) < 50 {
			t.Errorf("backoff(%d) produced %d distinct values in 200 draws; jitter is missing", attempt, len(seen))
		}
	}
}

func TestPermanentAndRetryAfter(t *testing.T) {
	base := errors.New("card declined")
	p := fmt.Errorf("charge: %w", Permanent(base))
	if !IsPermanent(p) || !errors.Is(p, base) {
		t.Fatalf("Permanent must be detectable through wrapping and unwrap to its cause")
	}
	if IsPermanent(base) {
		t.Fatalf("a plain error is not permanent")
	}
	r := RetryAfter(3*time.Second, base)
	if d, ok := retryDelay(fmt.Errorf("x: %w", r)); !ok || d != 3*time.Second {
		t.Fatalf("retryDelay = %s, %v", d, ok)
	}
	if !errors.Is(r, base) {
		t.Fatalf("RetryAfter must unwrap to its cause")
	}
}

func TestNotSupportedErrorMatches(t *testing.T) {
	err := fmt.Errorf("wrapped: %w", &NotSupportedError{Transport: "kafka", Option: "WithPriority"})
	if !errors.Is(err, ErrNotSupported) {
		t.Fatal("NotSupportedError must match ErrNotSupported")
	}
	var ns *NotSupportedError
	if !errors.As(err, &ns) || ns.Transport != "kafka" {
		t.Fatal("errors.As must reach the NotSupportedError")
	}
}

func TestRedactURL(t *testing.T) {
	cases := map[string]string{
		"redis://user:secret@host:6379/0":    "redis://user:xxxxx@host:6379/0",
		"amqp://guest:guest@localhost:5672/": "amqp://guest:xxxxx@localhost:5672/",
		"sqlite://app.db":                    "sqlite://app.db",
		"redis://host:6379/0?prefix=a@b":     "redis://host:xxxxx@b",
		"redis://:pa?ss@host:6379/0":         "redis://:xxxxx@host:6379/0",
		"redis://user:s3cr?t@host:6379/0":    "redis://user:xxxxx@host:6379/0",
		"sqlite://backups/db:v2@host.db":     "sqlite://backups/db:v2@host.db",
		"redis://:onlypass@host:6379":        "redis://:xxxxx@host:6379",
		"redis://:pa/ss@host:6379/0":         "redis://:xxxxx@host:6379/0",
		"redis://u:p@ss@host:6379/0":         "redis://u:xxxxx@host:6379/0",
		"sqlite:///data/a:b@c.db":            "sqlite:///data/a:b@c.db",
		"redis://user@host:6379/0":           "redis://user@host:6379/0",
	}
	for in, want := range cases {
		if got := redactURL(in); got != want {
			t.Errorf("redactURL(%q) = %q, want %q", in, got, want)
		}
	}
}
