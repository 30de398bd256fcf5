package postgres

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/ripplehq/ripple/transport"
)

// receiveN receives and completes n deliveries within d.
func receiveN(t *testing.T, sub transport.Subscription, n int, d time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(bg, d)
	defer cancel()
	for got := 0; got < n; {
		ds, err := sub.Receive(ctx, 10)
		if err != nil {
			t.Fatalf("received %d of %d: %v", got, n, err)
		}
		ss := make([]transport.Settlement, len(ds))
		for i, dl := range ds {
			ss[i] = transport.Settlement{Delivery: dl, Outcome: transport.Complete}
		}
		if err := sub.Settle(bg, ss); err != nil {
			t.Fatal(err)
		}
		got += len(ds)
	}
}

func notifyMsg(prefix string, i int) []*transport.Message {
	return []*transport.Message{{ID: prefix + strconv.Itoa(i), Type: "note.sent", Time: time.Now(), Data: []byte("{}")}}
}

// A process alone on its schema wakes its receivers directly and sends no
// NOTIFY; once another process listens, publishes notify it and its
// receivers get the events.
func TestNotifyOnlyOtherProcesses(t *testing.T) {
	url := schemaURL(t)
	a := openDriver(t, url)
	subA, err := a.Subscribe(bg, transport.SubscriptionSpec{Name: "a", Pattern: "note.>"})
	if err != nil {
		t.Fatal(err)
	}
	defer subA.Close()
	for i := range 20 {
		if err := a.Publish(bg, notifyMsg("alone-", i)); err != nil {
			t.Fatal(err)
		}
	}
	receiveN(t, subA, 20, 30*time.Second)
	if n := a.notifier.sent.Load(); n != 0 {
		t.Fatalf("a driver alone on its schema sent %d NOTIFYs; want none", n)
	}

	b := openDriver(t, url)
	subB, err := b.Subscribe(bg, transport.SubscriptionSpec{Name: "b", Pattern: "note.>"})
	if err != nil {
		t.Fatal(err)
	}
	defer subB.Close()
	deadline := time.Now().Add(30 * time.Second)
	for b.listenerPID.Load() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the second driver's listening connection did not come up")
		}
		time.Sleep(10 * time.Millisecond)
	}
	published := 0
	for a.notifier.sent.Load() == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("after %d publishes the first driver has not noticed the second one listening", published)
		}
		if err := a.Publish(bg, notifyMsg("both-", published)); err != nil {
			t.Fatal(err)
		}
		published++
		time.Sleep(20 * time.Millisecond)
	}
	receiveN(t, subB, published, 30*time.Second)
	receiveN(t, subA, published, 30*time.Second)
}

// A driver's own listening connection never counts as another process,
// even while its PID is not known yet (the LISTEN runs before the
// connection reports it), so a lone driver sends no NOTIFY right after
// it opens.
func TestOwnListenerNotOther(t *testing.T) {
	d := openDriver(t, schemaURL(t))
	deadline := time.Now().Add(30 * time.Second)
	for d.listenerPID.Load() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the listening connection did not come up")
		}
		time.Sleep(10 * time.Millisecond)
	}
	d.listenerPID.Store(0) // as between its LISTEN and the PID's store
	if others, err := d.notifier.othersListen(bg); err != nil || others {
		t.Fatalf("othersListen = %v, %v; want false: the only listener is the driver's own", others, err)
	}
}

// The pruner vacuums the deliveries table once leases and settlements
// have left enough dead rows, instead of leaving their index entries to
// autovacuum's once-a-minute look.
func TestPrunerVacuumsQueue(t *testing.T) {
	d := openDriver(t, schemaURL(t))
	sub, err := d.Subscribe(bg, transport.SubscriptionSpec{Name: "v", Pattern: "note.>"})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	const n = vacuumDead
	for i := 0; i < n; i += 100 {
		msgs := make([]*transport.Message, 0, 100)
		for j := range 100 {
			msgs = append(msgs, notifyMsg("v-", i+j)[0])
		}
		if err := d.Publish(bg, msgs); err != nil {
			t.Fatal(err)
		}
	}
	receiveN(t, sub, n, 60*time.Second)
	deadline := time.Now().Add(90 * time.Second)
	for {
		var vacuumed bool
		if err := d.pool.QueryRow(bg, `SELECT last_vacuum IS NOT NULL FROM pg_stat_user_tables WHERE relid = $1::regclass`,
			d.qschema+".deliveries").Scan(&vacuumed); err != nil {
			t.Fatal(err)
		}
		if vacuumed {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the deliveries table was not vacuumed after %d events were leased and completed", n)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
