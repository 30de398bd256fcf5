package nats

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/ripplehq/ripple/transport"
)

// dupMsg is a message with a caller-chosen id under source "src".
func dupMsg(id, data string) *transport.Message {
	return &transport.Message{ID: id, Type: "dup.gone", Time: time.Now(), Attrs: map[string]string{"source": "src"}, Data: []byte(data)}
}

// idCopies returns the data of the copies kept for m's identity, and how
// many confirmations there are.
func idCopies(t *testing.T, d *Driver, m *transport.Message) (data []string, confirms int) {
	t.Helper()
	err := each(bg, d.ids, d.idSubject(m), func(raw *jetstream.RawStreamMsg) bool {
		if raw.Header.Get(hdrStored) != "" {
			confirms++
		} else {
			data = append(data, string(raw.Data))
		}
		return true
	})
	if err != nil {
		t.Fatal(err)
	}
	return data, confirms
}

// TestDuplicateAfterOriginalGone: once interest retention removed the
// original (here no handler wanted it, so it went at once), a duplicate
// still reports the message as first stored, from its copy; a
// duplicate's own copy is not kept.
func TestDuplicateAfterOriginalGone(t *testing.T) {
	d := openDriver(t, prefixURL(t))
	first := dupMsg("g-1", "first")
	if err := d.Publish(bg, []*transport.Message{first}); err != nil || first.Duplicate != nil {
		t.Fatalf("first publish: %v, duplicate %+v", err, first.Duplicate)
	}
	for i := range 3 {
		again := dupMsg("g-1", "again"+itoa(i))
		if err := d.Publish(bg, []*transport.Message{again}); err != nil {
			t.Fatal(err)
		}
		if again.Duplicate == nil || string(again.Duplicate.Data) != "first" || !again.Duplicate.Time.Equal(first.Time) {
			t.Fatalf("duplicate %d reported %+v, want the first message (data \"first\", time %s)", i, again.Duplicate, first.Time)
		}
	}
	waitCopies(t, d, first, []string{"first"})
}

