package redis

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"
	"github.com/ripplehq/ripple/transport"
)

// Environment of the child process started by TestKilledWorkerIsReclaimed.
const (
	envChildURL = "RIPPLE_REDIS_TEST_CHILD_URL"
)

// TestMain lets the test binary play a child process: a worker that takes
// one delivery and then hangs until it is killed, or a TLS client.
func TestMain(m *testing.M) {
	if u := os.Getenv(envChildURL); u != "" {
		os.Exit(hangingWorker(u))
	}
	if u := os.Getenv(envEphemeralChildURL); u != "" {
		os.Exit(ephemeralChild(u))
	}
	if u := os.Getenv(envTLSChildURL); u != "" {
		os.Exit(tlsChild(u))
	}
	os.Exit(m.Run())
}

func hangingWorker(u string) int {
	ctx := context.Background()
	d, err := Open(ctx, u, transport.Config{})
	if err != nil {
		fmt.Println("error:", err)
		return 1
	}
	s, err := d.Subscribe(ctx, transport.SubscriptionSpec{Name: "worker", Pattern: "job.*", Lease: 500 * time.Millisecond})
	if err != nil {
		fmt.Println("error:", err)
		return 1
	}
	ds, err := s.Receive(ctx, 1)
	if err != nil {
		fmt.Println("error:", err)
		return 1
	}
	fmt.Printf("handling %s attempt %d\n", ds[0].ID, ds[0].Attempt)
	select {} // mid-handler, until SIGKILL
}

func TestKilledWorkerIsReclaimed(t *testing.T) {
	t.Parallel()
	u := prefixURL(t)
	d := openURL(t, u, transport.Config{})
	// The subscription must exist before the publish so the event is kept.
	if _, err := d.Subscribe(context.Background(), transport.SubscriptionSpec{Name: "worker", Pattern: "job.*", Lease: 500 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	m := msg("job.run")
	publish(t, d, m)

	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), envChildURL+"="+u)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		if sc.Scan() {
			line <- sc.Text()
		}
		close(line)
	}()
	select {
	case l := <-line:
		if want := "handling " + m.ID + " attempt 1"; l != want {
			_ = cmd.Process.Kill()
			t.Fatalf("child said %q, want %q", l, want)
		}
	case <-time.After(10 * time.Second):
		_ = cmd.Process.Kill()
		t.Fatal("child did not take the event")
	}
	if err := cmd.Process.Kill(); err != nil { // SIGKILL mid-handler
		t.Fatal(err)
	}
	_ = cmd.Wait()

	s := subscribe(t, d, "worker", "job.*", 500*time.Millisecond)
	start := time.Now()
	got := receive(t, s, 1, 5*time.Second)[0]
	if got.ID != m.ID || got.Attempt != 2 {
		t.Fatalf("after the kill: got %s attempt %d, want %s attempt 2", got.ID, got.Attempt, m.ID)
	}
	t.Logf("reclaimed %v after the kill", time.Since(start))
	settle(t, s, transport.Complete, 0, got)
	if st := stats(t, d, "worker"); st.Completed != 1 || st.Active != 0 || st.Waiting != 0 {
		t.Fatalf("stats %+v", st)
	}
}

