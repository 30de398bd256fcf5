package redis

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/ripplehq/ripple"
	"github.com/ripplehq/ripple/transport"
)

// Bus-level fault tests: the server restarts, the network between the bus
// and the server fails, workers come and go. Each keeps a ledger of the
// events whose Publish returned nil and checks that every one is handled.

// handledSet is a handler that counts how often each event id ran.
type handledSet struct {
	mu      sync.Mutex
	handled map[string]int
	again   int // deliveries with an attempt already used
}

func newHandledSet() *handledSet { return &handledSet{handled: map[string]int{}} }

func (h *handledSet) handle(_ context.Context, e ripple.Event) error {
	h.mu.Lock()
	h.handled[e.ID]++
	if e.Attempt > 1 {
		h.again++
	}
	h.mu.Unlock()
	return nil
}

func (h *handledSet) missing(ids map[string]bool) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := 0
	for id := range ids {
		if h.handled[id] == 0 {
			n++
		}
	}
	return n
}

// waitAll waits until every id has been handled.
func (h *handledSet) waitAll(t *testing.T, what string, ids map[string]bool, bound time.Duration) {
	t.Helper()
	deadline := time.Now().Add(bound)
	for {
		n := h.missing(ids)
		if n == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %d of %d acknowledged events not handled after %s", what, n, len(ids), bound)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// ackedIDs is a set of acknowledged event ids that publishers add to
// concurrently.
type ackedIDs struct {
	mu  sync.Mutex
	ids map[string]bool
}

func (a *ackedIDs) add(id string) {
	a.mu.Lock()
	if a.ids == nil {
		a.ids = map[string]bool{}
	}
	a.ids[id] = true
	a.mu.Unlock()
}

func (a *ackedIDs) snapshot() map[string]bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make(map[string]bool, len(a.ids))
	for id := range a.ids {
		out[id] = true
	}
	return out
}

// quietBus opens a bus whose log is discarded (the faults make it log
// errors by design) and shuts it down when the test ends.
func quietBus(t *testing.T, url string) *ripple.Bus {
	t.Helper()
	b, err := ripple.Open(context.Background(), url, ripple.WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil))))
	if err != nil {
		t.Fatalf("ripple.Open: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = b.Shutdown(ctx)
	})
	return b
}

// TestGracefulRestartTwice: while many publishers publish through one bus,
// the server is shut down gracefully (SHUTDOWN, which writes its
// append-only file) and started again, twice. The bus reconnects by itself,
// for publishing and for handling; a Publish that could not reach the
// server returns an error; every event whose Publish returned nil is
// handled, including those published before each restart and not yet
// handled when it came. A read the server served just before it shut down
// loses its reply, and its entries come back once their lease runs out:
// the lease is short so that they do within the wait.
func TestGracefulRestartTwice(t *testing.T) {
	t.Parallel()
	srv := startServer(t)
	bus := quietBus(t, withParams(srv.url(), "prefix", "gracefulrestart"))
	sink := newHandledSet()
	if err := bus.On("restart.load.published", "restart.sink", sink.handle, ripple.Concurrency(32), ripple.Lease(2*time.Second)); err != nil {
		t.Fatal(err)
	}
	if err := bus.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	const publishers, perPublisher = 20, 100
	var acked ackedIDs
	var sent, failed, afterRestarts atomic.Int64
	var restarted atomic.Bool
	var wg sync.WaitGroup
	for p := range publishers {
		wg.Go(func() {
			for i := range perPublisher {
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
				ev, err := bus.Publish(ctx, "restart.load.published", map[string]int{"p": p, "i": i})
				cancel()
				sent.Add(1)
				if err != nil {
					failed.Add(1)
					time.Sleep(10 * time.Millisecond)
					continue
				}
				acked.add(ev.ID)
				if restarted.Load() {
					afterRestarts.Add(1)
				}
				time.Sleep(time.Millisecond)
			}
		})
	}
	restart := func() {
		c := goredis.NewClient(&goredis.Options{Addr: fmt.Sprintf("127.0.0.1:%d", srv.port)})
		_ = c.Do(context.Background(), "SHUTDOWN").Err() // the connection closes: no reply
		c.Close()
		exited := make(chan struct{})
		go func() {
			_ = srv.cmd.Wait()
			close(exited)
		}()
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			_ = srv.cmd.Process.Kill()
			<-exited
			srv.cmd = nil
			t.Fatalf("redis-server did not exit within 10 s of SHUTDOWN")
		}
		srv.cmd = nil
		time.Sleep(300 * time.Millisecond)
		srv.start()
	}
	for _, at := range []int64{publishers * perPublisher / 3, publishers * perPublisher / 2} {
		for sent.Load() < at {
			time.Sleep(time.Millisecond)
		}
		restart()
		t.Logf("server shut down gracefully and restarted after %d publishes", at)
	}
	restarted.Store(true)
	wg.Wait()
	all := acked.snapshot()
	t.Logf("%d publishes: %d acknowledged (%d after the second restart), %d returned an error", sent.Load(), len(all), afterRestarts.Load(), failed.Load())
	if afterRestarts.Load() == 0 {
		t.Fatalf("no Publish succeeded after the second restart; the bus did not reconnect")
	}
	sink.waitAll(t, "after two graceful restarts", all, 30*time.Second)
	sink.mu.Lock()
	t.Logf("every acknowledged event handled; %d deliveries came back after their lease ran out", sink.again)
	sink.mu.Unlock()
}