// waitCopies waits until the copies of m's identity are want: a
// duplicate deletes its own copy once it has answered.
func waitCopies(t *testing.T, d *Driver, m *transport.Message, want []string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		got, _ := idCopies(t, d, m)
		if strings.Join(got, ",") == strings.Join(want, ",") {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("copies of %s: %q, want %q", m.ID, got, want)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestDuplicateIgnoresUnstoredCopy: a copy whose publish never stored its
// event (the process died between the two) is never reported: a later
// publish of the id is stored, and duplicates of it report it.
func TestDuplicateIgnoresUnstoredCopy(t *testing.T) {
	d := openDriver(t, prefixURL(t))
	lost := dupMsg("u-1", "never stored")
	h, err := encode(lost)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.js.PublishMsg(bg, &nats.Msg{Subject: d.idSubject(lost), Header: h, Data: lost.Data}); err != nil {
		t.Fatal(err)
	}
	stored := dupMsg("u-1", "stored")
	if err := d.Publish(bg, []*transport.Message{stored}); err != nil || stored.Duplicate != nil {
		t.Fatalf("publish after an unstored copy: %v, duplicate %+v; want it stored", err, stored.Duplicate)
	}
	// The confirmation is written in the background.
	deadline := time.Now().Add(20 * time.Second)
	for {
		if _, confirms := idCopies(t, d, stored); confirms > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no confirmation of the stored event's copy after 20s")
		}
		time.Sleep(50 * time.Millisecond)
	}
	again := dupMsg("u-1", "again")
	if err := d.Publish(bg, []*transport.Message{again}); err != nil {
		t.Fatal(err)
	}
	if again.Duplicate == nil || string(again.Duplicate.Data) != "stored" {
		t.Fatalf("duplicate reported %+v, want the stored message", again.Duplicate)
	}
}

// TestDuplicateAfterLostOutcome: a publish whose outcome was lost (its
// event stored, no confirmation written) followed by a retry: the retry
// is a duplicate reporting the first attempt's message, and confirms it
// for later duplicates.
func TestDuplicateAfterLostOutcome(t *testing.T) {
	d := openDriver(t, prefixURL(t))
	first := dupMsg("l-1", "first attempt")
	h, err := encode(first)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.js.PublishMsg(bg, &nats.Msg{Subject: d.idSubject(first), Header: h, Data: first.Data}); err != nil {
		t.Fatal(err)
	}
	if _, err := d.js.PublishMsg(bg, &nats.Msg{Subject: d.eventSubject(first.Type), Header: h, Data: first.Data}, jetstream.WithMsgID(msgID(first))); err != nil {
		t.Fatal(err)
	}
	retry := dupMsg("l-1", "retry")
	if err := d.Publish(bg, []*transport.Message{retry}); err != nil {
		t.Fatal(err)
	}
	if retry.Duplicate == nil || string(retry.Duplicate.Data) != "first attempt" {
		t.Fatalf("retry reported %+v, want the first attempt's message", retry.Duplicate)
	}
	waitCopies(t, d, first, []string{"first attempt"})
	later := dupMsg("l-1", "later")
	if err := d.Publish(bg, []*transport.Message{later}); err != nil {
		t.Fatal(err)
	}
	if later.Duplicate == nil || string(later.Duplicate.Data) != "first attempt" {
		t.Fatalf("later duplicate reported %+v, want the first attempt's message", later.Duplicate)
	}
}

// TestGeneratedIDNoCopy: an event whose id the core generated gets no
// copy (only a retry of the same publish can repeat it), and a duplicate
// of it reports the message sent.
func TestGeneratedIDNoCopy(t *testing.T) {
	d := openDriver(t, prefixURL(t))
	m := dupMsg("gen-1", "x")
	m.IDGenerated = true
	if err := d.Publish(bg, []*transport.Message{m}); err != nil || m.Duplicate != nil {
		t.Fatalf("publish: %v, duplicate %+v", err, m.Duplicate)
	}
	if got, _ := idCopies(t, d, m); len(got) != 0 {
		t.Fatalf("an event with a generated id has copies %q, want none", got)
	}
	retry := dupMsg("gen-1", "x")
	retry.IDGenerated = true
	if err := d.Publish(bg, []*transport.Message{retry}); err != nil || retry.Duplicate == nil || string(retry.Duplicate.Data) != "x" {
		t.Fatalf("retry: %v, duplicate %+v; want a duplicate of the message sent", err, retry.Duplicate)
	}
}

// TestEphemeralDurableNamesApart: a durable handler and an ephemeral
// subscription never share a name: each is refused under the other's,
// and neither's consumer is changed or deleted by the refusal.
func TestEphemeralDurableNamesApart(t *testing.T) {
	u := prefixURL(t)
	d := openDriver(t, u)
	other := openDriver(t, u)
	durable := transport.SubscriptionSpec{Name: "kept.h", Pattern: "names.>", Lease: time.Second}
	s, err := d.Subscribe(bg, durable)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	asEphemeral := durable
	asEphemeral.Ephemeral = true
	_, err = other.Subscribe(bg, asEphemeral)
	wantErrContaining(t, "ephemeral under a durable handler's name", err, "handler kept.h is durable", "name of its own")
	tail := transport.SubscriptionSpec{Name: "tail.h", Pattern: "names.>", Lease: time.Second, Ephemeral: true}
	ts, err := d.Subscribe(bg, tail)
	if err != nil {
		t.Fatal(err)
	}
	asDurable := tail
	asDurable.Ephemeral = false
	_, err = other.Subscribe(bg, asDurable)
	wantErrContaining(t, "durable under an ephemeral subscription's name", err, "handler tail.h is ephemeral", "name of its own")
	// The ephemeral one is still ephemeral, and goes with its receiver;
	// the durable one stays.
	ctx, cancel := context.WithTimeout(bg, 10*time.Second)
	defer cancel()
	info, err := d.js.Consumer(ctx, d.eventsStream(), consumerName("tail.h"))
	if err != nil || !isEphemeral(&info.CachedInfo().Config) {
		t.Fatalf("the ephemeral subscription's consumer after the refused durable: %v", err)
	}
	if err := ts.Close(); err != nil {
		t.Fatal(err)
	}
	info, err = d.js.Consumer(ctx, d.eventsStream(), consumerName("kept.h"))
	if err != nil || isEphemeral(&info.CachedInfo().Config) {
		t.Fatalf("the durable handler's consumer after the refused ephemeral: %v", err)
	}
}

// BenchmarkPublishIdentity measures one awaiting publisher with generated
// ids (no copy) and with publisher-chosen ids (a copy first).
func BenchmarkPublishIdentity(b *testing.B) {
	u := serverURL(b)
	for _, chosen := range []bool{false, true} {
		name := "generated"
		if chosen {
			name = "withid"
		}
		b.Run(name, func(b *testing.B) {
			p := "b" + randHex(6)
			b.Cleanup(func() { deletePrefix(u, p) })
			drv, err := Open(bg, u+"/"+p, transport.Config{})
			if err != nil {
				b.Fatal(err)
			}
			defer drv.Close()
			d := drv.(*Driver)
			if _, err := d.Subscribe(bg, transport.SubscriptionSpec{Name: "bench", Pattern: "bench.x", Lease: time.Minute}); err != nil {
				b.Fatal(err)
			}
			b.ResetTimer()
			for i := range b.N {
				m := &transport.Message{ID: name + itoa(i), Type: "bench.x", Time: time.Now(), Attrs: map[string]string{"source": "bench"}, Data: []byte(`{"n":1}`), IDGenerated: !chosen}
				if err := d.Publish(bg, []*transport.Message{m}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// TestCopyRefusedSendsNothing: when the ids stream refuses a copy, the
// publish fails saying the event was not sent, sends none of the batch's
// events, and deletes the batch's copies that were written.
func TestCopyRefusedSendsNothing(t *testing.T) {
	d := openDriver(t, prefixURL(t))
	s, err := d.Subscribe(bg, transport.SubscriptionSpec{Name: "copies", Pattern: "dup.gone", Lease: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	cfg := d.ids.CachedInfo().Config
	cfg.MaxMsgSize = 512
	if _, err := d.js.UpdateStream(bg, cfg); err != nil {
		t.Fatal(err)
	}
	small, big := dupMsg("c-1", "small"), dupMsg("c-2", strings.Repeat("x", 2048))
	err = d.Publish(bg, []*transport.Message{small, big})
	wantErrContaining(t, "publish whose copy is refused", err, "c-2", d.idsStream(), "not sent")
	waitCopies(t, d, small, nil)
	if st, err := d.Stats(bg); err != nil || len(st) != 1 || st[0].Waiting != 0 {
		t.Fatalf("stats after a refused copy: %+v, %v; want nothing waiting", st, err)
	}
}
