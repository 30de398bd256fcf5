package kafka

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/ripplehq/ripple/transport"
)

// TestHandoffSkipsFinishedRecords forces the interleaving behind a lost
// attempt count: a process fails an event (its retry copy carries the
// attempt) and completes another, both after an earlier event that is
// still unfinished when the process hands its partition over gracefully.
// The committed offset cannot pass the unfinished event, so the next
// owner reads the finished records again; the commit metadata lists the
// unfinished ones, so the next owner skips the rest. Without it, the
// failed event's original would come back with its first attempt count
// (lower than its retry copy's) and the completed one would run twice.
func TestHandoffSkipsFinishedRecords(t *testing.T) {
	url := newURL(t, "partitions=1")
	spec := transport.SubscriptionSpec{Name: "handoff.worker", Pattern: "handoff.>", Lease: 30 * time.Second}
	open := func() *Driver {
		dr, err := Open(bg, url, transport.Config{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { dr.Close() })
		return dr.(*Driver)
	}
	msg := func(id string) *transport.Message {
		return &transport.Message{ID: id, Type: "handoff.event.sent", Time: time.Now(), Attrs: map[string]string{"source": "t"}, Data: []byte(`{}`)}
	}
	first := open()
	sub, err := first.Subscribe(bg, spec)
	if err != nil {
		t.Fatal(err)
	}
	if err := first.Publish(bg, []*transport.Message{msg("held"), msg("failed"), msg("done")}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(bg, 60*time.Second)
	defer cancel()
	got := map[string]*transport.Delivery{}
	for len(got) < 3 {
		ds, err := sub.Receive(ctx, 3)
		if err != nil {
			t.Fatalf("receiving the three events: %v (have %d)", err, len(got))
		}
		for _, d := range ds {
			got[d.ID] = d
		}
	}
	// "failed" fails (copied to the retry topic with attempt 1),
	// "done" completes, and "held" is handed back unfinished, as a
	// graceful shutdown does with an event it did not start.
	if err := sub.Settle(bg, []transport.Settlement{
		{Delivery: got["failed"], Outcome: transport.Retry, Error: "deliberate"},
		{Delivery: got["done"], Outcome: transport.Complete},
		{Delivery: got["held"], Outcome: transport.Release},
	}); err != nil {
		t.Fatal(err)
	}
	if err := sub.Close(); err != nil {
		t.Fatal(err)
	}

	// The next owner: it must get "held" as its first attempt and
	// "failed" as its second, once each, and not "done".
	next := open()
	sub2, err := next.Subscribe(bg, spec)
	if err != nil {
		t.Fatal(err)
	}
	defer sub2.Close()
	// "after" follows the others in the event topic's one partition: once
	// it is delivered, anything of the event topic read again before it
	// has been delivered too.
	if err := next.Publish(bg, []*transport.Message{msg("after")}); err != nil {
		t.Fatal(err)
	}
	var seen []string
	attempts := map[string][]int{}
	for attempts["after"] == nil || attempts["failed"] == nil || attempts["held"] == nil {
		ds, err := sub2.Receive(ctx, 10)
		if err != nil {
			t.Fatalf("the next owner received %v, then: %v", seen, err)
		}
		var ss []transport.Settlement
		for _, d := range ds {
			seen = append(seen, fmt.Sprintf("%s#%d", d.ID, d.Attempt))
			attempts[d.ID] = append(attempts[d.ID], d.Attempt)
			ss = append(ss, transport.Settlement{Delivery: d, Outcome: transport.Complete})
		}
		if err := sub2.Settle(bg, ss); err != nil {
			t.Fatal(err)
		}
	}
	if a := attempts["held"]; len(a) != 1 || a[0] != 1 {
		t.Errorf("the unfinished event came back as attempts %v, want [1] (deliveries %v)", a, seen)
	}
	if a := attempts["failed"]; len(a) != 1 || a[0] != 2 {
		t.Errorf("the failed event came back as attempts %v, want [2] from its retry copy alone (deliveries %v)", a, seen)
	}
	if a := attempts["done"]; len(a) != 0 {
		t.Errorf("the completed event was delivered again as attempts %v (deliveries %v)", a, seen)
	}
}

// TestAttemptNotDurableNotHanded: Receive hands out an event only once
// the attempt it starts is committed, so that a crash counts it. While
// the broker refuses the group's commits (as during a rebalance), the
// event stays in memory unstarted; once commits go through it is handed
// out as its first attempt.
func TestAttemptNotDurableNotHanded(t *testing.T) {
	if cluster == nil {
		t.Skip("needs the in-process kfake cluster to refuse commits (RIPPLE_TEST_KAFKA_URL is set)")
	}
	dr, err := Open(bg, newURL(t, "partitions=1"), transport.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer dr.Close()
	d := dr.(*Driver)
	spec := transport.SubscriptionSpec{Name: "durable.attempt", Pattern: "durable.>", Lease: 30 * time.Second}
	sub, err := d.Subscribe(bg, spec)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	group := d.groupName(spec.Name)
	var refuse, done atomic.Bool
	var refused atomic.Int64
	refuse.Store(true)
	cluster.ControlKey(int16(kmsg.OffsetCommit), func(kr kmsg.Request) (kmsg.Response, error, bool) {
		if done.Load() {
			cluster.DropControl()
			return nil, nil, false
		}
		cluster.KeepControl()
		req := kr.(*kmsg.OffsetCommitRequest)
		if !refuse.Load() || req.Group != group {
			return nil, nil, false
		}
		refused.Add(1)
		resp := req.ResponseKind().(*kmsg.OffsetCommitResponse)
		for _, rt := range req.Topics {
			st := kmsg.NewOffsetCommitResponseTopic()
			st.Topic = rt.Topic
			for _, rp := range rt.Partitions {
				sp := kmsg.NewOffsetCommitResponseTopicPartition()
				sp.Partition = rp.Partition
				sp.ErrorCode = kerr.RebalanceInProgress.Code
				st.Partitions = append(st.Partitions, sp)
			}
			resp.Topics = append(resp.Topics, st)
		}
		return resp, nil, true
	})
	defer func() {
		refuse.Store(false)
		done.Store(true) // the control goes with the next commit it sees
	}()
	if err := d.Publish(bg, []*transport.Message{{ID: "e1", Type: "durable.event.sent", Time: time.Now(), Attrs: map[string]string{"source": "t"}, Data: []byte(`{}`)}}); err != nil {
		t.Fatal(err)
	}
	// Until the event is in memory and a commit was refused, Receive
	// has had nothing to refuse; then it must hand nothing out.
	waitFor(t, "a refused commit of the taken event", 60*time.Second, func() bool {
		ctx, cancel := context.WithTimeout(bg, 200*time.Millisecond)
		defer cancel()
		ds, _ := sub.Receive(ctx, 1)
		if len(ds) > 0 {
			t.Fatalf("Receive handed out %s (attempt %d) whose attempt the broker refused to commit", ds[0].ID, ds[0].Attempt)
		}
		return refused.Load() > 0
	})
	ctx, cancel := context.WithTimeout(bg, time.Second)
	ds, err := sub.Receive(ctx, 1)
	cancel()
	if len(ds) > 0 || err == nil {
		t.Fatalf("Receive while commits are refused: %d deliveries, %v; want none and the context's error", len(ds), err)
	}
	refuse.Store(false)
	ctx, cancel = context.WithTimeout(bg, 60*time.Second)
	defer cancel()
	ds, err = sub.Receive(ctx, 1)
	if err != nil || len(ds) != 1 || ds[0].ID != "e1" || ds[0].Attempt != 1 {
		t.Fatalf("Receive once commits go through: %v, %v; want e1 as attempt 1", ds, err)
	}
	// Settled, so that closing does not wait for its lease.
	if err := sub.Settle(bg, []transport.Settlement{{Delivery: ds[0], Outcome: transport.Complete}}); err != nil {
		t.Fatal(err)
	}
}
