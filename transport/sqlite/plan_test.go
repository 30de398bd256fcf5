package sqlite

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/ripplehq/ripple/transport"
)

// TestQueryPlans checks that the hot statements are index range scans, not
// table scans, so that their cost does not grow with a subscription's
// history (the retained completed and dead rows of a 1M-row table).
func TestQueryPlans(t *testing.T) {
	d, _ := newDB(t)
	subscribe(t, d, transport.SubscriptionSpec{Name: "h", Pattern: "a.>", Ordered: true})
	d.rdb.Exec(`ANALYZE`)
	plans := map[string]string{
		"lease ready":   leaseReadySQL,
		"lease ordered": leaseOrderedSQL,
		"lease expired": leaseExpiredSQL,
		"lease low":     leaseLowSQL,
		"rows state":    rowsStateSQL,
		"log scan":      logScanSQL,
		"log get":       logGetSQL,
		"complete":      completeSQL(1),
		"prune events":  pruneEventsSQL,
		"prune bound":   pruneBoundSQL,
		"win complete":  winCompleteSQL,
		"win settle":    winSettleOneSQL,
		"win expired":   winExpiredSQL,
		"win extend":    winExtendSQL,
		"prune done":    pruneSQL[2].age,
		"prune dead":    pruneSQL[3].cut,
		"cutoff":        pruneSQL[2].cutoff,
	}
	for name, q := range plans {
		n := maxParam(q)
		if n == 0 {
			n = strings.Count(q, "?")
		}
		args := make([]any, n)
		for i := range args {
			args[i] = i + 1
		}
		rows, err := d.rdb.QueryContext(context.Background(), "EXPLAIN QUERY PLAN "+q, args...)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		var plan []string
		for rows.Next() {
			var id, parent, unused int
			var detail string
			rows.Scan(&id, &parent, &unused, &detail)
			plan = append(plan, detail)
		}
		rows.Close()
		all := strings.Join(plan, "; ")
		t.Logf("%s: %s", name, all)
		if name == "lease ordered" {
			// The scan walks only rows not held behind their key's head;
			// each key check is one probe.
			for _, idx := range []string{"USING INDEX deliveries_ready", "deliveries_key (sub_id=? AND key=? AND event_seq<?)", "deliveries_key_leased (sub_id=? AND key=?)"} {
				if !strings.Contains(all, idx) {
					t.Errorf("%s: plan lacks %q: %s", name, idx, all)
				}
			}
		}
		for _, p := range plan {
			if strings.HasPrefix(p, "SCAN ") && !strings.Contains(p, "INDEX") && p != "SCAN CONSTANT ROW" {
				t.Errorf("%s: full scan: %s", name, all)
			}
			if strings.Contains(p, "USE TEMP B-TREE") {
				t.Errorf("%s: sorts: %s", name, all)
			}
		}
	}
}

// maxParam returns the highest ?N in q, or 0 when it numbers none.
func maxParam(q string) int {
	n := 0
	for i := 0; i+1 < len(q); i++ {
		if q[i] == '?' && q[i+1] >= '1' && q[i+1] <= '9' {
			n = max(n, int(q[i+1]-'0'))
		}
	}
	return n
}

// TestSoftCommitsOnly checks that only lease bookkeeping commits without
// fsync at synchronous=full: every other batch runs at FULL.
func TestSoftCommitsOnly(t *testing.T) {
	d, _ := newDB(t)
	level := func(f execFlags) int {
		var v int
		err := d.exec(context.Background(), func(w *writer) error {
			return w.conn.QueryRowContext(context.Background(), "PRAGMA synchronous").Scan(&v)
		}, f)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	for i, c := range []struct {
		f    execFlags
		want int
	}{{0, 2}, {soft, 1}, {soft, 1}, {0, 2}, {returnOnCancel, 2}, {soft, 1}, {0, 2}} {
		if got := level(c.f); got != c.want {
			t.Fatalf("step %d: synchronous=%d, want %d", i, got, c.want)
		}
	}
	s := subscribe(t, d, transport.SubscriptionSpec{Name: "h", Pattern: "a.b"})
	publish(t, d, msg("a.b"))
	receive(t, s, 1, time.Second)
	publish(t, d, msg("a.b"))
	if got := level(0); got != 2 {
		t.Fatalf("after receive and publish: synchronous=%d", got)
	}
}
