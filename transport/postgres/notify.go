package postgres

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// notifier tells other processes which subscriptions a publish or a
// settlement of this process made deliverable, with one NOTIFY sent after
// the commit instead of one inside each transaction. A NOTIFY in a
// transaction holds a database-wide lock from its commit until the
// commit's WAL flush is done, which serializes every notifying commit of
// the database and defeats the server's group commit; sent on its own it
// holds that lock for a moment and writes no WAL. Subscriptions named while
// a NOTIFY is in flight are gathered into the next one, so a busy process
// sends at most one at a time.
//
// This process's receivers are woken directly by the publisher; the
// notification carries this driver's token, and the driver's own listener
// ignores notifications bearing it. When no other session listens on the
// schema's channel (looked up at most once a listenersTTL in
// pg_stat_activity, where a listener's last statement is its LISTEN), no
// NOTIFY is sent at all; the first look that finds a new listener wakes
// every subscription once, so that nothing committed before it was found
// waits for that listener's safety poll. A process that crashes between a
// commit and its NOTIFY leaves other processes' receivers to find the
// events at their safety poll.
type notifier struct {
	d     *driver
	token string // "@" and a random hex id, appended to payloads

	mu      sync.Mutex
	pending map[int64]struct{}
	kick    chan struct{}

	// Owned by loop.
	others  bool      // another session listened at the last look
	checked time.Time // when that look was

	sent atomic.Int64 // NOTIFYs sent, for tests
}

// listenersTTL is how long a look at the channel's listeners is trusted.
const listenersTTL = time.Second

func newNotifier(d *driver) *notifier {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return &notifier{d: d, token: "@" + hex.EncodeToString(b), pending: map[int64]struct{}{}, kick: make(chan struct{}, 1)}
}

// add queues a notification for the subscriptions ids.
func (n *notifier) add(ids []int64) {
	n.mu.Lock()
	for _, id := range ids {
		n.pending[id] = struct{}{}
	}
	n.mu.Unlock()
	select {
	case n.kick <- struct{}{}:
	default:
	}
}

// take returns the queued subscriptions and empties the queue.
func (n *notifier) take() []int64 {
	n.mu.Lock()
	defer n.mu.Unlock()
	if len(n.pending) == 0 {
		return nil
	}
	ids := make([]int64, 0, len(n.pending))
	for id := range n.pending {
		ids = append(ids, id)
	}
	clear(n.pending)
	return ids
}

// payload is the notification for ids, marked as this driver's. Payloads
// are comma-separated subscription ids, or "*" for all; an element that is
// not a number (the "@" token) is skipped by every version's listener.
func (n *notifier) payload(ids []int64) string {
	p := payload(ids)
	if p == "*" {
		return p
	}
	return p + "," + n.token
}

// own reports whether a notification payload came from this driver.
func (n *notifier) own(p string) bool {
	return strings.HasSuffix(p, ","+n.token)
}

// loop sends the queued notifications until the driver closes, then sends
// what is left.
func (n *notifier) loop() {
	for {
		select {
		case <-n.kick:
			n.send()
		case <-n.d.closing:
			n.send()
			return
		}
	}
}

func (n *notifier) send() {
	ids := n.take()
	if len(ids) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	p := n.payload(ids)
	if time.Since(n.checked) >= listenersTTL {
		others, err := n.othersListen(ctx)
		if err != nil {
			others = true // when in doubt, notify
		} else {
			n.checked = time.Now()
		}
		if others && !n.others {
			p = "*"
		}
		n.others = others
	}
	if !n.others {
		return
	}
	n.sent.Add(1)
	if _, err := n.d.pool.Exec(ctx, "SELECT pg_notify($1, $2)", n.d.channel, p); err != nil {
		// Other processes' receivers find the events at their safety
		// poll.
		n.d.log.Debug("postgres transport: could not notify other processes; their receivers look again within a second",
			"schema", n.d.schema, "err", err)
	}
}

// othersListen reports whether a session other than this driver's
// listening connection (known by its application_name) listens on the
// channel. Sessions of other roles whose statements this role may not
// read count as listeners (their application_name may read NULL), and so
// does everyone when the server does not track statements
// (track_activities).
func (n *notifier) othersListen(ctx context.Context) (bool, error) {
	var others bool
	err := n.d.pool.QueryRow(ctx, `SELECT current_setting('track_activities') <> 'on' OR EXISTS (SELECT 1 FROM pg_stat_activity
		WHERE datname = current_database() AND application_name IS DISTINCT FROM $1 AND (query = $2 OR query = '<insufficient privilege>'))`,
		n.d.listenerName, listenSQL(n.d.channel)).Scan(&others)
	return others, err
}
