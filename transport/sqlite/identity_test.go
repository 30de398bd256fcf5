package sqlite

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ripplehq/ripple/transport"
)

func sourced(id, source, data string) *transport.Message {
	return &transport.Message{ID: id, Type: "t.x", Time: time.Unix(1700000000, 0),
		Attrs: map[string]string{"source": source}, Data: []byte(data)}
}

// The same id under twenty sources is twenty events (Watermill's suite
// publishes the same ids to many topics); the same (source, id) is one.
func TestIdentityIsSourceAndID(t *testing.T) {
	d, _ := newDB(t)
	s := subscribe(t, d, transport.SubscriptionSpec{Name: "h", Pattern: "t.x"})
	var batch []*transport.Message
	for i := range 20 {
		batch = append(batch, sourced("same", fmt.Sprintf("/topic/%d", i), `{}`))
	}
	publish(t, d, batch...)                        // multi-row path
	publish(t, d, sourced("same", "/other", `{}`)) // single-row path
	for _, m := range batch {
		if m.Duplicate != nil {
			t.Fatalf("%s marked duplicate", m.Source())
		}
	}
	got := 0
	for got < 21 {
		ds := receive(t, s, 64, 10*time.Second)
		got += len(ds)
		settleAll(t, s, ds, transport.Complete)
	}
	receiveNone(t, s, 100*time.Millisecond)
	again := sourced("same", "/topic/3", `{"v":2}`)
	publish(t, d, again)
	if again.Duplicate == nil {
		t.Fatal("republishing a stored (source, id) was not reported as a duplicate")
	}
	receiveNone(t, s, 100*time.Millisecond)
}

func settleAll(t testing.TB, s transport.Subscription, ds []*transport.Delivery, o transport.Outcome) {
	t.Helper()
	var ss []transport.Settlement
	for _, d := range ds {
		ss = append(ss, transport.Settlement{Delivery: d, Outcome: o})
	}
	if err := s.Settle(context.Background(), ss); err != nil {
		t.Fatal(err)
	}
}

// A duplicate publish stores nothing and reports the event as first
// stored, on the single-message path and inside a batch.
func TestDuplicateReportsStoredEvent(t *testing.T) {
	d, _ := newDB(t)
	first := sourced("dup-7", "/src", `{"v":1}`)
	first.Key, first.Priority = "k1", 3
	first.Attrs["subject"] = "s1"
	publish(t, d, first)
	if first.Duplicate != nil {
		t.Fatal("first publish marked duplicate")
	}
	check := func(m *transport.Message) {
		t.Helper()
		dup := m.Duplicate
		if dup == nil {
			t.Fatal("duplicate not reported")
		}
		if string(dup.Data) != `{"v":1}` || dup.ID != "dup-7" || dup.Type != "t.x" || dup.Key != "k1" || dup.Priority != 3 ||
			!dup.Time.Equal(first.Time) || dup.Attrs["subject"] != "s1" || dup.Attrs["source"] != "/src" {
			t.Fatalf("duplicate = %+v, want the first event", dup)
		}
	}
	second := sourced("dup-7", "/src", `{"v":2}`)
	publish(t, d, second)
	check(second)

	// In a batch, with a repeat inside the batch itself.
	a, b := sourced("dup-7", "/src", `{"v":3}`), sourced("new", "/src", `{"n":1}`)
	c := sourced("new", "/src", `{"n":2}`)
	publish(t, d, a, b, c)
	check(a)
	if b.Duplicate != nil {
		t.Fatal("new event marked duplicate")
	}
	if c.Duplicate == nil || string(c.Duplicate.Data) != `{"n":1}` {
		t.Fatalf("repeat within a batch: %+v", c.Duplicate)
	}
	var n int
	if err := d.rdb.QueryRow(`SELECT count(*) FROM events`).Scan(&n); err != nil || n != 2 {
		t.Fatalf("events stored: %d (%v), want 2", n, err)
	}
}

// testdata/schema1.db was written by the schema-1 code (events keyed by id
// alone): two subscriptions, four events of source /signup, one completed
// and one dead delivery of h1, an idempotency claim. Opening it migrates it
// in place and keeps everything.
func TestMigrateSchema1(t *testing.T) {
	src, err := os.ReadFile("testdata/schema1.db")
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "old.db")
	if err := os.WriteFile(path, src, 0o644); err != nil {
		t.Fatal(err)
	}
	d := open(t, path, transport.Config{})
	var v int64
	if err := d.rdb.QueryRow(`SELECT value FROM ripple_meta WHERE key = 'schema_version'`).Scan(&v); err != nil || v != schemaVersion {
		t.Fatalf("schema version after migration = %d (%v), want %d", v, err, schemaVersion)
	}
	var sources string
	if err := d.rdb.QueryRow(`SELECT group_concat(DISTINCT source) FROM events`).Scan(&sources); err != nil || sources != "/signup" {
		t.Fatalf("migrated sources = %q (%v)", sources, err)
	}
	st, err := d.Stats(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]transport.Stats{}
	for _, s := range st {
		byName[s.Handler] = s
	}
	if h := byName["h1"]; h.Waiting != 2 || h.Completed != 1 || h.Dead != 1 {
		t.Fatalf("h1 after migration: %+v", h)
	}
	if h := byName["h2"]; h.Waiting != 4 || h.Paused {
		t.Fatalf("h2 after migration: %+v", h)
	}
	// The old events still deduplicate under their identity…
	dup := sourced("a", "/signup", `{}`)
	dup.Type = "user.created"
	publish(t, d, dup)
	if dup.Duplicate == nil || string(dup.Duplicate.Data) != `{"i":0}` {
		t.Fatalf("migrated event not deduplicated: %+v", dup.Duplicate)
	}
	// …and the same id under another source is a new event.
	other := sourced("a", "/elsewhere", `{}`)
	other.Type, other.Key = "user.created", "k"
	publish(t, d, other)
	if other.Duplicate != nil {
		t.Fatal("same id under another source was deduplicated")
	}
	// The ordered handler still gets its key in order, old events first.
	s := subscribe(t, d, transport.SubscriptionSpec{Name: "h2", Pattern: "user.created", Ordered: true, Lease: time.Minute})
	for _, want := range []string{"a", "b", "c", "d", "a"} {
		ds := receive(t, s, 10, 10*time.Second)
		if len(ds) != 1 || ds[0].ID != want {
			t.Fatalf("ordered delivery: got %d deliveries (first %q), want %q", len(ds), ds[0].ID, want)
		}
		settleAll(t, s, ds, transport.Complete)
	}
	var claims int
	if err := d.rdb.QueryRow(`SELECT count(*) FROM claims WHERE handler = 'h1' AND event_id = 'a'`).Scan(&claims); err != nil || claims != 1 {
		t.Fatalf("claim kept by migration: %d %v", claims, err)
	}
	d.Close()
	// A second open finds version 2 and changes nothing.
	d = open(t, path, transport.Config{})
	d.Close()
}

func TestRefuseNewerSchema(t *testing.T) {
	path := filepath.Join(t.TempDir(), "newer.db")
	d := open(t, path, transport.Config{})
	d.Close()
	raw := rawDB(t, path)
	if _, err := raw.Exec(`UPDATE ripple_meta SET value = ? WHERE key = 'schema_version'`, schemaVersion+1); err != nil {
		t.Fatal(err)
	}
	raw.Close()
	_, err := Open(context.Background(), "sqlite://"+path, transport.Config{})
	want := fmt.Sprintf("schema version %d; this build understands up to %d", schemaVersion+1, schemaVersion)
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("newer schema: %v, want it to name both versions (%s)", err, want)
	}
}
