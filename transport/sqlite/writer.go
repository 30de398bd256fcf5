package sqlite

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"maps"
	"math"
	"math/rand/v2"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ripplehq/ripple/transport"
	msqlite "modernc.org/sqlite"
)

const (
	// maxBatch bounds one group commit so that a flood of publishers
	// cannot make a single transaction (and everyone's latency) unbounded.
	maxBatch = 1024
	// busyGiveUp is how long the writer keeps retrying a transaction that
	// another process keeps locked before it fails the queued operations.
	busyGiveUp = time.Minute
	// busyBackoffMin and busyBackoffMax bound the sleeps of runTx's
	// retry loop while another process holds the write lock.
	busyBackoffMin = 50 * time.Microsecond
	busyBackoffMax = 2 * time.Millisecond
)

// op is one queued write. run executes inside the writer's transaction and
// must (re)initialise its outputs on every call, because a batch that fails
// is rolled back and its operations run again one by one.
type op struct {
	ctx context.Context
	// run is the operation, or nil for a publish of msgs: the writer
	// stores the messages of consecutive publishes with shared multi-row
	// statements instead of one statement per row.
	run  func(w *writer) error
	msgs []*transport.Message
	err  error
	done chan struct{}
	// soft: see the soft exec flag.
	soft bool
	// answered is touched only by the writer goroutine.
	answered bool
}

type subRow struct {
	id      int64
	name    string
	pattern string
	ordered bool
}

// writer owns the only write connection. Serialising writes costs nothing
// (SQLite allows one writer at a time anyway) and lets concurrent callers
// share a transaction, and so an fsync.
//
// Whoever holds mu runs transactions on the connection: usually the writer
// goroutine, which groups the queued operations, but a caller that finds
// the writer idle and no sign of concurrent writers runs its operation on
// its own goroutine (see tryInline). That saves the two goroutine hand-offs
// that would otherwise dominate a lone publisher's latency.
type writer struct {
	d    *driver
	conn *sql.Conn
	ops  chan *op

	mu sync.Mutex
	// wantLock is set while the writer goroutine waits for mu, so that
	// callers queue behind it rather than barge in ahead of queued work.
	wantLock atomic.Bool
	// grouped records that the last transaction held more than one
	// operation: writers are concurrent, and queueing them for the writer
	// goroutine groups them into fewer commits.
	grouped atomic.Bool
	// kick asks the writer goroutine to checkpoint after an inline commit.
	kick   chan struct{}
	inline []*op
	// beginCtx is the context the next BEGIN waits for the write lock
	// with: the caller's own for an inline operation, so that its
	// cancellation ends a wait for another process's lock.
	beginCtx context.Context

	now     int64              // the transaction's clock, unix nanoseconds
	touched map[int64]struct{} // subscriptions to wake after commit

	// recent holds events this process published, by seq, so leasing
	// them (often moments later, once per subscription) skips reading
	// the event row back. Events never change, so a hit is always right;
	// fresh collects the transaction's events and joins recent only
	// after COMMIT, since a rolled-back seq may be reused.
	recent eventCache
	fresh  []cachedEvent

	subs        []*subRow
	subsVersion int64 // -1: unknown, reload at next use
	subsChecked bool  // version compared in the current transaction
	match       map[string][]*subRow
	// dataVersion is SQLite's data version of the file when this
	// connection last knew its subscription list to be current: right
	// after a commit of its own that began with the list current. While it
	// has not moved no other connection has written, so the subscription
	// list cannot have changed and the per-transaction version query is
	// skipped. 0: unknown.
	dataVersion uint32
	// beganVersion is the file's data version when the current transaction
	// began.
	beganVersion uint32

	// Multi-row statements, by row count (a power of two).
	insEvents, insDeliveries, insLeased map[int]*sql.Stmt
	args                                []any
	// logSeqs is leaseFromLog's scratch; patMatch caches pattern matches
	// by pattern and type.
	logSeqs  []int64
	patMatch map[string]bool
	// leaseSub is the subscription the current lease is for.
	leaseSub int64
	pub      pubScratch

	st    stmts
	prune pruneState

	// commits counts this writer's commits, for the maintenance pass.
	commits atomic.Int64
	// walBehind is set by the maintenance pass when the WAL has grown
	// past walBoundFrames without a checkpoint reaching its end.
	walBehind atomic.Bool
	// selfCheckpoints counts the writer's own checkpoints.
	selfCheckpoints atomic.Int64
	full            bool // configured synchronous=FULL
	relaxed         bool // connection currently at synchronous=NORMAL for soft batches

	// batches and batched count transactions and the operations in them,
	// so tests and benchmarks can see how well group commit groups.
	batches, batched atomic.Int64
}

type stmts struct {
	begin, commit, rollback *sql.Stmt

	insEvent, subsVersion, loadStored *sql.Stmt
	logScan, logGet, setHead          *sql.Stmt
	subPaused, touchSub               *sql.Stmt

	// leaseBuckets holds the lease statements with a literal LIMIT of 1
	// to maxLeaseLimit, prepared on first use: SQLite recompiles a
	// statement whenever the value bound to its LIMIT changes, and the
	// number of free handler slots changes on nearly every Receive.
	leaseBuckets                  [4][maxLeaseLimit]*sql.Stmt
	nextDue, nextLease, loadEvent *sql.Stmt

	complete, retry, release, dead, extend *sql.Stmt

	claim, claimState, finishOK, finishFail *sql.Stmt
}

const leaseSet = `UPDATE deliveries SET state = 1, lease_until = ?1, gen = gen + 1, attempts = attempts + 1,
	first_attempt = CASE WHEN first_attempt = 0 THEN ?2 ELSE first_attempt END
	WHERE sub_id = ?3 AND event_seq IN `

