package sqlite

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/ripplehq/ripple/transport"
)

// publishGrouped publishes each slice of msgs from its own goroutine while
// the writer is held, so that all of them land in one transaction, and
// returns each call's error and how many transactions they took.
func publishGrouped(t *testing.T, d *driver, groups ...[]*transport.Message) ([]error, int64) {
	t.Helper()
	w := d.w
	w.mu.Lock()
	before := w.batches.Load()
	errs := make([]error, len(groups))
	done := make(chan int, len(groups))
	for i, g := range groups {
		go func() {
			errs[i] = d.Publish(context.Background(), g)
			done <- i
		}()
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		queued := len(w.ops)
		if w.wantLock.Load() {
			queued++ // the writer goroutine holds one while it waits
		}
		if queued == len(groups) {
			break
		}
		if time.Now().After(deadline) {
			w.mu.Unlock()
			t.Fatalf("only %d of %d publishes queued", queued, len(groups))
		}
		time.Sleep(time.Millisecond)
	}
	w.mu.Unlock()
	for range groups {
		<-done
	}
	return errs, w.batches.Load() - before
}

// TestGroupedPublishes checks that publishes sharing a transaction, and so
// multi-row statements, keep every per-message semantic: deduplication
// within the group and against remembered ids, nil messages, fan-out with
// ordering keys, runs longer than one statement, and an invalid message
// failing only its own call.
func TestGroupedPublishes(t *testing.T) {
	d, _ := newDB(t)
	all := subscribe(t, d, transport.SubscriptionSpec{Name: "all", Pattern: "a.>", Ordered: true})
	ab := subscribe(t, d, transport.SubscriptionSpec{Name: "ab", Pattern: "a.b"})
	remembered := msg("a.b")
	publish(t, d, remembered)
	for _, s := range []transport.Subscription{all, ab} {
		settle(t, s, receive(t, s, 1, time.Second)[0], transport.Complete, 0, "")
	}

	m1, m2, m3 := msg("a.b"), msg("a.c"), msg("a.b")
	m3.Key = "k3"
	dup := *m1
	dup.Data = []byte("dup")
	again := *remembered
	again.Data = []byte("again")
	var many []*transport.Message
	for range 70 {
		many = append(many, msg("a.x"))
	}
	errs, batches := publishGrouped(t, d,
		[]*transport.Message{m1, m2, nil, &dup},
		[]*transport.Message{&again, m3, m1},
		many)
	for i, err := range errs {
		if err != nil {
			t.Fatalf("publish %d: %v", i, err)
		}
	}
	if batches != 1 {
		t.Fatalf("the publishes took %d transactions, want 1", batches)
	}

	got := func(s transport.Subscription, want int) map[string]*transport.Delivery {
		t.Helper()
		byID := map[string]*transport.Delivery{}
		deadline := time.Now().Add(2 * time.Second)
		for len(byID) < want && time.Now().Before(deadline) {
			ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
			ds, _ := s.Receive(ctx, 100)
			cancel()
			for _, dl := range ds {
				if byID[dl.ID] != nil {
					t.Fatalf("%s delivered twice", dl.ID)
				}
				byID[dl.ID] = dl
			}
		}
		receiveNone(t, s, 50*time.Millisecond)
		if len(byID) != want {
			ids := make([]string, 0, len(byID))
			for id := range byID {
				ids = append(ids, id)
			}
			sort.Strings(ids)
			t.Fatalf("got %d deliveries, want %d: %s", len(byID), want, strings.Join(ids, " "))
		}
		return byID
	}
	a := got(all, 3+len(many))
	if string(a[m1.ID].Data) != string(m1.Data) {
		t.Errorf("m1 stored with data %q, want the first publish's %q", a[m1.ID].Data, m1.Data)
	}
	if a[m3.ID].Key != "k3" || a[m2.ID].Type != "a.c" {
		t.Errorf("fields mixed up: m3 key %q, m2 type %q", a[m3.ID].Key, a[m2.ID].Type)
	}
	for _, m := range many {
		if a[m.ID] == nil {
			t.Fatalf("%s of the long run missing", m.ID)
		}
	}
	b := got(ab, 2)
	if b[m1.ID] == nil || b[m3.ID] == nil {
		t.Fatalf("ab got %v", b)
	}

	// An invalid message fails its own call only.
	good := msg("a.b")
	errs, _ = publishGrouped(t, d, []*transport.Message{good}, []*transport.Message{msg("a.b"), {Type: "a.b"}})
	if errs[0] != nil {
		t.Fatalf("valid publish failed with its invalid neighbour: %v", errs[0])
	}
	if errs[1] == nil || !strings.Contains(errs[1].Error(), "no ID") {
		t.Fatalf("invalid publish: %v, want a missing-ID error", errs[1])
	}
	if ds := got(ab, 1); ds[good.ID] == nil {
		t.Fatalf("got %v, want only %s", ds, good.ID)
	}
}

// TestDataVersionSkipsNothing checks that a subscription made by another
// connection between two publishes of a warm writer is seen by the second,
// which the data-version shortcut must not hide.
func TestDataVersionSkipsNothing(t *testing.T) {
	d1, path := newDB(t)
	d2 := open(t, path, transport.Config{})
	s1 := subscribe(t, d1, transport.SubscriptionSpec{Name: "one", Pattern: "a.>"})
	for i := range 3 {
		publish(t, d1, msg(fmt.Sprintf("a.warm%d", i)))
	}
	receive(t, s1, 3, time.Second)
	s2 := subscribe(t, d2, transport.SubscriptionSpec{Name: "two", Pattern: "a.>"})
	m := msg("a.b")
	publish(t, d1, m)
	if ds := receive(t, s2, 1, time.Second); ds[0].ID != m.ID {
		t.Fatalf("got %s, want %s", ds[0].ID, m.ID)
	}
}
