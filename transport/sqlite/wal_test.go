package sqlite

import (
	"context"
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
	if testing.Short() {
		t.Skip("writes for a few seconds")
	}
	path := filepath.Join(t.TempDir(), "wal.db")
	d := open(t, path, transport.Config{})
	s := subscribe(t, d, transport.SubscriptionSpec{Name: "h", Pattern: "w.>"})
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	var published atomic.Int64
	data := make([]byte, 200)
	for range 16 {
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
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			ds, err := s.Receive(ctx, 64)
			if err != nil {
				return
			}
			settleAll(t, s, ds, transport.Complete)
		}
	}()
	var maxWAL int64
	for ctx.Err() == nil {
		if st, err := os.Stat(path + "-wal"); err == nil && st.Size() > maxWAL {
			maxWAL = st.Size()
		}
		time.Sleep(10 * time.Millisecond)
	}
	wg.Wait()
	t.Logf("%d published; largest WAL %d bytes; writer checkpoints %d; commits %d", published.Load(), maxWAL, d.w.selfCheckpoints.Load(), d.w.commits.Load())
	if bound := int64(walBoundFrames*4096) * 4; maxWAL > bound {
		t.Fatalf("the WAL grew to %d bytes, past four times its bound of %d frames", maxWAL, walBoundFrames)
	}
}