const leaseReturning = ` RETURNING event_seq, attempts, gen, first_attempt, priority`

// The lease statements. The key checks of leaseOrderedSQL name their
// indexes: without statistics the planner would walk the primary key over
// every earlier row of the subscription instead. A row of a key is held back
// by an earlier unsettled row of the key, and by any leased one: Replay and
// Requeue can make an earlier row ready while a later one runs. Each check
// is one probe; rows waiting behind a key's head are held (see
// holdTriggerDDL) and so not in deliveries_ready, which the scan walks.
const (
	leaseExpiredSQL = leaseSet + `(SELECT event_seq FROM deliveries WHERE sub_id = ?3 AND state = 1 AND lease_until < ?2
			ORDER BY lease_until LIMIT ?4)` + leaseReturning
	leaseReadySQL = leaseSet + `(SELECT event_seq FROM deliveries WHERE sub_id = ?3 AND state = 0 AND held = 0 AND run_at <= ?2
			AND priority >= 0 ORDER BY priority DESC, event_seq LIMIT ?4)` + leaseReturning
	// leaseLowSQL leases the ready rows of negative priority, which come
	// after the log's entries (of priority 0).
	leaseLowSQL = leaseSet + `(SELECT event_seq FROM deliveries WHERE sub_id = ?3 AND state = 0 AND held = 0 AND run_at <= ?2
			AND priority < 0 ORDER BY priority DESC, event_seq LIMIT ?4)` + leaseReturning
	leaseOrderedSQL = leaseSet + `(SELECT d.event_seq FROM deliveries d WHERE d.sub_id = ?3 AND d.state = 0 AND d.held = 0 AND d.run_at <= ?2
			AND (d.key = '' OR (NOT EXISTS (SELECT 1 FROM deliveries e INDEXED BY deliveries_key WHERE e.sub_id = ?3 AND e.key = d.key
				AND e.state IN (0, 1) AND e.key <> '' AND e.event_seq < d.event_seq)
			AND NOT EXISTS (SELECT 1 FROM deliveries e INDEXED BY deliveries_key_leased WHERE e.sub_id = ?3 AND e.key = d.key
				AND e.state = 1 AND e.key <> '')))
			ORDER BY d.priority DESC, d.event_seq LIMIT ?4)` + leaseReturning
	nextDueSQL = `SELECT min(run_at) FROM deliveries WHERE sub_id = ? AND state = 0 AND delayed = 1 AND run_at > ?`
)

func newWriter(ctx context.Context, d *driver, conn *sql.Conn, full bool) (*writer, error) {
	w := &writer{
		d:             d,
		full:          full,
		conn:          conn,
		ops:           make(chan *op, maxBatch),
		kick:          make(chan struct{}, 1),
		beginCtx:      context.Background(),
		touched:       map[int64]struct{}{},
		subsVersion:   -1,
		match:         map[string][]*subRow{},
		insEvents:     map[int]*sql.Stmt{},
		insDeliveries: map[int]*sql.Stmt{},
		insLeased:     map[int]*sql.Stmt{},
		patMatch:      map[string]bool{},
	}
	prep := []struct {
		dst **sql.Stmt
		sql string
	}{
		{&w.st.begin, "BEGIN IMMEDIATE"},
		{&w.st.commit, "COMMIT"},
		{&w.st.rollback, "ROLLBACK"},
		{&w.st.insEvent, insEventCols + insEventRow + insEventTail},
		{&w.st.subsVersion, `SELECT value FROM ripple_meta WHERE key = 'subs_version'`},
		{&w.st.logScan, logScanSQL},
		{&w.st.logGet, logGetSQL},
		{&w.st.setHead, setHeadSQL},
		{&w.st.loadStored, loadStoredSQL},
		{&w.st.subPaused, `SELECT paused, head, pattern FROM subscriptions WHERE id = ?`},
		{&w.st.touchSub, `UPDATE subscriptions SET touched_at = ?1 WHERE id = ?2 RETURNING paused, head, pattern`},
		{&w.st.nextDue, nextDueSQL},
		{&w.st.nextLease, `SELECT min(lease_until) FROM deliveries WHERE sub_id = ? AND state = 1`},
		{&w.st.loadEvent, `SELECT id, type, key, priority, time, attrs, data FROM events WHERE seq = ?`},
		{&w.st.complete, `UPDATE deliveries SET state = 2, done_at = ?1, lease_until = 0
			WHERE sub_id = ?2 AND event_seq = ?3 AND gen = ?4 AND state = 1`},
		{&w.st.retry, `UPDATE deliveries SET state = 0, run_at = ?1, delayed = ?1 > ?6, lease_until = 0, failures = failures + 1, last_error = ?5
			WHERE sub_id = ?2 AND event_seq = ?3 AND gen = ?4 AND state = 1`},
		{&w.st.release, `UPDATE deliveries SET state = 0, run_at = ?1, delayed = ?1 > ?5, lease_until = 0, attempts = max(attempts - 1, 0)
			WHERE sub_id = ?2 AND event_seq = ?3 AND gen = ?4 AND state = 1`},
		{&w.st.dead, `UPDATE deliveries SET state = 3, done_at = ?1, lease_until = 0, failures = failures + 1, last_error = ?5
			WHERE sub_id = ?2 AND event_seq = ?3 AND gen = ?4 AND state = 1`},
		{&w.st.extend, `UPDATE deliveries SET lease_until = ?1 WHERE sub_id = ?2 AND event_seq = ?3 AND gen = ?4 AND state = 1`},
		{&w.st.claim, `INSERT INTO claims (handler, event_id, done, expires_at, updated_at) VALUES (?1, ?2, 0, ?3, ?4)
			ON CONFLICT (handler, event_id) DO UPDATE SET expires_at = excluded.expires_at, updated_at = excluded.updated_at
			WHERE claims.done = 0 AND claims.expires_at <= excluded.updated_at`},
		{&w.st.claimState, `SELECT done FROM claims WHERE handler = ? AND event_id = ?`},
		{&w.st.finishOK, `INSERT INTO claims (handler, event_id, done, expires_at, updated_at) VALUES (?1, ?2, 1, 0, ?3)
			ON CONFLICT (handler, event_id) DO UPDATE SET done = 1, updated_at = excluded.updated_at`},
		{&w.st.finishFail, `DELETE FROM claims WHERE handler = ? AND event_id = ? AND done = 0`},
	}
	for _, p := range prep {
		s, err := conn.PrepareContext(ctx, p.sql)
		if err != nil {
			w.close()
			return nil, fmt.Errorf("preparing %q: %w", p.sql, err)
		}
		*p.dst = s
	}
	return w, nil
}

