package sqlite

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ripplehq/ripple/transport"
)

// TestWALBounded: with 16 publishers and a handler writing as fast as they
// can, the WAL stays bounded (checkpoints run on the maintenance
// connection, and the writer catches the WAL up itself past
// walBoundFrames).
func TestWALBounded(t *testing.T) {
	t.Run("one driver", func(t *testing.T) { walBounded(t, false, 1) })
	t.Run("two drivers", func(t *testing.T) { walBounded(t, true, 1) })
	t.Run("five handlers", func(t *testing.T) { walBounded(t, false, 5) })
	t.Run("normal", func(t *testing.T) { walBounded(t, false, 0) })
	t.Run("one publisher", func(t *testing.T) { walBounded(t, false, -1) })
}

// walBounded publishes with one driver and handles with it, or with a
// second driver on the same file (a second process).
func walBounded(t *testing.T, two bool, handlers int) {
	if testing.Short() {
		t.Skip("writes for a few seconds")
	}
	path := filepath.Join(t.TempDir(), "wal.db")
	d := open(t, path, transport.Config{})
	publishers := 16
	if handlers < 0 {
		publishers, handlers = 1, 0
	}
	if handlers == 0 {
		// synchronous=normal: commits without fsync, the fastest writer.
		d.Close()
		var err error
		dd, err := Open(context.Background(), "sqlite://"+path+"?synchronous=normal", transport.Config{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { dd.Close() })
		d, handlers = dd.(*driver), 1
	}
	h := d
	if two {
		h = open(t, path, transport.Config{})
	}
	var subs []transport.Subscription
	for i := range handlers {
		subs = append(subs, subscribe(t, h, transport.SubscriptionSpec{Name: fmt.Sprintf("h%d", i), Pattern: "w.>"}))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	var published atomic.Int64
	data := make([]byte, 200)
	for range publishers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				m := msg("w.x")
				m.Data = data
				if err := d.Publish(ctx, []*transport.Message{m}); err != nil {
					return
				}
				published.Add(1)
			}
		}()
	}
	for _, s := range subs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				ds, err := s.Receive(ctx, 64)
				if err != nil {
					return
				}
				if err := s.Settle(context.Background(), settlements(ds, transport.Complete)); err != nil {
					return
				}
			}
		}()
	}
	var maxWAL int64
	for ctx.Err() == nil {
		if st, err := os.Stat(path + "-wal"); err == nil && st.Size() > maxWAL {
			maxWAL = st.Size()
		}
		time.Sleep(10 * time.Millisecond)
	}
	wg.Wait()
	t.Logf("%d published; largest WAL %d bytes; writer checkpoints %d; commits %d", published.Load(), maxWAL, d.w.selfCheckpoints.Load(), d.w.commits.Load())
	// The bound is walBoundFrames pages; the maintenance pass looks every
	// checkpointEvery commits and may be late on a loaded machine, so
	// allow a generous margin: without the bound the WAL reaches 100 to
	// 200 MB in these 4 s.
	const bound = 32 << 20
	if maxWAL > bound {
		t.Fatalf("the WAL grew to %d bytes, past %d", maxWAL, bound)
	}
}
