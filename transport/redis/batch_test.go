package redis

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/ripplehq/ripple/transport"
)

// TestConcurrentSettlesAndPublishes settles deliveries one per goroutine,
// as the core does, while other goroutines publish, so settlements of two
// subscriptions and publishes share batches; every outcome must be
// recorded exactly as if each call had run alone.
func TestConcurrentSettlesAndPublishes(t *testing.T) {
	t.Parallel()
	d := openTest(t)
	subA := subscribe(t, d, "a", "x.*", time.Minute)
	subB := subscribe(t, d, "b", "x.*", time.Minute)
	const n = 120
	for range n / 10 {
		ms := make([]*transport.Message, 10)
		for i := range ms {
			ms[i] = msg("x.y")
		}
		publish(t, d, ms...)
	}
	ctx := context.Background()
	var wg sync.WaitGroup
	// More publishes, concurrent with the settlements below; they must
	// neither be lost nor disturb the settlements.
	late := make([]*transport.Message, 40)
	for i := range late {
		late[i] = msg("x.z")
	}
	for i := range late {
		wg.Go(func() {
			if err := d.Publish(ctx, []*transport.Message{late[i]}); err != nil {
				t.Errorf("Publish: %v", err)
			}
		})
	}
	for _, s := range []transport.Subscription{subA, subB} {
		ds := receive(t, s, n, 5*time.Second)
		for i, dl := range ds {
			st := transport.Settlement{Delivery: dl, Outcome: transport.Complete}
			switch i % 4 {
			case 1:
				st = transport.Settlement{Delivery: dl, Outcome: transport.Retry, Delay: time.Hour, Error: "later"}
			case 2:
				st = transport.Settlement{Delivery: dl, Outcome: transport.Dead, Error: "broken"}
			}
			wg.Go(func() {
				if err := s.Settle(ctx, []transport.Settlement{st}); err != nil {
					t.Errorf("Settle: %v", err)
				}
			})
		}
	}
	wg.Wait()
	for _, name := range []string{"a", "b"} {
		st := stats(t, d, name)
		if st.Active != 0 || st.Delayed != n/4 || st.Dead != n/4 || st.Failed != n/2 || st.Waiting != int64(len(late)) || st.Completed != n/2 {
			t.Errorf("stats of %s = %+v; want 0 active, %d delayed, %d dead, %d failed, %d waiting, %d completed",
				name, st, n/4, n/4, n/2, len(late), n/2)
		}
	}
	got := map[string]bool{}
	for _, dl := range receive(t, subA, len(late), 5*time.Second) {
		got[dl.ID] = true
	}
	for _, m := range late {
		if !got[m.ID] {
			t.Errorf("event %s published concurrently with settlements was not delivered", m.ID)
		}
	}
}

// TestBatchAfterScriptFlush runs a batch that pipelines a publish and a
// settle after Redis lost its script cache (as after a restart): both
// must still be applied.
func TestBatchAfterScriptFlush(t *testing.T) {
	t.Parallel()
	d := openTest(t)
	s := subscribe(t, d, "h", "x.*", time.Minute)
	publish(t, d, msg("x.y"))
	first := receive(t, s, 1, 2*time.Second)[0]
	if err := rawClient(t, d).ScriptFlush(context.Background()).Err(); err != nil {
		t.Fatal(err)
	}
	m := msg("x.y")
	pub := &job{args: appendMessage(make([]any, publishHead), m, time.Hour, "n"), n: 1}
	set := &job{sub: s.(*subscription), n: 1, args: []any{nil, nil, nil,
		"d", first.Token.(*token).id, first.Token.(*token).consumer, first.Token.(*token).count, 1, 0, 0, "boom"}}
	d.execBatch(context.Background(), []*job{pub, set})
	if pub.err != nil || set.err != nil {
		t.Fatalf("batch after SCRIPT FLUSH: publish error %v, settle error %v", pub.err, set.err)
	}
	if got := receive(t, s, 1, 2*time.Second)[0]; got.ID != m.ID {
		t.Fatalf("received %s, want the event published after the flush %s", got.ID, m.ID)
	}
	if st := stats(t, d, "h"); st.Dead != 1 || st.Active != 1 {
		t.Fatalf("stats %+v; want the first event dead-lettered and the second active", st)
	}
}