// close releases the statements and the connection; the loop has ended.
func (w *writer) close() error {
	for _, s := range []*sql.Stmt{
		w.st.begin, w.st.commit, w.st.rollback, w.st.insEvent, w.st.subsVersion, w.st.loadStored, w.st.subPaused, w.st.touchSub,
		w.st.logScan, w.st.logGet, w.st.setHead,
		w.st.nextDue, w.st.nextLease, w.st.loadEvent,
		w.st.complete, w.st.retry, w.st.release, w.st.dead, w.st.extend,
		w.st.claim, w.st.claimState, w.st.finishOK, w.st.finishFail,
	} {
		if s != nil {
			_ = s.Close()
		}
	}
	for _, kind := range w.st.leaseBuckets {
		for _, s := range kind {
			if s != nil {
				_ = s.Close()
			}
		}
	}
	for _, m := range []map[int]*sql.Stmt{w.insEvents, w.insDeliveries, w.insLeased} {
		for _, s := range m {
			_ = s.Close()
		}
	}
	return w.conn.Close()
}

func (w *writer) loop() {
	pruneT := time.NewTimer(pruneInterval)
	defer pruneT.Stop()
	batch := make([]*op, 0, maxBatch)
	last := 0
	for {
		// A caller just answered often queues its next write within
		// microseconds; catching it before this goroutine parks saves
		// the thread wake-up that would otherwise sit on its path. The
		// spin is bounded and yields, so an idle writer costs nothing.
		if last > 0 {
			w.spinFor(spinWait)
		}
		select {
		case o, ok := <-w.ops:
			if !ok {
				return
			}
			w.lock()
			batch = append(batch[:0], o)
			var open bool
			batch, open = w.drain(batch)
			// Callers answered by the last commit are usually about to
			// queue their next write. When the batch is smaller than the
			// last one, let them run first: a bigger group costs one
			// fsync instead of several. A lone caller never waits here.
			for round := 0; open && len(batch) < last && round < 4; round++ {
				n := len(batch)
				runtime.Gosched()
				batch, open = w.drain(batch)
				if len(batch) == n {
					break
				}
			}
			last = len(batch)
			w.run(batch)
			clear(batch)
			w.maybeCheckpoint()
			w.mu.Unlock()
			if !open {
				return
			}
		case <-w.kick:
			last = 0
			w.lock()
			w.maybeCheckpoint()
			w.mu.Unlock()
		case <-pruneT.C:
			last = 0
			w.lock()
			next := w.runPrune()
			w.mu.Unlock()
			pruneT.Reset(next)
		}
	}
}

// lock takes mu for the writer goroutine, keeping inline callers out
// while it waits.
func (w *writer) lock() {
	w.wantLock.Store(true)
	w.mu.Lock()
	w.wantLock.Store(false)
}

// run runs one batch; the caller holds mu.
func (w *writer) run(batch []*op) {
	w.batches.Add(1)
	w.batched.Add(int64(len(batch)))
	w.grouped.Store(len(batch) > 1)
	w.runBatch(batch)
}

// tryInline runs o on the calling goroutine when the connection is free
// and nothing suggests concurrent writers, together with anything queued
// meanwhile, and reports whether it did. The caller holds d.mu for reading,
// so the queue cannot be closed under it. When writers are concurrent (the
// last transaction grouped several operations) o is left to the writer
// goroutine, which waits for stragglers to build bigger groups.
func (w *writer) tryInline(o *op) bool {
	if len(w.ops) != 0 || w.grouped.Load() || w.wantLock.Load() || !w.mu.TryLock() {
		return false
	}
	batch := append(w.inline[:0], o)
	batch, _ = w.drain(batch)
	if len(batch) == 1 {
		w.beginCtx = o.ctx
	}
	w.run(batch)
	w.beginCtx = context.Background()
	clear(batch)
	w.inline = batch[:0]
	due := w.walBehind.Load()
	w.mu.Unlock()
	if due {
		// Catch the WAL up in the writer goroutine, off this caller's
		// path (see maybeCheckpoint).
		select {
		case w.kick <- struct{}{}:
		default:
		}
	}
	return true
}

// maybeCheckpoint is the bound on the WAL: checkpoints run on the
// maintenance connection (see maintain.go), off the writer's path, but a
// checkpointer running beside a writer that keeps appending may never
// reach the end of the WAL, and the WAL is rewound only once a checkpoint
// has. When the maintenance pass reports the WAL past walBoundFrames and
// not caught up, the writer checkpoints itself between transactions, where
// nothing appends, and the next transaction rewinds the WAL.
func (w *writer) maybeCheckpoint() {
	if !w.walBehind.Load() {
		return
	}
	w.walBehind.Store(false)
	w.selfCheckpoints.Add(1)
	_, _ = w.conn.ExecContext(context.Background(), "PRAGMA wal_checkpoint(PASSIVE)")
}