// TestRedisRestart kills a private redis-server (AOF always) in the middle
// of a run and starts it again: every acknowledged publish is delivered,
// and driver and receivers reconnect by themselves.
func TestRedisRestart(t *testing.T) {
	t.Parallel()
	srv := startServer(t)
	d := openURL(t, withParams(srv.url(), "prefix", "restart"), transport.Config{})
	s := subscribe(t, d, "h", "a.*", 2*time.Second)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	pubCtx, stopPublishing := context.WithCancel(ctx)
	defer stopPublishing()
	var (
		mu       sync.Mutex
		acked    = map[string]bool{}
		received = map[string]bool{}
		pubErrs  atomic.Int64
		recvErrs atomic.Int64
	)
	pubDone := make(chan struct{})
	go func() {
		defer close(pubDone)
		for pubCtx.Err() == nil {
			m := msg("a.b")
			pctx, pcancel := context.WithTimeout(pubCtx, 2*time.Second)
			err := d.Publish(pctx, []*transport.Message{m})
			pcancel()
			if err != nil {
				pubErrs.Add(1)
				time.Sleep(20 * time.Millisecond)
				continue
			}
			mu.Lock()
			acked[m.ID] = true
			mu.Unlock()
			time.Sleep(2 * time.Millisecond)
		}
	}()
	recvDone := make(chan struct{})
	go func() {
		defer close(recvDone)
		for ctx.Err() == nil {
			ds, err := s.Receive(ctx, 16)
			if err != nil {
				if ctx.Err() == nil {
					recvErrs.Add(1)
					time.Sleep(50 * time.Millisecond)
				}
				continue
			}
			mu.Lock()
			for _, d := range ds {
				received[d.ID] = true
			}
			mu.Unlock()
			_ = s.Settle(context.Background(), completeAll(ds))
		}
	}()

	time.Sleep(500 * time.Millisecond)
	srv.kill()
	// The outage is real: nothing answers on the port.
	if c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", srv.port), 200*time.Millisecond); err == nil {
		c.Close()
		t.Fatal("redis-server still accepts connections after being killed")
	}
	time.Sleep(1500 * time.Millisecond)
	srv.start()
	time.Sleep(700 * time.Millisecond)
	// Stop the publisher, then wait for every acknowledged event.
	stopPublishing()
	<-pubDone
	stopPub := time.Now()
	deadline := time.Now().Add(15 * time.Second)
	for {
		mu.Lock()
		missing := 0
		for id := range acked {
			if !received[id] {
				missing++
			}
		}
		total := len(acked)
		mu.Unlock()
		if missing == 0 && time.Since(stopPub) > 200*time.Millisecond {
			t.Logf("%d acknowledged events all delivered; %d publish and %d receive errors during the outage", total, pubErrs.Load(), recvErrs.Load())
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d acknowledged events never delivered after the restart", missing, total)
		}
		time.Sleep(50 * time.Millisecond)
	}
	cancel()
	<-recvDone
	// After the restart the driver still publishes and receives.
	m := msg("a.c")
	publish(t, d, m)
	if got := receive(t, s, 1, 5*time.Second); got[0].ID != m.ID {
		t.Fatalf("after restart got %s", got[0].ID)
	}
}

func TestOpenErrors(t *testing.T) {
	t.Parallel()
	base := serverURL(t)
	ctx := context.Background()
	cases := []struct{ url, want string }{
		{"redis://", "has no host"},
		{"http://localhost:6379", "must start with redis://"},
		{withParams(base, "prefx", "a"), "unexpected option: prefx"},
		{withParams(base, "prefix", "has space"), "prefix"},
		{withParams(base, "prefix", ""), "prefix must be 1 to 64"},
		{withParams(base, "allow_eviction", "maybe"), "allow_eviction must be true or false"},
		{withParams(base, "skip_verify", "true"), "(with rediss:// only) skip_verify"},
		{"redis://127.0.0.1:1/0?dial_timeout=1s", "cannot reach Redis"},
		{"redis://127.0.0.1:6379/x", "invalid database number"},
	}
	for _, c := range cases {
		_, err := Open(ctx, c.url, transport.Config{})
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Open(%q) = %v, want an error containing %q", c.url, err, c.want)
		}
	}
}

func TestOpenRefusesUnsafeServers(t *testing.T) {
	t.Parallel()
	srv := startServer(t, "--requirepass", "s3cret", "--maxmemory-policy", "allkeys-lru")
	ctx := context.Background()
	_, err := Open(ctx, srv.url(), transport.Config{})
	if err == nil || !strings.Contains(err.Error(), "requires a password") {
		t.Fatalf("no password: %v", err)
	}
	withPass := fmt.Sprintf("redis://:wrong@127.0.0.1:%d/0", srv.port)
	_, err = Open(ctx, withPass, transport.Config{})
	if err == nil || !strings.Contains(err.Error(), "rejected the user name or password") || strings.Contains(err.Error(), "wrong") {
		t.Fatalf("wrong password: %v (the password must not appear)", err)
	}
	good := fmt.Sprintf("redis://:s3cret@127.0.0.1:%d/0", srv.port)
	_, err = Open(ctx, good, transport.Config{})
	if err == nil || !strings.Contains(err.Error(), "maxmemory-policy allkeys-lru") || strings.Contains(err.Error(), "s3cret") {
		t.Fatalf("evicting server: %v", err)
	}
	d, err := Open(ctx, withParams(good, "allow_eviction", "true"), transport.Config{})
	if err != nil {
		t.Fatalf("allow_eviction=true: %v", err)
	}
	d.Close()
	if err := d.Publish(ctx, []*transport.Message{msg("a.b")}); !errors.Is(err, ErrClosed) {
		t.Fatalf("Publish after Close: %v", err)
	}
}

