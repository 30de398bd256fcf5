package ripple_test

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"testing"

	"github.com/ripplehq/ripple"
)

// recordLog keeps every log record.
type recordLog struct {
	mu      sync.Mutex
	records []slog.Record
}

func (h *recordLog) Enabled(context.Context, slog.Level) bool { return true }
func (h *recordLog) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	h.records = append(h.records, r.Clone())
	h.mu.Unlock()
	return nil
}
func (h *recordLog) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *recordLog) WithGroup(string) slog.Handler      { return h }

func (h *recordLog) levels() []slog.Level {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make([]slog.Level, len(h.records))
	for i, r := range h.records {
		out[i] = r.Level
	}
	return out
}

// A Permanent failure is an outcome the handler chose: logged once, at
// WARN. Attempts running out is a fault: ERROR.
func TestDeadLetterLogLevels(t *testing.T) {
	ctx := context.Background()
	for _, c := range []struct {
		name string
		err  error
		want slog.Level
	}{
		{"permanent", ripple.Permanent(errors.New("malformed order")), slog.LevelWarn},
		{"attempts used up", errors.New("upstream down"), slog.LevelError},
	} {
		t.Run(c.name, func(t *testing.T) {
			log := &recordLog{}
			bus, err := ripple.Open(ctx, "memory://", ripple.WithLogger(slog.New(log)))
			if err != nil {
				t.Fatal(err)
			}
			defer bus.Close()
			if err := bus.On("order.placed", "orders", func(context.Context, ripple.Event) error { return c.err },
				ripple.MaxAttempts(1)); err != nil {
				t.Fatal(err)
			}
			if err := bus.Start(ctx); err != nil {
				t.Fatal(err)
			}
			if _, err := bus.Publish(ctx, "order.placed", 1); err != nil {
				t.Fatal(err)
			}
			waitUntil(t, "the dead letter", func() bool {
				d, err := bus.DeadLetters(ctx, "orders", 10)
				return err == nil && len(d) == 1
			})
			if err := bus.WaitIdle(ctx); err != nil {
				t.Fatal(err)
			}
			if got := log.levels(); len(got) != 1 || got[0] != c.want {
				t.Errorf("log levels %v, want one record at %s", got, c.want)
			}
		})
	}
}