// spinWait bounds spinFor.
const spinWait = 50 * time.Microsecond

// spinFor yields until an operation is queued or d has passed.
func (w *writer) spinFor(d time.Duration) {
	start := time.Now()
	for len(w.ops) == 0 && time.Since(start) < d {
		runtime.Gosched()
	}
}

// drain appends the queued operations to batch without blocking; open is
// false once the queue has been closed.
func (w *writer) drain(batch []*op) ([]*op, bool) {
	for len(batch) < maxBatch {
		select {
		case o, ok := <-w.ops:
			if !ok {
				return batch, false
			}
			batch = append(batch, o)
		default:
			return batch, true
		}
	}
	return batch, true
}

func answer(o *op, err error) {
	if o.answered {
		return
	}
	o.answered = true
	o.err = err
	close(o.done)
}

// dropCancelled answers the operations whose callers have gone away, so that
// their writes are not performed, and returns the rest.
func dropCancelled(ops []*op) []*op {
	n := 0
	for _, o := range ops {
		if o.ctx.Err() == nil {
			n++
		}
	}
	if n == len(ops) {
		return ops
	}
	live := make([]*op, 0, n)
	for _, o := range ops {
		if err := o.ctx.Err(); err != nil {
			answer(o, err)
			continue
		}
		live = append(live, o)
	}
	return live
}

var errOpFailed = errors.New("an operation failed")

func (w *writer) runBatch(batch []*op) {
	ops := dropCancelled(batch)
	if len(ops) == 0 {
		return
	}
	err := w.runTx(ops)
	switch {
	case err == nil:
		for _, o := range ops {
			answer(o, nil)
		}
	case errors.Is(err, errOpFailed) && len(ops) > 1:
		// One operation's failure must not fail the others: give each its
		// own transaction and its own answer.
		for _, o := range ops {
			if o.ctx.Err() != nil {
				answer(o, o.ctx.Err())
				continue
			}
			o.err = nil
			e := w.runTx([]*op{o})
			if errors.Is(e, errOpFailed) {
				e = o.err
			}
			answer(o, e)
		}
	case errors.Is(err, errOpFailed):
		answer(ops[0], ops[0].err)
	default:
		for _, o := range ops {
			answer(o, err)
		}
	}
}

// runTx runs ops in one IMMEDIATE transaction, retrying the whole
// transaction while another process holds the lock: a SQLITE_BUSY never
// reaches a publisher while there is hope.
func (w *writer) runTx(ops []*op) error {
	start := time.Now()
	// The write connection has busy_timeout 0: BEGIN IMMEDIATE fails at
	// once while another process writes, and this loop tries again after
	// sleeps that start at busyBackoffMin and stay short, so the lock is
	// taken soon after the other process's commit (SQLite's own busy
	// handler sleeps up to 100 ms at a time).
	backoff := busyBackoffMin
	fullRetried := false
	for {
		err := w.tryTx(ops)
		if err != nil && !fullRetried && txFull(err, ops) {
			// The disk is full. A WAL that no checkpoint has reached the
			// end of cannot be rewound and only grows; a checkpoint here,
			// where nothing appends, lets the transaction reuse it. Once.
			fullRetried = true
			_, _ = w.conn.ExecContext(context.Background(), "PRAGMA wal_checkpoint(PASSIVE)")
			continue
		}
		if err == nil || !isBusy(err) || time.Since(start) > busyGiveUp {
			if err != nil && !errors.Is(err, errOpFailed) {
				err = fmt.Errorf("sqlite transport: %s: write failed: %w", w.d.path, err)
			}
			return err
		}
		time.Sleep(backoff + rand.N(backoff))
		backoff = min(backoff*2, busyBackoffMax)
		for _, o := range ops {
			if o.ctx.Err() != nil {
				// A caller gave up: it already has, or will get, its
				// context's error; the batch must still be retried for the
				// others, so run it without the abandoned op.
				live := dropCancelled(ops)
				if len(live) == 0 {
					return context.Canceled
				}
				ops = live
				break
			}
		}
	}
}

// txFull reports whether tryTx failed for a full disk.
func txFull(err error, ops []*op) bool {
	if errors.Is(err, errOpFailed) {
		for _, o := range ops {
			if o.err != nil && sqliteCode(o.err) == codeFull {
				o.err = nil
				return true
			}
		}
		return false
	}
	return sqliteCode(err) == codeFull
}