// TestOpenRefusesReplicasAndClusterNodes checks that Open names the
// problem with a server whose writes would fail (a read-only replica) or be
// lost at the next resync (a writable replica), and with a Redis Cluster
// node, whose key slots Ripple's scripts do not respect.
func TestOpenRefusesReplicasAndClusterNodes(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	primary := startServer(t)
	for _, c := range []struct {
		name string
		args []string
		want string
	}{
		{"replica", []string{"--replicaof", "127.0.0.1", strconv.Itoa(primary.port)}, "is a replica of 127.0.0.1:" + strconv.Itoa(primary.port)},
		{"writable replica", []string{"--replicaof", "127.0.0.1", strconv.Itoa(primary.port), "--replica-read-only", "no"}, "is a replica of"},
		{"cluster node", []string{"--cluster-enabled", "yes"}, "Redis Cluster"},
	} {
		srv := startServer(t, c.args...)
		d, err := Open(ctx, srv.url(), transport.Config{})
		if err == nil {
			d.Close()
		}
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: Open = %v, want an error containing %q", c.name, err, c.want)
		}
	}
}

// TestPrimaryTurnedReplicaFailsWrites checks what the package doc says of
// a failover after Open: writes fail with Redis's READONLY error instead
// of going anywhere.
func TestPrimaryTurnedReplicaFailsWrites(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	other := startServer(t)
	srv := startServer(t)
	d := openURL(t, srv.url(), transport.Config{})
	c := goredis.NewClient(&goredis.Options{Addr: fmt.Sprintf("127.0.0.1:%d", srv.port)})
	defer c.Close()
	if err := c.ReplicaOf(ctx, "127.0.0.1", strconv.Itoa(other.port)).Err(); err != nil {
		t.Fatal(err)
	}
	err := d.Publish(ctx, []*transport.Message{msg("a.b")})
	if err == nil || !strings.Contains(err.Error(), "READONLY") {
		t.Fatalf("Publish to a demoted primary = %v, want Redis's READONLY error", err)
	}
}

// TestPublishHonoursCtxDeadline checks that a Publish waiting for a Redis
// that stopped answering returns when its ctx's deadline passes, not at
// the client's read timeout.
func TestPublishHonoursCtxDeadline(t *testing.T) {
	t.Parallel()
	srv := startServer(t, "--appendonly", "no", "--enable-debug-command", "yes")
	d := openURL(t, srv.url(), transport.Config{})
	subscribe(t, d, "h", "a.*", time.Minute)
	publish(t, d, msg("a.b"))
	raw := goredis.NewClient(&goredis.Options{Addr: fmt.Sprintf("127.0.0.1:%d", srv.port), ReadTimeout: time.Minute})
	defer raw.Close()
	go raw.Do(context.Background(), "DEBUG", "SLEEP", "3")
	time.Sleep(100 * time.Millisecond)

	for _, ownID := range []bool{false, true} {
		m := msg("a.b")
		m.IDGenerated = !ownID
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		start := time.Now()
		err := d.Publish(ctx, []*transport.Message{m})
		took := time.Since(start)
		cancel()
		if err == nil || took > time.Second {
			t.Fatalf("own id %v: Publish with a 200ms ctx returned %v after %v; want an error once the deadline passed", ownID, err, took)
		}
	}
}

// TestRetryWithIDAfterLostReplyStoresOnce checks the package doc's advice:
// an event published with an id of its own whose reply was lost (Redis
// busy past the client's read timeout, then running the command) can be
// published again with the same id, and is stored once.
func TestRetryWithIDAfterLostReplyStoresOnce(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	srv := startServer(t, "--appendonly", "no")
	d := openURL(t, withParams(srv.url(), "read_timeout", "100ms"), transport.Config{})
	subscribe(t, d, "h", "a.b", time.Minute)
	raw := goredis.NewClient(&goredis.Options{Addr: fmt.Sprintf("127.0.0.1:%d", srv.port)})
	defer raw.Close()
	busy := make(chan error, 1)
	go func() {
		// Keeps Redis busy for 400 ms (DEBUG SLEEP would need a flag).
		busy <- raw.Eval(ctx, `local t0 = redis.call('TIME')
local s0 = tonumber(t0[1]) * 1000000 + tonumber(t0[2])
while true do
  local t = redis.call('TIME')
  if tonumber(t[1]) * 1000000 + tonumber(t[2]) - s0 > 400000 then break end
end
return 1`, nil).Err()
	}()
	time.Sleep(50 * time.Millisecond)
	m := msg("a.b") // an id of its own, as with ripple.WithID
	first := d.Publish(ctx, []*transport.Message{m})
	if err := <-busy; err != nil {
		t.Fatal(err)
	}
	publish(t, d, m)
	if n := raw.XLen(ctx, d.streamKey("h")).Val(); n != 1 {
		t.Fatalf("first publish: %v; after the retry the stream holds %d entries, want 1", first, n)
	}
}

