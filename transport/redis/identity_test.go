package redis

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/ripplehq/ripple/transport"
)

// withSource returns a message with an id of its own under source.
func withSource(typ, source, id, data string) *transport.Message {
	return &transport.Message{
		ID: id, Type: typ, Time: time.Now().Add(-time.Hour).Round(time.Millisecond), Key: "k1",
		Attrs: map[string]string{"source": source, "datacontenttype": "application/json", "x-h": "v"},
		Data:  []byte(data),
	}
}

// TestPublishDedupBySourceAndID checks that publish deduplication is keyed
// on (source, id): the same id under another source is another event, and
// a duplicate stores nothing and reports the event first stored.
func TestPublishDedupBySourceAndID(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	d := openTest(t)
	subscribe(t, d, "h", "a.*", time.Minute)
	first := withSource("a.b", "src-a", "dup-7", `{"v":1}`)
	publish(t, d, first)
	if first.Duplicate != nil {
		t.Fatalf("first publish reported a duplicate: %+v", first.Duplicate)
	}
	again := withSource("a.c", "src-a", "dup-7", `{"v":2}`)
	again.Time = time.Now()
	publish(t, d, again)
	if again.Duplicate == nil {
		t.Fatal("publishing a stored (source, id) again did not report the duplicate")
	}
	k := again.Duplicate
	if k.ID != "dup-7" || k.Type != "a.b" || string(k.Data) != `{"v":1}` || !k.Time.Equal(first.Time) ||
		k.Key != "k1" || k.Source() != "src-a" || k.Attrs["x-h"] != "v" || k.Attrs["datacontenttype"] != "application/json" {
		t.Fatalf("duplicate reports %+v, want the first event (type a.b, data {\"v\":1}, time %v)", k, first.Time)
	}
	other := withSource("a.b", "src-b", "dup-7", `{"v":3}`)
	publish(t, d, other)
	if other.Duplicate != nil {
		t.Fatalf("the same id under another source was taken for a duplicate of %+v", other.Duplicate)
	}
	if n := d.client.XLen(ctx, d.streamKey("h")).Val(); n != 2 {
		t.Fatalf("stream holds %d entries, want 2 (one per source)", n)
	}

	// Duplicates and new events mixed in one call, and in concurrent
	// calls batched into one script call: each message learns its own
	// outcome.
	var wg sync.WaitGroup
	for i := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			fresh := withSource("a.b", "src-c", fmt.Sprintf("new-%d", i), `{}`)
			dup := withSource("a.b", "src-a", "dup-7", `{"v":9}`)
			if err := d.Publish(ctx, []*transport.Message{fresh, dup}); err != nil {
				t.Error(err)
				return
			}
			if fresh.Duplicate != nil || dup.Duplicate == nil || string(dup.Duplicate.Data) != `{"v":1}` {
				t.Errorf("call %d: fresh.Duplicate = %v, dup.Duplicate = %v; want nil and the first event", i, fresh.Duplicate, dup.Duplicate)
			}
		}()
	}
	wg.Wait()
	if n := d.client.XLen(ctx, d.streamKey("h")).Val(); n != 22 {
		t.Fatalf("stream holds %d entries, want 22", n)
	}
}

// TestPublishResendIsNotADuplicate checks that a resend of one publish
// script call (go-redis resends after a lost reply) that finds its own
// dedup record does not report the event as a duplicate of itself.
func TestPublishResendIsNotADuplicate(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	d := openTest(t)
	subscribe(t, d, "h", "a.*", time.Minute)
	m := withSource("a.b", "src", "resent", `{}`)
	for range 2 {
		j := &job{args: appendMessage(make([]any, publishHead), m, time.Hour, "nonce-1"), msgs: []*transport.Message{m}, n: 1}
		if err := d.batch.do(ctx, j); err != nil {
			t.Fatal(err)
		}
	}
	if m.Duplicate != nil {
		t.Fatalf("a resend of the same call was reported as a duplicate of %+v", m.Duplicate)
	}
	if n := d.client.XLen(ctx, d.streamKey("h")).Val(); n != 1 {
		t.Fatalf("stream holds %d entries, want 1", n)
	}
	j := &job{args: appendMessage(make([]any, publishHead), m, time.Hour, "nonce-2"), msgs: []*transport.Message{m}, n: 1}
	if err := d.batch.do(ctx, j); err != nil || m.Duplicate == nil {
		t.Fatalf("another call: err %v, Duplicate %v; want the duplicate reported", err, m.Duplicate)
	}
}