func (w *writer) tryTx(ops []*op) error {
	bg := context.Background()
	if w.full {
		soft := true
		for _, o := range ops {
			soft = soft && o.soft
		}
		if soft != w.relaxed {
			// Not a prepared statement: SQLite applies this pragma when
			// it compiles it, so a prepared one would act only once.
			q := "PRAGMA synchronous = FULL"
			if soft {
				q = "PRAGMA synchronous = NORMAL"
			}
			if _, err := w.conn.ExecContext(bg, q); err != nil {
				return err
			}
			w.relaxed = soft
		}
	}
	if _, err := w.st.begin.ExecContext(w.beginCtx); err != nil {
		if cerr := w.beginCtx.Err(); cerr != nil {
			// The cancellation may have been reported after BEGIN
			// took effect: make sure no transaction stays open.
			w.abort()
			return cerr
		}
		return err
	}
	w.now = time.Now().UnixNano()
	clear(w.touched)
	clear(w.fresh)
	w.fresh = w.fresh[:0]
	w.subsChecked = false
	w.beganVersion = w.fileDataVersion()
	for i := 0; i < len(ops); {
		o := ops[i]
		var err error
		if o.run != nil {
			err = o.run(w)
			i++
		} else {
			// Consecutive publishes share their statements. If they
			// fail, runBatch runs each in a transaction of its own,
			// which tells whose messages were at fault.
			j := i + 1
			for j < len(ops) && ops[j].run == nil {
				j++
			}
			err = w.publish(ops[i:j])
			i = j
		}
		if err != nil {
			w.abort()
			if isBusy(err) {
				return err
			}
			o.err = err
			return errOpFailed
		}
	}
	var err error
	for i := 0; i < 50; i++ {
		if _, err = w.st.commit.ExecContext(bg); err == nil || !isBusy(err) {
			break
		}
		time.Sleep(time.Millisecond * time.Duration(i+1))
	}
	if err != nil {
		w.abort()
		return err
	}
	w.commits.Add(1)
	for _, e := range w.fresh {
		w.recent.put(e.seq, e.msg)
	}
	// The commit's data version vouches for the subscription list only if
	// the list was current when the transaction began: checked in it, or
	// no other connection had written since this one's last check. A
	// transaction that only leased or settled may have begun after
	// another process subscribed; moving dataVersion past that commit
	// would hide the new subscription from later publishes.
	if w.subsChecked || w.beganVersion != 0 && w.beganVersion == w.dataVersion {
		w.dataVersion = w.fileDataVersion()
	}
	for id := range w.touched {
		w.d.wake.Fire(id)
	}
	return nil
}

// abort rolls back and forgets what the transaction may have changed in
// the writer's caches.
func (w *writer) abort() {
	_, _ = w.st.rollback.ExecContext(context.Background())
	w.subsVersion = -1
}

func (w *writer) touch(subID int64) { w.touched[subID] = struct{}{} }

// matching returns the subscriptions whose pattern matches typ. The list is
// cached and reloaded when ripple_meta's subs_version, bumped by every
// Subscribe in any process, has moved; checking it once per transaction
// (under the write lock) is what makes fan-out exact across processes. The
// check itself is skipped while the file's data version shows that no
// other connection has committed since this one last did.
func (w *writer) matching(typ string) ([]*subRow, error) {
	if !w.subsChecked {
		dv := w.beganVersion
		if dv == 0 || dv != w.dataVersion || w.subsVersion < 0 {
			var v int64
			if err := w.st.subsVersion.QueryRowContext(context.Background()).Scan(&v); err != nil {
				return nil, err
			}
			if v != w.subsVersion {
				if err := w.loadSubs(); err != nil {
					return nil, err
				}
				w.subsVersion = v
			}
		}
		w.subsChecked = true
	}
	if m, ok := w.match[typ]; ok {
		return m, nil
	}
	var m []*subRow
	for _, s := range w.subs {
		if transport.Match(s.pattern, typ) {
			m = append(m, s)
		}
	}
	if len(w.match) > 4096 {
		clear(w.match)
	}
	w.match[typ] = m
	return m, nil
}

// fileDataVersion returns SQLite's data version of the main database as
// seen by the write connection, or 0 if it cannot be read. Unlike PRAGMA
// data_version it also counts this connection's own commits, and it costs
// no statement. Inside a transaction it reflects every commit made before
// the transaction began.
func (w *writer) fileDataVersion() uint32 {
	var v uint32
	err := w.conn.Raw(func(dc any) error {
		fc, ok := dc.(msqlite.FileControl)
		if !ok {
			return errors.New("no file control")
		}
		var err error
		v, err = fc.FileControlDataVersion("main")
		return err
	})
	if err != nil {
		return 0
	}
	return v
}

func (w *writer) loadSubs() error {
	rows, err := w.conn.QueryContext(context.Background(), `SELECT id, name, pattern, ordered FROM subscriptions ORDER BY id`)
	if err != nil {
		return err
	}
	defer rows.Close()
	var subs []*subRow
	for rows.Next() {
		s := &subRow{}
		if err := rows.Scan(&s.id, &s.name, &s.pattern, &s.ordered); err != nil {
			return err
		}
		subs = append(subs, s)
	}
	if err := rows.Err(); err != nil {
		return err
	}
	w.subs = subs
	clear(w.match)
	return nil
}

func nanos(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

func fromNanos(n int64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n)
}

// maxRows bounds the rows of one multi-row INSERT; longer runs are split
// into power-of-two chunks, so a handful of cached statements serve every
// batch size.
const maxRows = 64

// pubScratch holds the publish path's buffers, reused across transactions.
type pubScratch struct {
	msgs []*transport.Message
	seqs map[string]int64 // identity key → seq, for the rows just inserted
	dels []delRow
}

type delRow struct {
	sub, seq, runAt int64
	priority        int
	key             string
	delayed         bool
}

const (
	insEventCols = `INSERT INTO events (id, source, type, key, priority, time, published_at, attrs, data, run_at) VALUES `
	insEventRow  = `(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`
	insEventTail = ` ON CONFLICT (id, source) DO NOTHING`
	// loadStoredSQL reads the event kept under an identity, for
	// Message.Duplicate.
	loadStoredSQL   = `SELECT type, key, priority, time, attrs, data FROM events WHERE id = ? AND source = ?`
	insDeliveryCols = `INSERT OR IGNORE INTO deliveries (sub_id, event_seq, state, run_at, priority, key, delayed) VALUES `
	insDeliveryRow  = `(?, ?, 0, ?, ?, ?, ?)`
)

// multiRow returns INSERT head + n × row + tail.
func multiRow(head, row, tail string, n int) string {
	var b strings.Builder
	b.WriteString(head)
	for i := range n {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(row)
	}
	b.WriteString(tail)
	return b.String()
}

// chunk returns the size of the next multi-row statement for rem rows.
func chunk(rem int) int {
	n := maxRows
	for n > rem {
		n >>= 1
	}
	return n
}