// TestFullRedisStillDelivers checks that on a full Redis (maxmemory with
// noeviction), where moving a due delayed event to the stream is refused,
// the events already in the stream are still delivered, so the backlog
// can drain; the delayed one waits and follows once memory is freed.
func TestFullRedisStillDelivers(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	srv := startServer(t, "--appendonly", "no", "--maxmemory-policy", "noeviction")
	d := openURL(t, srv.url(), transport.Config{})
	s := subscribe(t, d, "h", "a.*", 30*time.Second)
	waiting := msg("a.b")
	publish(t, d, waiting)
	later := msg("a.b")
	later.Delay = 50 * time.Millisecond
	publish(t, d, later)

	raw := rawClient(t, d)
	fill(t, raw)
	time.Sleep(100 * time.Millisecond) // the delayed event is due
	if err := d.Publish(ctx, []*transport.Message{msg("a.b")}); err == nil || !strings.Contains(err.Error(), "OOM") {
		t.Fatalf("Publish on a full Redis = %v, want Redis's OOM error", err)
	}
	got := receive(t, s, 1, 3*time.Second)
	if got[0].ID != waiting.ID {
		t.Fatalf("received %s, want the event waiting in the stream %s", got[0].ID, waiting.ID)
	}
	if err := raw.ConfigSet(ctx, "maxmemory", "0").Err(); err != nil {
		t.Fatal(err)
	}
	if got := receive(t, s, 1, 3*time.Second); got[0].ID != later.ID {
		t.Fatalf("received %s once memory was freed, want the delayed event %s", got[0].ID, later.ID)
	}
}

// TestFullRedisErrorSaysWhatToDo checks that a publisher that has not read
// the registry yet gets, on a full Redis, an error that says Redis is
// full and what to do, not a discarded transaction.
func TestFullRedisErrorSaysWhatToDo(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	srv := startServer(t, "--appendonly", "no", "--maxmemory-policy", "noeviction")
	d := openURL(t, srv.url(), transport.Config{})
	subscribe(t, d, "h", "a.*", time.Minute)
	raw := rawClient(t, d)
	fill(t, raw)
	fresh := openURL(t, srv.url(), transport.Config{})
	for _, ownID := range []bool{false, true} {
		m := msg("a.b")
		m.IDGenerated = !ownID
		err := fresh.Publish(ctx, []*transport.Message{m})
		if err == nil || !strings.Contains(err.Error(), "Redis is full (maxmemory)") || !strings.Contains(err.Error(), "OOM") {
			t.Errorf("own id %v: Publish on a full Redis = %v; want an error that says Redis is full, with Redis's own", ownID, err)
		}
		if !errors.Is(err, transport.ErrStorageFull) || errors.Is(err, transport.ErrOutcomeUnknown) {
			t.Errorf("own id %v: Publish on a full Redis = %v; want it to match transport.ErrStorageFull (and not ErrOutcomeUnknown)", ownID, err)
		}
	}
}

// fill fills a Redis (started with maxmemory-policy noeviction) past its
// maxmemory with an application's own data.
func fill(t *testing.T, raw *goredis.Client) {
	t.Helper()
	ctx := context.Background()
	big := strings.Repeat("x", 256<<10)
	for i := range 16 {
		if err := raw.Set(ctx, fmt.Sprintf("app:blob:%d", i), big, 0).Err(); err != nil {
			t.Fatal(err)
		}
	}
	if err := raw.ConfigSet(ctx, "maxmemory", "2mb").Err(); err != nil {
		t.Fatal(err)
	}
}
