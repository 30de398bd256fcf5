package sqlite

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ripplehq/ripple/transport"
)

// damagedDB makes a database of total events for handler "h", then writes
// garbage over a few leaf pages in the middle of the events table's
// b-tree. It returns the path.
func damagedDB(t *testing.T, total int) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "damaged.db")
	d := open(t, path, transport.Config{})
	subscribe(t, d, transport.SubscriptionSpec{Name: "h", Pattern: "c.>"})
	var batch []*transport.Message
	for i := range total {
		m := msg("c.x")
		m.Data = []byte(fmt.Sprintf(`{"i":%d,"pad":%q}`, i, strings.Repeat("p", 400)))
		batch = append(batch, m)
		if len(batch) == 100 {
			publish(t, d, batch...)
			batch = nil
		}
	}
	publish(t, d, batch...)
	d.Close()
	for _, f := range []string{path + "-wal", path + "-shm"} {
		if _, err := os.Stat(f); err == nil {
			t.Fatalf("%s left after a clean close", f)
		}
	}

	raw := rawDB(t, path)
	var pageSize int64
	if err := raw.QueryRow(`PRAGMA page_size`).Scan(&pageSize); err != nil {
		t.Fatal(err)
	}
	rows, err := raw.Query(`SELECT pageno FROM dbstat WHERE name = 'events' AND pagetype = 'leaf' ORDER BY pageno`)
	if err != nil {
		t.Fatal(err)
	}
	var leaves []int64
	for rows.Next() {
		var p int64
		rows.Scan(&p)
		leaves = append(leaves, p)
	}
	rows.Close()
	raw.Close()
	if len(leaves) < 20 {
		t.Fatalf("only %d leaf pages", len(leaves))
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	garbage := bytes.Repeat([]byte{0xde, 0xad, 0xbe, 0xef}, int(pageSize)/4)
	for _, p := range leaves[len(leaves)/2 : len(leaves)/2+3] {
		if _, err := f.WriteAt(garbage, (p-1)*pageSize); err != nil {
			t.Fatal(err)
		}
	}
	f.Close()
	return path
}

type logBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuf) Write(p []byte) (int, error) { l.mu.Lock(); defer l.mu.Unlock(); return l.b.Write(p) }
func (l *logBuf) String() string              { l.mu.Lock(); defer l.mu.Unlock(); return l.b.String() }

// A few damaged pages cost only the events on them: those are
// dead-lettered with SQLite's error, the readable ones are delivered, and
// Stats and the log say the file is damaged.
func TestDamagedPagesDoNotStall(t *testing.T) {
	const total = 1000
	path := damagedDB(t, total)
	logs := &logBuf{}
	d := open(t, path, transport.Config{Logger: slog.New(slog.NewTextHandler(logs, nil))})
	s := subscribe(t, d, transport.SubscriptionSpec{Name: "h", Pattern: "c.>"})
	delivered := 0
	for {
		// Receiving ends when nothing comes for a while; on a loaded
		// machine a batch that dead-letters unreadable rows is slow.
		ctx, cancel := context.WithTimeout(context.Background(), 6*time.Second)
		ds, err := s.Receive(ctx, 64)
		cancel()
		if errors.Is(err, context.DeadlineExceeded) {
			break
		}
		if err != nil {
			t.Fatalf("Receive after %d delivered: %v", delivered, err)
		}
		delivered += len(ds)
		settleAll(t, s, ds, transport.Complete)
	}
	if delivered == total || delivered < total-100 {
		t.Fatalf("delivered %d of %d with 3 damaged pages", delivered, total)
	}
	st, err := d.Stats(context.Background())
	if !errors.Is(err, transport.ErrCorrupt) || !strings.Contains(err.Error(), "ripple check --salvage") {
		t.Fatalf("Stats on a damaged file: %v", err)
	}
	if len(st) != 1 || st[0].Dead != int64(total-delivered) || st[0].Completed != int64(delivered) {
		t.Fatalf("stats %+v: want %d completed and %d dead", st, delivered, total-delivered)
	}
	if l := logs.String(); !strings.Contains(l, "damaged") || !strings.Contains(l, "level=ERROR") {
		t.Fatalf("log does not say the file is damaged:\n%s", l)
	}
	dead, err := d.DeadLetters(context.Background(), "h", 0)
	if err != nil {
		t.Fatalf("DeadLetters: %v", err)
	}
	if len(dead) != total-delivered || !strings.Contains(dead[0].Error, "malformed") {
		t.Fatalf("%d dead letters (first %+v)", len(dead), dead[0])
	}
	// Publishing still works where the b-tree is sound.
	publish(t, d, msg("c.x"))
	if ds := receive(t, s, 1, 10*time.Second); len(ds) != 1 {
		t.Fatal("a new event was not delivered")
	}
}

func TestCheckAndSalvage(t *testing.T) {
	const total = 1000
	path := damagedDB(t, total)
	problems, err := Check(context.Background(), path)
	if err != nil || len(problems) == 0 {
		t.Fatalf("Check of a damaged file: %v %v", problems, err)
	}
	out := filepath.Join(t.TempDir(), "salvaged.db")
	rep, err := Salvage(context.Background(), path, out)
	if err != nil {
		t.Fatal(err)
	}
	// The events wait in the log: the handler has no rows yet.
	if rep.Subscriptions != 1 || rep.Unreadable == 0 || rep.Events+rep.Unreadable != total || rep.Deliveries != 0 {
		t.Fatalf("salvage report %+v", rep)
	}
	if problems, err := Check(context.Background(), out); err != nil || len(problems) != 0 {
		t.Fatalf("Check of the salvaged file: %v %v", problems, err)
	}
	d := open(t, out, transport.Config{})
	s := subscribe(t, d, transport.SubscriptionSpec{Name: "h", Pattern: "c.>"})
	got := 0
	for got < rep.Events {
		ds := receive(t, s, 64, 10*time.Second)
		got += len(ds)
		settleAll(t, s, ds, transport.Complete)
	}
	receiveNone(t, s, 100*time.Millisecond)
	// A sound file checks clean.
	if problems, err := Check(context.Background(), out); err != nil || len(problems) != 0 {
		t.Fatalf("Check of a sound file: %v %v", problems, err)
	}
	if _, err := Salvage(context.Background(), path, out); err == nil {
		t.Fatal("Salvage over an existing file")
	}
}

// A damaged file of the older schema cannot be migrated (the migration
// reads every event), so Salvage reads that schema too.
func TestSalvageSchema1(t *testing.T) {
	out := filepath.Join(t.TempDir(), "salvaged.db")
	rep, err := Salvage(context.Background(), "testdata/schema1.db", out)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Subscriptions != 2 || rep.Events != 4 || rep.Deliveries != 8 || rep.Unreadable != 0 {
		t.Fatalf("salvage of the schema-1 file: %+v", rep)
	}
	d := open(t, out, transport.Config{})
	dup := sourced("a", "/signup", `{}`)
	dup.Type = "user.created"
	publish(t, d, dup)
	if dup.Duplicate == nil {
		t.Fatal("salvaged event lost its source")
	}
}
