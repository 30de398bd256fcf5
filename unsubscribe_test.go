package ripple_test

import (
	"context"
	"errors"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ripplehq/ripple"
	_ "github.com/ripplehq/ripple/transport/memory"
	_ "github.com/ripplehq/ripple/transport/sqlite"
)

func TestUnsubscribe(t *testing.T) {
	for name, url := range map[string]string{
		"memory": "memory://unsubscribe-test",
		"sqlite": "sqlite://" + filepath.Join(t.TempDir(), "r.db"),
	} {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			bus, err := ripple.Open(ctx, url)
			if err != nil {
				t.Fatal(err)
			}
			defer bus.Close()
			var kept, dropped atomic.Int32
			_ = bus.On("audit.entry.created", "keep", func(context.Context, ripple.Event) error { kept.Add(1); return nil })
			_ = bus.On("audit.entry.created", "drop", func(context.Context, ripple.Event) error { dropped.Add(1); return nil })
			if err := bus.Start(ctx); err != nil {
				t.Fatal(err)
			}
			if err := bus.Unsubscribe(ctx, "drop"); err != nil {
				t.Fatal(err)
			}
			if _, err := bus.Publish(ctx, "audit.entry.created", struct{}{}); err != nil {
				t.Fatal(err)
			}
			deadline := time.Now().Add(10 * time.Second)
			for kept.Load() == 0 && time.Now().Before(deadline) {
				time.Sleep(5 * time.Millisecond)
			}
			stats, err := bus.Stats(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if kept.Load() != 1 || dropped.Load() != 0 || len(stats) != 1 || stats[0].Handler != "keep" {
				t.Fatalf("kept=%d dropped=%d stats=%+v; want only the kept handler", kept.Load(), dropped.Load(), stats)
			}
			if err := bus.Unsubscribe(ctx, "drop"); !errors.Is(err, ripple.ErrUnknownHandler) {
				t.Fatalf("second Unsubscribe = %v, want ErrUnknownHandler", err)
			}
		})
	}
}