func (w *writer) stmt(cache map[int]*sql.Stmt, n int, q func(int) string) (*sql.Stmt, error) {
	if st := cache[n]; st != nil {
		return st, nil
	}
	st, err := w.conn.PrepareContext(context.Background(), q(n))
	if err != nil {
		return nil, err
	}
	cache[n] = st
	return st, nil
}

func insEventsSQL(n int) string {
	return multiRow(insEventCols, insEventRow, insEventTail+` RETURNING seq, id, source`, n)
}

func insDeliveriesSQL(n int) string { return multiRow(insDeliveryCols, insDeliveryRow, "", n) }

// publish stores the messages of a run of publish operations: each new
// event once, in the log, plus a delivery row for every unordered
// subscription a delayed or prioritised event matches. A
// remembered id (publish deduplication), including one repeated within the
// run, stores nothing.
func (w *writer) publish(ops []*op) error {
	ms := w.pub.msgs[:0]
	defer func() { clear(ms); w.pub.msgs = ms[:0] }()
	for _, o := range ops {
		for _, m := range o.msgs {
			if m == nil {
				continue
			}
			if m.ID == "" {
				return errors.New("sqlite transport: message has no ID")
			}
			m.Duplicate = nil // a batch that failed runs again
			ms = append(ms, m)
		}
	}
	dels := w.pub.dels[:0]
	defer func() { clear(dels); w.pub.dels = dels[:0] }()
	add := func(m *transport.Message, seq int64) error {
		subs, err := w.matching(m.Type)
		if err != nil {
			return err
		}
		routed := m.Priority != 0 || m.Delay > 0
		runAt, delayed := w.now, false
		if m.Delay > 0 {
			runAt, delayed = after(runAt, m.Delay), true
		}
		for _, s := range subs {
			// The event is in the log, which every subscription reads
			// (see log.go): only a delayed or prioritised event gets a
			// row now, and only for the unordered subscriptions, which
			// lease such rows before the log. An ordered subscription
			// takes every event from the log in order, so that a key's
			// events enter its rows oldest first.
			w.touch(s.id)
			if routed && !s.ordered {
				dels = append(dels, delRow{sub: s.id, seq: seq, runAt: runAt, priority: m.Priority, delayed: delayed})
			}
		}
		if len(subs) > 0 && !delayed {
			// A copy: the publisher may reuse its message after Publish.
			c := *m
			c.Attrs, c.Data = maps.Clone(m.Attrs), bytes.Clone(m.Data)
			w.fresh = append(w.fresh, cachedEvent{seq: seq, msg: &c})
		}
		return nil
	}
	if len(ms) == 1 {
		// One row needs no RETURNING: the result says it all, cheaper.
		m := ms[0]
		res, err := w.st.insEvent.ExecContext(context.Background(), m.ID, m.Source(), m.Type, m.Key, m.Priority, nanos(m.Time), w.now, encodeAttrs(m.Attrs), m.Data, eventRunAt(w.now, m))
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			if err := w.markDuplicate(m); err != nil {
				return err
			}
		} else {
			seq, err := res.LastInsertId()
			if err != nil {
				return err
			}
			if err := add(m, seq); err != nil {
				return err
			}
		}
	} else if len(ms) > 1 {
		if err := w.insertEvents(ms); err != nil {
			return err
		}
		for _, m := range ms {
			k := transport.IdentityKey(m.Source(), m.ID)
			seq, ok := w.pub.seqs[k]
			if !ok {
				// Remembered, or an earlier message of this run had the
				// identity.
				if err := w.markDuplicate(m); err != nil {
					return err
				}
				continue
			}
			delete(w.pub.seqs, k)
			if err := add(m, seq); err != nil {
				return err
			}
		}
	}
	return w.insertDeliveries(dels)
}

// insertEvents inserts ms and leaves the seq of each row actually inserted
// in w.pub.seqs, keyed by id.
func (w *writer) insertEvents(ms []*transport.Message) error {
	if w.pub.seqs == nil {
		w.pub.seqs = map[string]int64{}
	}
	clear(w.pub.seqs)
	for len(ms) > 0 {
		n := chunk(len(ms))
		st, err := w.stmt(w.insEvents, n, insEventsSQL)
		if err != nil {
			return err
		}
		args := w.args[:0]
		for _, m := range ms[:n] {
			args = append(args, m.ID, m.Source(), m.Type, m.Key, m.Priority, nanos(m.Time), w.now, encodeAttrs(m.Attrs), m.Data, eventRunAt(w.now, m))
		}
		err = w.queryInserted(st, args)
		clear(args)
		w.args = args[:0]
		if err != nil {
			return err
		}
		ms = ms[n:]
	}
	return nil
}

func (w *writer) queryInserted(st *sql.Stmt, args []any) error {
	rows, err := st.QueryContext(context.Background(), args...)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		var seq int64
		var id, source string
		if err := rows.Scan(&seq, &id, &source); err != nil {
			return err
		}
		w.pub.seqs[transport.IdentityKey(source, id)] = seq
	}
	return rows.Err()
}

// markDuplicate sets m.Duplicate to the event stored under m's identity.
func (w *writer) markDuplicate(m *transport.Message) error {
	dup, err := loadStored(context.Background(), w.st.loadStored.QueryRowContext, m)
	if err != nil {
		return err
	}
	m.Duplicate = dup
	return nil
}

