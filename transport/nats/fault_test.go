package nats

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/ripplehq/ripple"
	"github.com/ripplehq/ripple/transport"
)

// load runs publishers and one worker bus against url while fault runs,
// then checks that every event whose Publish returned nil was handled.
// A publisher retries a failed Publish with the same id until it returns
// nil, as an application whose Publish failed with ErrOutcomeUnknown
// would; deduplication keeps it stored once.
func load(t *testing.T, url string, publishers int, fault func()) {
	t.Helper()
	quiet := ripple.WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil)))
	const typ, name = "fault.load.published", "fault.worker"
	worker, err := ripple.Open(bg, url, quiet)
	if err != nil {
		t.Fatalf("Open worker: %v", err)
	}
	defer worker.Close()
	var mu sync.Mutex
	handled := map[string]int{}
	if err := worker.On(typ, name, func(_ context.Context, e ripple.Event) error {
		mu.Lock()
		handled[e.ID]++
		mu.Unlock()
		return nil
	}, ripple.Concurrency(8), ripple.Lease(2*time.Second)); err != nil {
		t.Fatalf("On: %v", err)
	}
	if err := worker.Start(bg); err != nil {
		t.Fatalf("Start: %v", err)
	}
	pub, err := ripple.Open(bg, url, quiet)
	if err != nil {
		t.Fatalf("Open publisher: %v", err)
	}
	defer pub.Close()

	var (
		amu      sync.Mutex
		acked    []string
		failures atomic.Int64
		unknown  atomic.Int64
		stop     atomic.Bool
		wg       sync.WaitGroup
	)
	for p := range publishers {
		wg.Go(func() {
			for i := 0; !stop.Load(); i++ {
				id := fmt.Sprintf("fault-%d-%d", p, i)
				for {
					ctx, cancel := context.WithTimeout(bg, 5*time.Second)
					_, err := pub.Publish(ctx, typ, map[string]int{"p": p, "i": i}, ripple.WithID(id))
					cancel()
					if err == nil {
						amu.Lock()
						acked = append(acked, id)
						amu.Unlock()
						break
					}
					failures.Add(1)
					if errors.Is(err, ripple.ErrOutcomeUnknown) {
						unknown.Add(1)
					}
					time.Sleep(50 * time.Millisecond)
				}
			}
		})
	}
	count := func() int { amu.Lock(); defer amu.Unlock(); return len(acked) }
	waitUntil(t, "publishers to get going", func() bool { return count() >= 5*publishers })
	fault()
	before := count()
	waitUntil(t, "publishing to go on after the fault", func() bool { return count() >= before+5*publishers })
	stop.Store(true)
	wg.Wait()
	amu.Lock()
	ids := append([]string(nil), acked...)
	amu.Unlock()
	missing := func() []string {
		mu.Lock()
		defer mu.Unlock()
		var out []string
		for _, id := range ids {
			if handled[id] == 0 {
				out = append(out, id)
			}
		}
		return out
	}
	deadline := time.Now().Add(2 * time.Minute)
	for len(missing()) > 0 {
		if time.Now().After(deadline) {
			m := missing()
			t.Fatalf("%d of %d acknowledged events were never handled (lost), e.g. %v", len(m), len(ids), m[:min(5, len(m))])
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("%d events acknowledged and handled; %d publish attempts failed during the fault (%d with outcome unknown) and were retried", len(ids), failures.Load(), unknown.Load())
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestServerKilledAndRestarted kills a private nats-server (JetStream,
// sync_interval: always) with SIGKILL while 16 publishers and a worker
// run, and starts it again on the same store: nothing acknowledged is
// lost, and the buses reconnect by themselves.
func TestServerKilledAndRestarted(t *testing.T) {
	port := freePort(t)
	srv := startServer(t, port, jsConf(t, port, ""))
	load(t, srv.url()+"/restart", 16, func() {
		srv.kill()
		time.Sleep(300 * time.Millisecond)
		srv.start()
	})
}

// TestConnectionCut cuts every client connection (through a TCP proxy)
// while 16 publishers and a worker run: the clients reconnect and nothing
// acknowledged is lost.
func TestConnectionCut(t *testing.T) {
	base := serverURL(t)
	target := base[len("nats://"):]
	p := startProxy(t, target)
	prefix := "t" + randHex(6)
	t.Cleanup(func() { deletePrefix(base, prefix) })
	load(t, "nats://"+p.addr()+"/"+prefix, 16, func() {
		p.cut()
		time.Sleep(200 * time.Millisecond)
		p.cut()
	})
}

// TestClusterNodeKilled runs a three-node JetStream cluster on loopback
// with every stream at three replicas, and kills one node (the events
// stream's leader) while 16 publishers and a worker run:
// publishing and handling go on and nothing acknowledged is lost.
func TestClusterNodeKilled(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a three-node cluster")
	}
	ports := []int{freePort(t), freePort(t), freePort(t)}
	cports := []int{freePort(t), freePort(t), freePort(t)}
	routes := ""
	for _, c := range cports {
		routes += fmt.Sprintf("nats://127.0.0.1:%d,", c)
	}
	var nodes []*server
	for i := range 3 {
		conf := fmt.Sprintf("server_name: n%d\nlisten: 127.0.0.1:%d\njetstream { store_dir: %q, sync_interval: always }\ncluster { name: ripple, listen: 127.0.0.1:%d, routes: [%s] }\n",
			i, ports[i], t.TempDir(), cports[i], routes[:len(routes)-1])
		nodes = append(nodes, startServer(t, ports[i], conf))
	}
	for _, n := range nodes {
		waitJetStream(t, n.url())
	}
	url := fmt.Sprintf("%s/cluster?replicas=3&servers=127.0.0.1:%d,127.0.0.1:%d", nodes[0].url(), ports[1], ports[2])
	load(t, url, 16, func() {
		nc, err := nats.Connect(nodes[0].url())
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		js, _ := jetstream.New(nc)
		s, err := js.Stream(bg, "ripple-cluster-events")
		if err != nil {
			t.Fatalf("stream info: %v", err)
		}
		info := s.CachedInfo()
		if info.Config.Replicas != 3 || info.Cluster == nil || len(info.Cluster.Replicas) != 2 {
			t.Fatalf("events stream has %d replicas (%+v), want 3", info.Config.Replicas, info.Cluster)
		}
		var leader int
		if _, err := fmt.Sscanf(info.Cluster.Leader, "n%d", &leader); err != nil {
			t.Fatalf("stream leader %q: %v", info.Cluster.Leader, err)
		}
		t.Logf("killing node n%d, the events stream's leader", leader)
		nodes[leader].kill()
	})
	// A tool opening the namespace without ?replicas does not scale it
	// down.
	alive := nodes[0]
	if alive.cmd == nil {
		alive = nodes[1]
	}
	// The killed leader's streams and buckets may still be electing new
	// leaders on a loaded machine, and Open fails until they have: try
	// again, as a tool would, for up to two minutes.
	var tool *Driver
	for deadline := time.Now().Add(2 * time.Minute); ; {
		d, err := Open(bg, alive.url()+"/cluster?timeout=30s", transport.Config{})
		if err == nil {
			tool = d.(*Driver)
			t.Cleanup(func() { _ = tool.Close() })
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("Open after the node was killed: %v", err)
		}
		t.Logf("Open after the node was killed: %v; trying again", err)
		time.Sleep(time.Second)
	}
	s, err := tool.js.Stream(bg, tool.eventsStream())
	if err != nil {
		t.Fatal(err)
	}
	if n := s.CachedInfo().Config.Replicas; n != 3 {
		t.Errorf("after a bus without ?replicas opened the namespace, the events stream has %d replicas; want 3", n)
	}
}