// faultProxy is a TCP proxy between the bus and the server whose links
// can be stalled (a partition in which the connections stay open, as when
// packets are dropped: half-open) or reset.
type faultProxy struct {
	l     net.Listener
	mu    sync.Mutex
	conns []net.Conn
	stall atomic.Bool
}

func newFaultProxy(t *testing.T, target string) *faultProxy {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &faultProxy{l: l}
	t.Cleanup(func() {
		l.Close()
		p.reset()
	})
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			u, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, c, u)
			p.mu.Unlock()
			go p.pipe(c, u)
			go p.pipe(u, c)
		}
	}()
	return p
}

func (p *faultProxy) pipe(dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		for p.stall.Load() {
			time.Sleep(5 * time.Millisecond)
		}
		n, err := src.Read(buf)
		if n > 0 {
			for p.stall.Load() { // hold what was read until the partition heals
				time.Sleep(5 * time.Millisecond)
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				src.Close()
				return
			}
		}
		if err != nil {
			dst.Close()
			return
		}
	}
}

// reset closes every connection through the proxy.
func (p *faultProxy) reset() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
}

// TestNetworkPartition: between the bus and the server, a two-second
// partition that leaves the connections open (half-open), then a reset of
// every connection. A Publish during the partition returns an error when
// its ctx ends, never a false success; the bus recovers by itself after
// each fault, for publishing and for handling; and every event whose
// Publish returned nil is handled.
func TestNetworkPartition(t *testing.T) {
	t.Parallel()
	srv := startServer(t)
	px := newFaultProxy(t, fmt.Sprintf("127.0.0.1:%d", srv.port))
	bus := quietBus(t, withParams("redis://"+px.l.Addr().String()+"/0", "prefix", "partition"))
	sink := newHandledSet()
	if err := bus.On("partition.load.published", "partition.sink", sink.handle, ripple.Concurrency(8), ripple.Lease(2*time.Second)); err != nil {
		t.Fatal(err)
	}
	if err := bus.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	type result struct {
		at  time.Time
		err error
	}
	var mu sync.Mutex
	var results []result
	var acked ackedIDs
	stop, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			ev, err := bus.Publish(ctx, "partition.load.published", i)
			cancel()
			mu.Lock()
			results = append(results, result{time.Now(), err})
			mu.Unlock()
			if err == nil {
				acked.add(ev.ID)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}()
	time.Sleep(500 * time.Millisecond)
	px.stall.Store(true)
	partAt := time.Now()
	time.Sleep(2 * time.Second)
	px.stall.Store(false)
	healAt := time.Now()
	time.Sleep(time.Second)
	px.reset()
	resetAt := time.Now()
	time.Sleep(time.Second)
	close(stop)
	<-done

	mu.Lock()
	var errsDuring, okAfterHeal, okAfterReset int
	for _, r := range results {
		switch {
		case r.at.After(partAt) && r.at.Before(healAt) && r.err != nil:
			errsDuring++
		case r.at.After(healAt) && r.at.Before(resetAt) && r.err == nil:
			okAfterHeal++
		case r.at.After(resetAt) && r.err == nil:
			okAfterReset++
		}
	}
	t.Logf("%d publishes: %d errors during the partition, %d successes after it healed, %d after the reset", len(results), errsDuring, okAfterHeal, okAfterReset)
	mu.Unlock()
	if errsDuring == 0 {
		t.Fatalf("no Publish failed during a 2 s partition with 1 s ctx deadlines; the partition did not take effect, or a Publish reported success without the server")
	}
	if okAfterHeal == 0 || okAfterReset == 0 {
		t.Fatalf("the bus did not recover by itself: %d successful publishes after the partition healed, %d after the reset", okAfterHeal, okAfterReset)
	}
	sink.waitAll(t, "after a partition and a reset", acked.snapshot(), 30*time.Second)
}