// loadStored reads the event kept under m's identity through query.
func loadStored(ctx context.Context, query func(ctx context.Context, args ...any) *sql.Row, m *transport.Message) (*transport.Message, error) {
	dup := &transport.Message{ID: m.ID}
	var attrs []byte
	err := query(ctx, m.ID, m.Source()).Scan(&dup.Type, &dup.Key, &dup.Priority, (*nanoTime)(&dup.Time), &attrs, &dup.Data)
	if err != nil {
		return nil, fmt.Errorf("reading the stored event %q of source %q: %w", m.ID, m.Source(), err)
	}
	dup.Attrs = decodeAttrs(attrs)
	return dup, nil
}

func (w *writer) insertDeliveries(ds []delRow) error {
	for len(ds) > 0 {
		n := chunk(len(ds))
		st, err := w.stmt(w.insDeliveries, n, insDeliveriesSQL)
		if err != nil {
			return err
		}
		args := w.args[:0]
		for _, d := range ds[:n] {
			args = append(args, d.sub, d.seq, d.runAt, d.priority, d.key, d.delayed)
			w.touch(d.sub)
		}
		_, err = st.ExecContext(context.Background(), args...)
		clear(args)
		w.args = args[:0]
		if err != nil {
			return err
		}
		ds = ds[n:]
	}
	return nil
}

// token identifies one lease of one delivery row. gen changes at every
// lease, so a settlement from a lease that expired and was taken over
// matches no row and is ignored.
type token struct {
	sub, seq, gen int64
}

// lease leases up to max rows of the subscription and returns them with the
// time (unix nanos, 0 for none) at which a row might next become
// deliverable without any write: the earliest future run_at or lease end.
func (w *writer) lease(subID int64, pos subPos, ordered bool, max int, lease time.Duration) ([]*transport.Delivery, int64, error) {
	until := w.now + int64(lease)
	w.leaseSub = subID
	out, err := w.leaseRows(leaseKindExpired, subID, until, max, nil)
	if err != nil {
		return nil, 0, err
	}
	more := false
	if ordered && len(out) < max {
		// Take the next window of the log into rows, then lease the
		// heads of the keys among all rows.
		if more, err = w.materialize(subID, pos); err != nil {
			return nil, 0, err
		}
		ready, err := w.leaseRows(leaseKindOrdered, subID, until, max-len(out), nil)
		if err != nil {
			return nil, 0, err
		}
		sortDeliveries(ready)
		out = append(out, ready...)
	}
	if !ordered && len(out) < max {
		// Ready rows of priority 0 and above, then the log, then ready
		// rows of negative priority.
		ready, err := w.leaseRows(leaseKindReady, subID, until, max-len(out), nil)
		if err != nil {
			return nil, 0, err
		}
		// RETURNING gives no order; restore the query's.
		sortDeliveries(ready)
		out = append(out, ready...)
		if len(out) < max {
			if out, more, err = w.leaseFromLog(subID, pos, max-len(out), until, out); err != nil {
				return nil, 0, err
			}
		}
		if len(out) < max && !more {
			low, err := w.leaseRows(leaseKindLow, subID, until, max-len(out), nil)
			if err != nil {
				return nil, 0, err
			}
			sortDeliveries(low)
			out = append(out, low...)
		}
	}
	bg := context.Background()
	if len(out) > 0 {
		for _, d := range out {
			tok := d.Token.(token)
			if m := w.recent.get(tok.seq); m != nil {
				d.ID, d.Type, d.Key, d.Priority = m.ID, m.Type, m.Key, m.Priority
				d.Time = fromNanos(nanos(m.Time))
				// Attrs is shared read-only; Data is the handler's to keep.
				d.Attrs, d.Data = m.Attrs, bytes.Clone(m.Data)
				continue
			}
			var attrs []byte
			if err := w.st.loadEvent.QueryRowContext(bg, tok.seq).Scan(&d.ID, &d.Type, &d.Key, &d.Priority, (*nanoTime)(&d.Time), &attrs, &d.Data); err != nil {
				if !isCorrupt(err) {
					return nil, 0, fmt.Errorf("loading event %d: %w", tok.seq, err)
				}
				// A damaged page must not hold back the readable events
				// behind it: the caller dead-letters this one with
				// SQLite's error and leases again.
				return nil, 0, &unreadableError{tok: tok, err: err}
			}
			d.Attrs = decodeAttrs(attrs)
		}
		return out, 0, nil
	}
	if more {
		return nil, logNext(w.now), nil
	}
	var due, leaseEnd sql.NullInt64
	if err := w.st.nextDue.QueryRowContext(bg, subID, w.now).Scan(&due); err != nil {
		return nil, 0, err
	}
	if err := w.st.nextLease.QueryRowContext(bg, subID).Scan(&leaseEnd); err != nil {
		return nil, 0, err
	}
	next := int64(0)
	if due.Valid {
		next = due.Int64
	}
	if leaseEnd.Valid && (next == 0 || leaseEnd.Int64 < next) {
		// A lease ends when lease_until < now; wake just after it.
		next = leaseEnd.Int64 + 1
	}
	return nil, next, nil
}

// Lease statement kinds, indexes into stmts.leaseBuckets.
const (
	leaseKindExpired = iota
	leaseKindReady
	leaseKindOrdered
	leaseKindLow
)

// maxLeaseLimit is the largest LIMIT a lease statement is prepared with;
// larger requests are served by several statements.
const maxLeaseLimit = 64

// leaseStmt returns the statement of kind with LIMIT min(max,
// maxLeaseLimit) written into its text, and that limit. The statement is
// prepared on first use and kept.
func (w *writer) leaseStmt(kind, max int) (*sql.Stmt, int, error) {
	limit := min(max, maxLeaseLimit)
	if st := w.st.leaseBuckets[kind][limit-1]; st != nil {
		return st, limit, nil
	}
	q := [...]string{leaseExpiredSQL, leaseReadySQL, leaseOrderedSQL, leaseLowSQL}[kind]
	q = strings.Replace(q, "LIMIT ?4", "LIMIT "+strconv.Itoa(limit), 1)
	st, err := w.conn.PrepareContext(context.Background(), q)
	if err != nil {
		return nil, 0, err
	}
	w.st.leaseBuckets[kind][limit-1] = st
	return st, limit, nil
}

