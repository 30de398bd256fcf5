package redis

import (
	"context"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/ripplehq/ripple/transport"
)

// usedMemory reads the server's used_memory.
func usedMemory(t *testing.T, raw *goredis.Client) int64 {
	t.Helper()
	info, err := raw.Info(context.Background(), "memory").Result()
	if err != nil {
		t.Fatal(err)
	}
	for l := range strings.SplitSeq(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(l), "used_memory:"); ok {
			n, _ := strconv.ParseInt(v, 10, 64)
			return n
		}
	}
	t.Fatal("INFO memory has no used_memory")
	return 0
}

// TestDirectPublishOOMConcurrent fills Redis while 32 publishers take the
// direct path at once, so their publishes share pipelines in which some
// XADDs are stored and later ones refused. A publisher told that Redis
// is full must not have its event stored.
func TestDirectPublishOOMConcurrent(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	// A private server: maxmemory is server-wide, and other tests share
	// the test server.
	d := openURL(t, startServer(t, "--appendonly", "no", "--maxmemory-policy", "noeviction").url(), transport.Config{})
	raw := rawClient(t, d)
	subscribe(t, d, "h", "a.*", time.Minute)
	for round := 0; round < 20; round++ {
		raw.XTrimMaxLen(ctx, d.streamKey("h"), 0)
		if err := raw.ConfigSet(ctx, "maxmemory", strconv.FormatInt(usedMemory(t, raw)+(2<<20), 10)).Err(); err != nil {
			t.Fatal(err)
		}
		var mu sync.Mutex
		failed := map[string]string{}
		var wg sync.WaitGroup
		for range 32 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for range 400 {
					m := msg("a.b")
					m.IDGenerated = true // as bus.Publish without WithID: the direct path
					m.Data = []byte(strings.Repeat("y", 2000))
					if err := d.Publish(ctx, []*transport.Message{m}); err != nil {
						mu.Lock()
						failed[m.ID] = err.Error()
						mu.Unlock()
						return
					}
				}
			}()
		}
		wg.Wait()
		raw.ConfigSet(ctx, "maxmemory", "0")
		if len(failed) == 0 {
			t.Fatalf("round %d: no publish failed, so Redis never filled up", round)
		}
		es, _ := raw.XRange(ctx, d.streamKey("h"), "-", "+").Result()
		for _, e := range es {
			id, _ := e.Values["id"].(string)
			if msg, ok := failed[id]; ok {
				t.Fatalf("round %d: Publish of %s returned %q, yet the event is stored in the handler's stream and will be delivered", round, id, msg)
			}
		}
		for id, msg := range failed {
			if !strings.Contains(msg, "Redis is full (maxmemory), nothing was stored") {
				t.Fatalf("round %d: Publish of %s returned %q, want Redis's OOM with nothing stored", round, id, msg)
			}
		}
	}
}

