package sqlite

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/ripplehq/ripple/transport"
)

// TestGenerateSchema3 wrote testdata/schema3.db with the schema-3 code (run
// with RIPPLE_GEN_SCHEMA3=1 on that code; it is skipped otherwise and is
// kept to document what the file holds), and TestGenerateSchema4 wrote
// testdata/schema4.db the same way with the schema-4 code
// (RIPPLE_GEN_SCHEMA4=1). Handlers and events:
//
//	w  unordered on gen.>, lease 1h:
//	   a-1 completed, a-2 dead ("boom"), a-3 retry-scheduled (in 2100)
//	   ("later"), a-4 leased (until 2100), a-5 and a-6 waiting, a-6 at
//	   priority 5, d-1 delayed (to 2100); o-1…o-3 and j-1 waiting
//	o  ordered on gen.o.*: o-1 (key k) completed, o-2 (key k) leased,
//	   o-3 (key k) waiting behind it, j-1 (key j) waiting
//	p  paused, on gen.>: every event waiting
//
// Claims: (w, a-1) done, (w, a-5) held until 2100. One rate_starts row for w.
func TestGenerateSchema3(t *testing.T) {
	if os.Getenv("RIPPLE_GEN_SCHEMA3") != "1" {
		t.Skip("set RIPPLE_GEN_SCHEMA3=1 on the schema-3 code to regenerate testdata/schema3.db")
	}
	generateOldFile(t, "schema3.db")
}

func TestGenerateSchema4(t *testing.T) {
	if os.Getenv("RIPPLE_GEN_SCHEMA4") != "1" {
		t.Skip("set RIPPLE_GEN_SCHEMA4=1 on the schema-4 code to regenerate testdata/schema4.db")
	}
	generateOldFile(t, "schema4.db")
}

// generateOldFile writes testdata/name with the states listed above.
func generateOldFile(t *testing.T, name string) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), name)
	d := open(t, path, transport.Config{})
	w := subscribe(t, d, transport.SubscriptionSpec{Name: "w", Pattern: "gen.>", Lease: time.Hour})
	o := subscribe(t, d, transport.SubscriptionSpec{Name: "o", Pattern: "gen.o.*", Ordered: true, Lease: time.Hour})
	p := subscribe(t, d, transport.SubscriptionSpec{Name: "p", Pattern: "gen.>"})
	_ = p
	if err := d.Pause(ctx, "p"); err != nil {
		t.Fatal(err)
	}
	mk := func(id, typ, key string, prio int, delay time.Duration) *transport.Message {
		return &transport.Message{ID: id, Type: typ, Key: key, Priority: prio, Delay: delay,
			Time: time.Unix(1_800_000_000, 0), Attrs: map[string]string{"source": "gen"}, Data: []byte(`{"id":"` + id + `"}`)}
	}
	// w's events, one by one so that each can be put in its state.
	publish(t, d, mk("a-1", "gen.a", "", 0, 0))
	ds := receive(t, w, 1, 5*time.Second)
	settleAll(t, w, ds, transport.Complete)
	publish(t, d, mk("a-2", "gen.a", "", 0, 0))
	ds = receive(t, w, 1, 5*time.Second)
	if err := w.Settle(ctx, []transport.Settlement{{Delivery: ds[0], Outcome: transport.Dead, Error: "boom"}}); err != nil {
		t.Fatal(err)
	}
	publish(t, d, mk("a-3", "gen.a", "", 0, 0))
	ds = receive(t, w, 1, 5*time.Second)
	if err := w.Settle(ctx, []transport.Settlement{{Delivery: ds[0], Outcome: transport.Retry, Delay: time.Hour, Error: "later"}}); err != nil {
		t.Fatal(err)
	}
	publish(t, d, mk("a-4", "gen.a", "", 0, 0))
	ds = receive(t, w, 1, 5*time.Second)
	if len(ds) != 1 || ds[0].ID != "a-4" {
		t.Fatalf("leased %v", ids(ds))
	}
	publish(t, d, mk("a-5", "gen.a", "", 0, 0), mk("a-6", "gen.a", "", 5, 0), mk("d-1", "gen.d", "", 0, time.Hour))
	// o's events.
	publish(t, d, mk("o-1", "gen.o.x", "k", 0, 0))
	ds = receive(t, o, 1, 5*time.Second)
	settleAll(t, o, ds, transport.Complete)
	publish(t, d, mk("o-2", "gen.o.x", "k", 0, 0))
	ds = receive(t, o, 1, 5*time.Second)
	if len(ds) != 1 || ds[0].ID != "o-2" {
		t.Fatalf("o leased %v", ids(ds))
	}
	publish(t, d, mk("o-3", "gen.o.x", "k", 0, 0), mk("j-1", "gen.o.y", "j", 0, 0))
	if r, err := d.Claim(ctx, "w", transport.IdentityKey("gen", "a-1"), time.Hour); err != nil || r != transport.Claimed {
		t.Fatal(r, err)
	}
	if err := d.Finish(ctx, "w", transport.IdentityKey("gen", "a-1"), true); err != nil {
		t.Fatal(err)
	}
	if r, err := d.Claim(ctx, "w", transport.IdentityKey("gen", "a-5"), time.Hour); err != nil || r != transport.Claimed {
		t.Fatal(r, err)
	}
	if _, err := d.Reserve(ctx, "w", 100, time.Hour); err != nil {
		t.Fatal(err)
	}
	d.Close()
	db := rawDB(t, path)
	// Push every "1h ahead" time to 2100 so that the file means the same
	// whenever a test opens it.
	const far = int64(4102444800) * 1e9
	for _, q := range []string{
		`UPDATE deliveries SET run_at = ? WHERE delayed = 1`,
		`UPDATE deliveries SET lease_until = ? WHERE state = 1`,
		`UPDATE claims SET expires_at = ? WHERE done = 0`,
	} {
		if _, err := db.Exec(q, far); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := db.Exec(`PRAGMA wal_checkpoint(TRUNCATE)`); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(`VACUUM`); err != nil {
		t.Fatal(err)
	}
	db.Close()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join("testdata", name), b, 0o644); err != nil {
		t.Fatal(err)
	}
}