// leaseRows leases up to max rows, stopping early once a statement finds
// fewer rows than its limit.
func (w *writer) leaseRows(kind int, subID, until int64, max int, out []*transport.Delivery) ([]*transport.Delivery, error) {
	for max > 0 {
		st, limit, err := w.leaseStmt(kind, max)
		if err != nil {
			return nil, err
		}
		before := len(out)
		if out, err = w.leaseOnce(st, subID, until, out); err != nil {
			return nil, err
		}
		if len(out)-before < limit {
			break
		}
		max -= limit
	}
	return out, nil
}

func (w *writer) leaseOnce(st *sql.Stmt, subID, until int64, out []*transport.Delivery) ([]*transport.Delivery, error) {
	rows, err := st.QueryContext(context.Background(), until, w.now, subID)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	for rows.Next() {
		var seq, attempts, gen, first int64
		var prio int
		if err := rows.Scan(&seq, &attempts, &gen, &first, &prio); err != nil {
			return nil, err
		}
		d := &transport.Delivery{
			Attempt:        int(attempts),
			FirstDelivered: fromNanos(first),
			Token:          token{sub: subID, seq: seq, gen: gen},
		}
		d.Priority = prio
		out = append(out, d)
	}
	return out, rows.Err()
}

func sortDeliveries(ds []*transport.Delivery) {
	// Insertion sort: batches are small and this avoids sort's closure.
	for i := 1; i < len(ds); i++ {
		for j := i; j > 0 && deliveryLess(ds[j], ds[j-1]); j-- {
			ds[j], ds[j-1] = ds[j-1], ds[j]
		}
	}
}

func deliveryLess(a, b *transport.Delivery) bool {
	if a.Priority != b.Priority {
		return a.Priority > b.Priority
	}
	return a.Token.(token).seq < b.Token.(token).seq
}

// nanoTime scans a unix-nanosecond column into a time.Time.
type nanoTime time.Time

func (t *nanoTime) Scan(v any) error {
	switch x := v.(type) {
	case int64:
		*t = nanoTime(fromNanos(x))
	case nil:
		*t = nanoTime(time.Time{})
	default:
		return fmt.Errorf("unexpected time value %T", v)
	}
	return nil
}

func tokenOf(d *transport.Delivery) (token, error) {
	if d == nil {
		return token{}, errors.New("sqlite transport: settlement without a delivery")
	}
	t, ok := d.Token.(token)
	if !ok {
		return token{}, fmt.Errorf("sqlite transport: delivery token %T was not issued by this driver", d.Token)
	}
	return t, nil
}

func (w *writer) settle(ss []transport.Settlement) error {
	bg := context.Background()
	for i := range ss {
		s := &ss[i]
		t, err := tokenOf(s.Delivery)
		if err != nil {
			return err
		}
		runAt := after(w.now, s.Delay)
		switch s.Outcome {
		case transport.Complete:
			_, err = w.st.complete.ExecContext(bg, w.now, t.sub, t.seq, t.gen)
		case transport.Retry:
			_, err = w.st.retry.ExecContext(bg, runAt, t.sub, t.seq, t.gen, s.Error, w.now)
		case transport.Release:
			_, err = w.st.release.ExecContext(bg, runAt, t.sub, t.seq, t.gen, w.now)
		case transport.Dead:
			_, err = w.st.dead.ExecContext(bg, w.now, t.sub, t.seq, t.gen, s.Error)
		default:
			return fmt.Errorf("sqlite transport: unknown settlement outcome %d", int(s.Outcome))
		}
		if err != nil {
			return err
		}
		// Any settlement can make something deliverable: the row itself
		// (retry, release) or the next row of its key (ordered).
		w.touch(t.sub)
	}
	return nil
}

func (w *writer) extend(ds []*transport.Delivery, lease time.Duration) error {
	bg := context.Background()
	until := w.now + int64(lease)
	for _, d := range ds {
		t, err := tokenOf(d)
		if err != nil {
			return err
		}
		if _, err := w.st.extend.ExecContext(bg, until, t.sub, t.seq, t.gen); err != nil {
			return err
		}
	}
	return nil
}

// cachedEvent is an event published in the current transaction.
type cachedEvent struct {
	seq int64
	msg *transport.Message
}

// eventCacheSize bounds the recent-events cache: enough for the events
// waiting to be leased behind a few full receive batches.
const eventCacheSize = 4096

// eventCache maps seq to message for the most recent eventCacheSize
// events, evicting the oldest.
type eventCache struct {
	m    map[int64]*transport.Message
	ring [eventCacheSize]int64
	next int
}

func (c *eventCache) put(seq int64, m *transport.Message) {
	if c.m == nil {
		c.m = make(map[int64]*transport.Message, eventCacheSize)
	}
	if old := c.ring[c.next]; old != 0 {
		delete(c.m, old)
	}
	c.ring[c.next] = seq
	c.next = (c.next + 1) % eventCacheSize
	c.m[seq] = m
}

func (c *eventCache) get(seq int64) *transport.Message { return c.m[seq] }

// after returns the time in unix ns that lies d after now, the latest
// time there is when that is past the int64 range: a delay into the year
// 2262 or beyond must not wrap around into the past and run at once.
func after(now int64, d time.Duration) int64 {
	if d <= 0 {
		return now
	}
	if now > math.MaxInt64-int64(d) {
		return math.MaxInt64
	}
	return now + int64(d)
}
