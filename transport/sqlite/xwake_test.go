package sqlite

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/ripplehq/ripple/transport"
)

// Drivers on one file join one wake-up group (<file>.wake, one socket per
// driver); a receiver in one is woken by a publish in the other, and the
// group's directory goes with the last driver.
func TestDriversOnOneFileShareAWakeGroup(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ripple.db")
	a := open(t, path, transport.Config{})
	b := open(t, path, transport.Config{})
	if a.xw == nil || b.xw == nil {
		t.Fatal("a driver on a file did not join the wake-up group")
	}
	ents, err := os.ReadDir(path + ".wake")
	if err != nil || len(ents) != 2 {
		t.Fatalf("%s.wake holds %d entries (%v), want one socket per driver", path, len(ents), err)
	}
	s := subscribe(t, b, transport.SubscriptionSpec{Name: "h", Pattern: "a.>"})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	got := make(chan error, 1)
	go func() {
		ds, err := s.Receive(ctx, 1)
		if err == nil && len(ds) != 1 {
			err = context.DeadlineExceeded
		}
		got <- err
	}()
	publish(t, a, msg("a.b"))
	if err := <-got; err != nil {
		t.Fatalf("the other driver's receiver: %v", err)
	}
	_ = s.Close()
	_ = a.Close()
	_ = b.Close()
	if _, err := os.Stat(path + ".wake"); !os.IsNotExist(err) {
		t.Fatalf("%s.wake after every driver closed: %v; want it removed", path, err)
	}
}