// TestScalingLeavesNoPending: workers of a handler join and leave (Close)
// while events flow. Once every event is handled and every worker has
// left, no entry is pending in the handler's group (an entry left pending
// for a departed consumer would wait for its lease and use an attempt),
// and no consumer of a departed worker is left in the group.
func TestScalingLeavesNoPending(t *testing.T) {
	t.Parallel()
	u := prefixURL(t)
	const typ, name = "scale.load.published", "scale.sink"
	sink := newHandledSet()
	publisher := quietBus(t, u)
	var live []*ripple.Bus
	join := func() {
		b, err := ripple.Open(context.Background(), u, ripple.WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil))))
		if err != nil {
			t.Fatal(err)
		}
		if err := b.On(typ, name, sink.handle, ripple.Concurrency(4), ripple.Lease(time.Second)); err != nil {
			t.Fatal(err)
		}
		if err := b.Start(context.Background()); err != nil {
			t.Fatal(err)
		}
		live = append(live, b)
	}
	join()
	var acked ackedIDs
	stop, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			ev, err := publisher.Publish(context.Background(), typ, i)
			if err != nil {
				t.Errorf("Publish: %v", err)
				return
			}
			acked.add(ev.ID)
			time.Sleep(500 * time.Microsecond)
		}
	}()
	joins, leaves := 1, 0
	for range 20 {
		time.Sleep(100 * time.Millisecond)
		// Between one and four workers, changing at every step.
		if len(live) == 4 || len(live) > 1 && rand.IntN(2) == 0 {
			i := rand.IntN(len(live))
			if err := live[i].Close(); err != nil {
				t.Errorf("Close of a leaving worker: %v", err)
			}
			live = slices.Delete(live, i, i+1)
			leaves++
		} else {
			join()
			joins++
		}
	}
	close(stop)
	<-done
	all := acked.snapshot()
	sink.waitAll(t, "with workers joining and leaving", all, 30*time.Second)
	for _, b := range live {
		if err := b.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	}
	var d transport.Driver
	if !publisher.As(&d) {
		t.Fatal("bus.As(*transport.Driver) = false")
	}
	rd := d.(*Driver)
	raw := rawClient(t, rd)
	ctx := context.Background()
	p, err := raw.XPending(ctx, rd.streamKey(name), name).Result()
	if err != nil {
		t.Fatal(err)
	}
	cs, err := raw.XInfoConsumers(ctx, rd.streamKey(name), name).Result()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d events handled with %d joins and %d leaves; after every worker left: %d pending, %d consumers in the group", len(all), joins, leaves, p.Count, len(cs))
	if p.Count != 0 {
		t.Errorf("%d entries still pending after every worker left gracefully (per consumer: %v)", p.Count, p.Consumers)
	}
	if len(cs) != 0 {
		t.Errorf("%d consumers left in the group after every worker closed: %v", len(cs), cs)
	}
}
