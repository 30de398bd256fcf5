package sqlite

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/ripplehq/ripple/transport"
)

// testdata/schema3.db was written by the schema-3 code (see
// TestGenerateSchema3 for what it holds). Opening it migrates it to the
// log of schema 4 in place: every row keeps its state, the heads start at
// the newest event, and what each handler is delivered and lists is what
// the schema-3 code would have given.
func TestMigrateSchema3(t *testing.T) {
	testMigrateOldFile(t, "schema3.db", "[11 11 11]")
}

// testdata/schema4.db was written by the schema-4 code from the same
// steps (see TestGenerateSchema4). Opening it adds the lease windows of
// schema 5: the rows the schema-4 code wrote keep their states, and each
// handler is delivered and lists what it was before.
func TestMigrateSchema4(t *testing.T) {
	testMigrateOldFile(t, "schema4.db", "")
}

// testMigrateOldFile opens a copy of testdata/file and checks every
// handler's state; wantHeads, when not empty, is the heads the migration
// must set.
func testMigrateOldFile(t *testing.T, file, wantHeads string) {
	src, err := os.ReadFile(filepath.Join("testdata", file))
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "old.db")
	if err := os.WriteFile(path, src, 0o644); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	d := open(t, path, transport.Config{})
	var v int64
	if err := d.rdb.QueryRow(`SELECT value FROM ripple_meta WHERE key = 'schema_version'`).Scan(&v); err != nil || v != schemaVersion {
		t.Fatalf("schema version after migration = %d (%v), want %d", v, err, schemaVersion)
	}
	var heads []int64
	rows, err := d.rdb.Query(`SELECT head FROM subscriptions ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var h int64
		rows.Scan(&h)
		heads = append(heads, h)
	}
	rows.Close()
	if wantHeads != "" && fmt.Sprint(heads) != wantHeads {
		t.Fatalf("heads after migration %v, want %s", heads, wantHeads)
	}
	want := map[string]transport.Stats{
		// a-5, a-6, o-1, o-2, o-3, j-1 waiting; a-3 (retry) and d-1
		// delayed; a-4 leased; a-1 completed; a-2 dead.
		"w": {Waiting: 6, Delayed: 2, Active: 1, Completed: 1, Dead: 1, Failed: 2},
		"o": {Waiting: 2, Active: 1, Completed: 1},
		"p": {Waiting: 10, Delayed: 1, Paused: true},
	}
	for name, w := range want {
		got := statsOf(t, d, name)
		if got.Waiting != w.Waiting || got.Delayed != w.Delayed || got.Active != w.Active || got.Completed != w.Completed ||
			got.Dead != w.Dead || got.Failed != w.Failed || got.Paused != w.Paused {
			t.Errorf("%s after migration: %+v, want %+v", name, got, w)
		}
	}
	dead, err := d.DeadLetters(ctx, "w", 0)
	if err != nil || len(dead) != 1 || dead[0].ID != "a-2" || dead[0].Error != "boom" {
		t.Fatalf("dead letters of w: %+v %v, want a-2 with boom", dead, err)
	}
	if r, err := d.Claim(ctx, "w", transport.IdentityKey("gen", "a-1"), time.Minute); err != nil || r != transport.Done {
		t.Fatalf("claim of a-1: %v %v, want done", r, err)
	}
	if r, err := d.Claim(ctx, "w", transport.IdentityKey("gen", "a-5"), time.Minute); err != nil || r != transport.Busy {
		t.Fatalf("claim of a-5: %v %v, want busy", r, err)
	}
	// A new event goes through the log to every handler.
	n1 := &transport.Message{ID: "n-1", Type: "gen.o.z", Key: "k", Time: time.Now(), Attrs: map[string]string{"source": "gen"}}
	publish(t, d, n1)

	w := subscribe(t, d, transport.SubscriptionSpec{Name: "w", Pattern: "gen.>", Lease: time.Hour})
	ds := receive(t, w, 20, 5*time.Second)
	if got := ids(ds); got[0] != "a-6" || !sameSet(got, []string{"a-6", "a-5", "o-1", "o-2", "o-3", "j-1", "n-1"}) {
		t.Fatalf("w after migration: %v, want a-6 (priority 5) first, then a-5 o-1 o-2 o-3 j-1 n-1", got)
	}
	settleAll(t, w, ds, transport.Complete)
	receiveNone(t, w, 100*time.Millisecond)

	o := subscribe(t, d, transport.SubscriptionSpec{Name: "o", Pattern: "gen.o.*", Ordered: true, Lease: time.Hour})
	ds = receive(t, o, 20, 5*time.Second)
	if fmt.Sprint(ids(ds)) != "[j-1]" {
		t.Fatalf("o after migration: %v, want only j-1 (o-2 of key k is leased, o-3 and n-1 wait behind it)", ids(ds))
	}
	settleAll(t, o, ds, transport.Complete)
	receiveNone(t, o, 100*time.Millisecond)

	p := subscribe(t, d, transport.SubscriptionSpec{Name: "p", Pattern: "gen.>"})
	receiveNone(t, p, 100*time.Millisecond)
	if err := d.Resume(ctx, "p"); err != nil {
		t.Fatal(err)
	}
	ds = receive(t, p, 20, 5*time.Second)
	if len(ds) != 11 {
		t.Fatalf("p after resume: %v, want the 10 waiting events and n-1", ids(ds))
	}
	d.Close()
	// A second open finds the current version and changes nothing.
	d = open(t, path, transport.Config{})
	if err := d.rdb.QueryRow(`SELECT value FROM ripple_meta WHERE key = 'schema_version'`).Scan(&v); err != nil || v != schemaVersion {
		t.Fatalf("schema version on reopen = %d (%v)", v, err)
	}
}

func sameSet(a, b []string) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(a, b)
}