// TestDirectPublishOOMSeveralStreams is TestDirectPublishOOMConcurrent
// with half of the events going to two handlers, so that batches run in
// MULTI/EXEC: each event must be stored for all its handlers or none, and
// reported failed exactly when it was stored for none.
func TestDirectPublishOOMSeveralStreams(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	// A private server: maxmemory is server-wide, and other tests share
	// the test server.
	d := openURL(t, startServer(t, "--appendonly", "no", "--maxmemory-policy", "noeviction").url(), transport.Config{})
	raw := rawClient(t, d)
	subscribe(t, d, "h", "a.>", time.Minute)
	subscribe(t, d, "m", "a.m.*", time.Minute)
	for round := 0; round < 10; round++ {
		raw.XTrimMaxLen(ctx, d.streamKey("h"), 0)
		raw.XTrimMaxLen(ctx, d.streamKey("m"), 0)
		if err := raw.ConfigSet(ctx, "maxmemory", strconv.FormatInt(usedMemory(t, raw)+(2<<20), 10)).Err(); err != nil {
			t.Fatal(err)
		}
		var mu sync.Mutex
		outcome := map[string]error{} // id → Publish's error
		types := map[string]string{}
		var wg sync.WaitGroup
		for g := range 32 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for k := range 400 {
					typ := "a.b"
					if (g+k)%2 == 0 {
						typ = "a.m.x"
					}
					m := msg(typ)
					m.IDGenerated = true
					m.Data = []byte(strings.Repeat("y", 2000))
					err := d.Publish(ctx, []*transport.Message{m})
					mu.Lock()
					outcome[m.ID], types[m.ID] = err, typ
					mu.Unlock()
					if err != nil {
						return
					}
				}
			}()
		}
		wg.Wait()
		raw.ConfigSet(ctx, "maxmemory", "0")
		in := map[string]int{}
		for _, h := range []string{"h", "m"} {
			es, _ := raw.XRange(ctx, d.streamKey(h), "-", "+").Result()
			for _, e := range es {
				id, _ := e.Values["id"].(string)
				in[id]++
			}
		}
		nfailed := 0
		for id, err := range outcome {
			want := 1
			if types[id] == "a.m.x" {
				want = 2
			}
			switch {
			case err != nil && in[id] != 0:
				t.Fatalf("round %d: Publish of %s (%s) returned %q, yet the event is stored in %d of its %d streams", round, id, types[id], err, in[id], want)
			case err != nil:
				nfailed++
				if !strings.Contains(err.Error(), "Redis is full (maxmemory), nothing was stored") {
					t.Fatalf("round %d: Publish of %s returned %q, want Redis's OOM with nothing stored", round, id, err)
				}
			case in[id] != want:
				t.Fatalf("round %d: Publish of %s (%s) returned nil, but the event is in %d of its %d streams", round, id, types[id], in[id], want)
			}
		}
		if nfailed == 0 {
			t.Fatalf("round %d: no publish failed, so Redis never filled up", round)
		}
	}
}

// directJob builds the job Publish makes for messages on the direct path.
func directJob(ms ...*transport.Message) *job {
	j := &job{}
	for _, m := range ms {
		args := make([]any, xaddHead, xaddHead+10+2*len(m.Attrs))
		args[0], args[2], args[3] = "xadd", "nomkstream", "*"
		j.direct = append(j.direct, directMsg{typ: m.Type, args: appendFields(args, m)})
		j.n++
	}
	return j
}

// TestDirectBatchErrorPerJob runs one batch of direct publishes in which
// Redis refuses one job's XADD (its handler's stream is replaced by a
// string): that job alone fails, and a job with events on both sides
// learns that it was stored in part.
func TestDirectBatchErrorPerJob(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	d := openTest(t)
	raw := rawClient(t, d)
	subscribe(t, d, "good", "a.*", time.Minute)
	subscribe(t, d, "bad", "b.*", time.Minute)
	if err := raw.Del(ctx, d.streamKey("bad")).Err(); err != nil {
		t.Fatal(err)
	}
	if err := raw.Set(ctx, d.streamKey("bad"), "not a stream", 0).Err(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { raw.Del(context.Background(), d.streamKey("bad")) })

	ok, fails, mixed := directJob(msg("a.1")), directJob(msg("b.1")), directJob(msg("a.2"), msg("b.2"))
	d.execDirect(ctx, []*job{ok, fails, mixed})
	if ok.err != nil {
		t.Errorf("job whose event was stored: err = %v, want nil", ok.err)
	}
	if fails.err == nil || !strings.Contains(fails.err.Error(), "WRONGTYPE") || strings.Contains(fails.err.Error(), "part of it") {
		t.Errorf("job whose event was refused: err = %v, want WRONGTYPE, not stored in part", fails.err)
	}
	if mixed.err == nil || !strings.Contains(mixed.err.Error(), "WRONGTYPE") || !strings.Contains(mixed.err.Error(), "stored part of it") {
		t.Errorf("job with one event stored and one refused: err = %v, want WRONGTYPE, stored part of it", mixed.err)
	}
	if n := raw.XLen(ctx, d.streamKey("good")).Val(); n != 2 {
		t.Errorf("good stream has %d entries, want 2", n)
	}

	// The same three jobs, one of whose events also goes to a second
	// stream, run in MULTI/EXEC: Redis runs every command, refusing the
	// one XADD, so the outcomes are the same.
	subscribe(t, d, "also", "a.1", time.Minute)
	if _, err := d.loadRoutes(ctx); err != nil {
		t.Fatal(err)
	}
	ok, fails, mixed = directJob(msg("a.1")), directJob(msg("b.1")), directJob(msg("a.2"), msg("b.2"))
	d.execDirect(ctx, []*job{ok, fails, mixed})
	if ok.err != nil || fails.err == nil || mixed.err == nil || !strings.Contains(mixed.err.Error(), "stored part of it") {
		t.Errorf("in MULTI/EXEC: errors %v, %v, %v; want nil, WRONGTYPE, stored part of it", ok.err, fails.err, mixed.err)
	}
	if n := raw.XLen(ctx, d.streamKey("also")).Val(); n != 1 {
		t.Errorf("second stream of a.1 has %d entries, want 1", n)
	}
}

// TestPartialPublishErrOOM checks the wording of a full Redis's refusal
// of part of a publish: it must not claim that nothing was stored.
func TestPartialPublishErrOOM(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	// A private server: maxmemory is server-wide, and other tests share
	// the test server.
	d := openURL(t, startServer(t, "--appendonly", "no", "--maxmemory-policy", "noeviction").url(), transport.Config{})
	raw := rawClient(t, d)
	if err := raw.ConfigSet(ctx, "maxmemory", "1").Err(); err != nil {
		t.Fatal(err)
	}
	oom := raw.Set(ctx, d.prefix+":x", "x", 0).Err()
	raw.ConfigSet(ctx, "maxmemory", "0")
	if !goredis.HasErrorPrefix(oom, "OOM") {
		t.Fatalf("SET with maxmemory 1: %v, want OOM", oom)
	}
	if msg := partialPublishErr(oom).Error(); strings.Contains(msg, "nothing was stored") || !strings.Contains(msg, "Redis is full (maxmemory)") || !strings.Contains(msg, "after storing part of it") {
		t.Errorf("partialPublishErr(OOM) = %q", msg)
	}
	if msg := publishErr(oom, true).Error(); !strings.Contains(msg, "nothing was stored") {
		t.Errorf("publishErr(OOM) = %q", msg)
	}
}

// TestPublishScriptOOMAllOrNothing checks what execBatch relies on: a
// publish script call that starts below maxmemory stores all of its
// messages even when they take Redis past the limit, and one that starts
// above stores none.
func TestPublishScriptOOMAllOrNothing(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	// A private server: maxmemory is server-wide, and other tests share
	// the test server.
	d := openURL(t, startServer(t, "--appendonly", "no", "--maxmemory-policy", "noeviction").url(), transport.Config{})
	raw := rawClient(t, d)
	subscribe(t, d, "h", "a.*", time.Minute)
	j := &job{args: make([]any, publishHead)}
	for range 40 {
		m := msg("a.b")
		m.Data = []byte(strings.Repeat("y", 50_000)) // 2 MB in all
		j.args = appendMessage(j.args, m, time.Hour, "n")
		j.n++
	}
	if err := raw.ConfigSet(ctx, "maxmemory", strconv.FormatInt(usedMemory(t, raw)+(3<<20), 10)).Err(); err != nil {
		t.Fatal(err)
	}
	d.execBatch(ctx, []*job{j})
	if j.err != nil {
		t.Fatalf("script call started below maxmemory: %v", j.err)
	}
	if n := raw.XLen(ctx, d.streamKey("h")).Val(); n != 40 {
		t.Fatalf("stream has %d entries, want 40", n)
	}
	// Now above the limit: a call refused stores none of its messages.
	raw.ConfigSet(ctx, "maxmemory", "1")
	j2 := &job{args: make([]any, publishHead)}
	for range 3 {
		j2.args = appendMessage(j2.args, msg("a.b"), time.Hour, "n")
	}
	d.execBatch(ctx, []*job{j2})
	raw.ConfigSet(ctx, "maxmemory", "0")
	if j2.err == nil || !strings.Contains(j2.err.Error(), "nothing was stored") {
		t.Fatalf("script call above maxmemory: %v, want Redis is full, nothing stored", j2.err)
	}
	if n := raw.XLen(ctx, d.streamKey("h")).Val(); n != 40 {
		t.Fatalf("stream has %d entries after a refused call, want 40", n)
	}
}
