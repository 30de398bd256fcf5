package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math/rand/v2"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ripplehq/ripple/transport"
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

	// hotGap is how long after a durable transaction ends its writer
	// counts as still publishing: an awaiting publisher queues its next
	// write within microseconds of its answer.
	hotGap = 200 * time.Microsecond
	// joinDelay is how long parked soft operations wait before a durable
	// transaction takes them, unless joinEvents events have been
	// published since they were parked: meanwhile the handler's next
	// lease and settlement find more events to take in one statement, so
	// each publish carries less bookkeeping, and a handler never waits
	// for more events than a lease takes. maxPark bounds how long they
	// wait for a durable transaction before they commit on their own.
	joinDelay  = 2 * time.Millisecond
	joinEvents = 16
	maxPark    = 4 * time.Millisecond
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
	insEvents, insDeliveries, completes map[int]*sql.Stmt
	// doneBuf and winDoneBuf are settle's scratch.
	doneBuf    []token
	winDoneBuf []winDone
	args       []any
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
	// so tests and benchmarks can see how well group commit groups;
	// leases and leased count the leases that took something and the
	// deliveries they took, so they can see the leases' size.
	batches, batched atomic.Int64
	leases, leased   atomic.Int64
	// quiet and quietEpoch: see quiet.go.
	quiet      map[int64]quietRec
	quietEpoch uint64

	// Soft operations (delivery bookkeeping) do not make a publisher wait
	// while it publishes back to back: instead of committing between its
	// transactions they are parked, and the next durable transaction
	// runs them before it commits (see park). durable counts the durable
	// operations submitted and not yet answered; durableAt is when the
	// last one returned (unix nanoseconds). gapAvg is a moving average of
	// the time between a durable operation's return and the next one's
	// submission (nanoseconds; 0 while several are pending): small for a
	// publisher publishing back to back, about the pace for a paced one.
	// parked (guarded by pmu) holds the parked operations, the oldest
	// parked at parkedAt; parkT asks every hotGap whether they should
	// commit on their own (the publisher stopped, or maxPark passed).
	durable   atomic.Int32
	durableAt atomic.Int64
	gapAvg    atomic.Int64
	pmu       sync.Mutex
	parked    []*op
	parkedAt  time.Time
	parkT     *time.Timer
	// pubSince counts the events published since parkedAt (guarded by
	// pmu).
	pubSince int
	// parks and joined count parked operations and those a durable
	// transaction took, for tests.
	parks, joined atomic.Int64
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
	leaseBuckets         [4][maxLeaseLimit]*sql.Stmt
	rowsState, loadEvent *sql.Stmt

	retry, release, dead, extend *sql.Stmt

	// The lease windows' statements (see window.go) and the range read
	// of leased events.
	winInsert, winComplete, winSettleOne, winException *sql.Stmt
	winExtend, winExpired, winClose, loadRange         *sql.Stmt

	claim, claimState, finishOK, finishFail *sql.Stmt
}

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
		completes:     map[int]*sql.Stmt{},
		patMatch:      map[string]bool{},
		quiet:         map[int64]quietRec{},
		parkT:         time.NewTimer(time.Hour),
	}
	w.parkT.Stop()
	if err := createQuietTriggers(ctx, conn); err != nil {
		return nil, err
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
		{&w.st.rowsState, rowsStateSQL},
		{&w.st.loadEvent, `SELECT id, type, key, priority, time, attrs, data FROM events WHERE seq = ?`},
		{&w.st.retry, `UPDATE deliveries SET state = 0, run_at = ?1, delayed = ?1 > ?6, lease_until = 0, failures = failures + 1, last_error = ?5
			WHERE sub_id = ?2 AND event_seq = ?3 AND gen = ?4 AND state = 1`},
		{&w.st.release, `UPDATE deliveries SET state = 0, run_at = ?1, delayed = ?1 > ?5, lease_until = 0, attempts = max(attempts - 1, 0)
			WHERE sub_id = ?2 AND event_seq = ?3 AND gen = ?4 AND state = 1`},
		{&w.st.dead, `UPDATE deliveries SET state = 3, done_at = ?1, lease_until = 0, failures = failures + 1, last_error = ?5
			WHERE sub_id = ?2 AND event_seq = ?3 AND gen = ?4 AND state = 1`},
		{&w.st.extend, `UPDATE deliveries SET lease_until = ?1 WHERE sub_id = ?2 AND event_seq = ?3 AND gen = ?4 AND state = 1`},
		{&w.st.winInsert, winInsertSQL},
		{&w.st.winComplete, winCompleteSQL},
		{&w.st.winSettleOne, winSettleOneSQL},
		{&w.st.winException, winExceptionSQL},
		{&w.st.winExtend, winExtendSQL},
		{&w.st.winExpired, winExpiredSQL},
		{&w.st.winClose, winCloseSQL},
		{&w.st.loadRange, loadRangeSQL},
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
		w.st.rowsState, w.st.loadEvent,
		w.st.retry, w.st.release, w.st.dead, w.st.extend,
		w.st.winInsert, w.st.winComplete, w.st.winSettleOne, w.st.winException,
		w.st.winExtend, w.st.winExpired, w.st.winClose, w.st.loadRange,
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
	for _, m := range []map[int]*sql.Stmt{w.insEvents, w.insDeliveries, w.completes} {
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
				w.lock()
				w.runParked()
				w.mu.Unlock()
				return
			}
			batch = append(batch[:0], o)
			open := true
			if o.soft {
				// Bookkeeping alone may be parked for a publish to
				// take (see park), without the connection.
				batch, open = w.drain(batch)
				if open && w.park(batch) {
					clear(batch)
					continue
				}
			}
			w.lock()
			if open {
				batch, open = w.drain(batch)
			}
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
			batch = w.joinParked(batch)
			w.run(batch)
			clear(batch)
			w.maybeCheckpoint()
			w.mu.Unlock()
			if !open {
				return
			}
		case <-w.parkT.C:
			if w.parkedWait() {
				w.lock()
				w.runParked()
				w.maybeCheckpoint()
				w.mu.Unlock()
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
	// Concurrent durable writers are worth grouping; soft operations
	// joined to a lone publisher's transaction are not a sign of them.
	durable := 0
	for _, o := range batch {
		if !o.soft {
			durable++
		}
	}
	w.grouped.Store(durable > 1)
	w.runBatch(batch)
}

// hot reports that a durable operation is pending or has just returned,
// so another is likely to come within microseconds: an awaiting publisher
// between two publishes. A paced publisher, idle for longer than hotGap
// between its publishes on average, is not: its handler's bookkeeping
// commits at once, as it would without it.
func (w *writer) hot() bool {
	if w.gapAvg.Load() >= int64(hotGap) {
		return false
	}
	return w.durable.Load() > 0 || time.Now().UnixNano()-w.durableAt.Load() < int64(hotGap)
}

// durableStart records that a durable operation is submitted.
func (w *writer) durableStart() {
	gap := int64(0)
	if w.durable.Add(1) == 1 {
		gap = max(time.Now().UnixNano()-w.durableAt.Load(), 0)
	}
	avg := w.gapAvg.Load()
	// Capped, so that one pause is forgotten after a few quick publishes.
	w.gapAvg.Store(avg + (min(gap, int64(10*hotGap))-avg)/8)
}

// durableEnd records that a durable operation returned.
func (w *writer) durableEnd() {
	w.durableAt.Store(time.Now().UnixNano())
	w.durable.Add(-1)
}

// park sets batch aside for the next durable transaction when it holds
// only soft operations and a publisher is at work, and reports whether it
// did. A publisher then pays for one transaction per publish, now and
// then holding the bookkeeping queued meanwhile, instead of waiting for
// the bookkeeping's own commits between its publishes (one connection
// commits one transaction at a time). Parked operations wait at most
// maxPark, then commit on their own.
func (w *writer) park(batch []*op) bool {
	for _, o := range batch {
		if !o.soft {
			return false
		}
	}
	now := time.Now()
	w.pmu.Lock()
	defer w.pmu.Unlock()
	if len(w.parked) > 0 && now.Sub(w.parkedAt) >= maxPark || !w.hot() {
		return false
	}
	if len(w.parked) == 0 {
		w.parkedAt = now
		w.pubSince = 0
		w.parkT.Reset(hotGap)
	}
	w.parks.Add(int64(len(batch)))
	w.parked = append(w.parked, batch...)
	return true
}

// joinParked appends the parked operations to batch, the caller's next
// transaction (it holds mu): at once if batch is soft, since it commits
// without fsync anyway, but a durable batch only once they have waited
// joinDelay or joinEvents events have been published meanwhile (batch's
// included: the parked operations run after it, in its transaction).
func (w *writer) joinParked(batch []*op) []*op {
	w.pmu.Lock()
	defer w.pmu.Unlock()
	if len(w.parked) == 0 {
		return batch
	}
	soft := true
	for _, o := range batch {
		soft = soft && o.soft
		if o.run == nil {
			w.pubSince += len(o.msgs)
		}
	}
	if !soft && w.pubSince < joinEvents && time.Since(w.parkedAt) < joinDelay {
		return batch
	}
	room := min(len(w.parked), maxBatch*2-len(batch))
	w.joined.Add(int64(room))
	batch = append(batch, w.parked[:room]...)
	n := copy(w.parked, w.parked[room:])
	clear(w.parked[n:])
	w.parked = w.parked[:n]
	if n == 0 {
		w.parkT.Stop()
	}
	return batch
}

// parkedWait reports whether the parked operations should commit on
// their own now: the publisher has stopped, or they have waited maxPark.
// Otherwise it arms parkT to ask again.
func (w *writer) parkedWait() bool {
	w.pmu.Lock()
	defer w.pmu.Unlock()
	if len(w.parked) == 0 {
		return false
	}
	age := time.Since(w.parkedAt)
	if age >= maxPark || !w.hot() {
		return true
	}
	w.parkT.Reset(min(hotGap, maxPark-age))
	return false
}

// runParked commits the parked operations on their own; the caller holds
// mu.
func (w *writer) runParked() {
	for {
		batch := w.joinParked(nil)
		if len(batch) == 0 {
			return
		}
		w.joined.Add(-int64(len(batch)))
		w.run(batch)
	}
}

// tryInline runs o on the calling goroutine when the connection is free
// and nothing suggests concurrent writers, together with anything queued
// meanwhile, and reports whether it did. The caller holds d.mu for reading,
// so the queue cannot be closed under it. When writers are concurrent (the
// last transaction grouped several operations) o is left to the writer
// goroutine, which waits for stragglers to build bigger groups.
func (w *writer) tryInline(o *op) bool {
	if w.grouped.Load() || w.wantLock.Load() {
		return false
	}
	if o.soft && (len(w.ops) != 0 || w.hot()) {
		// Queued work goes first; and while a publisher is at work, the
		// writer goroutine parks o for its next transaction rather than
		// make it wait for o's commit. A durable operation takes what is
		// queued into its transaction.
		return false
	}
	if !w.mu.TryLock() {
		return false
	}
	batch := append(w.inline[:0], o)
	batch, _ = w.drain(batch)
	batch = w.joinParked(batch)
	if len(batch) == 1 {
		w.beginCtx = o.ctx
	}
	w.run(batch)
	w.beginCtx = context.Background()
	clear(batch)
	w.inline = batch[:0]
	due := w.checkpointDue()
	if due && w.commits.Load()-w.d.ckptAt.Load() > walBoundCommits {
		// The writer goroutine has not had its turn to catch the WAL up
		// (a lone caller committing back to back): the bound holds on
		// this caller's path, once in a while.
		w.maybeCheckpoint()
		due = false
	}
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
// maintenance connection (see maintain.go), off the writer's path, but
// SQLite rewinds the WAL only when a write transaction begins with every
// frame copied, which a busy writer almost never sees. When the
// maintenance pass reports the WAL past walBoundFrames, the writer
// checkpoints itself between transactions, where nothing appends, and
// the next transaction rewinds the WAL.
func (w *writer) maybeCheckpoint() {
	if !w.checkpointDue() {
		return
	}
	w.walBehind.Store(false)
	w.selfCheckpoints.Add(1)
	w.checkpoint()
}

// checkpointDue reports that the writer should checkpoint itself: the
// maintenance pass found the WAL past its bound, or has not completed a
// checkpoint for walBoundCommits commits (writes outrun it, or it was not
// scheduled): the WAL must not outgrow what the disk can take.
func (w *writer) checkpointDue() bool {
	if w.d.afterFull() {
		return false
	}
	return w.walBehind.Load() || w.commits.Load()-w.d.ckptAt.Load() > walBoundCommits
}

// txFull reports whether tryTx failed for a full disk.
func txFull(err error, ops []*op) bool {
	if errors.Is(err, errOpFailed) {
		for _, o := range ops {
			if o.err != nil && sqliteCode(o.err) == codeFull {
				return true
			}
		}
		return false
	}
	return sqliteCode(err) == codeFull
}

// checkpoint runs a PASSIVE checkpoint on the write connection, between
// transactions. Not beside the maintenance pass's: SQLite runs one
// checkpoint at a time, and a PASSIVE one that finds another running does
// nothing.
func (w *writer) checkpoint() {
	w.d.ckptMu.Lock()
	defer w.d.ckptMu.Unlock()
	var busy, frames, done int64
	c := w.commits.Load()
	err := w.conn.QueryRowContext(context.Background(), "PRAGMA wal_checkpoint(PASSIVE)").Scan(&busy, &frames, &done)
	if err == nil && done >= frames && frames > 2*walBoundFrames {
		// Every frame is copied, yet the WAL is twice its bound: the
		// rewind keeps being missed, as when another process's writer
		// commits between this one's checkpoint and its next BEGIN.
		// RESTART makes the next writer, of any process, rewind it; with
		// busy_timeout 0 it gives up at once if a writer or a reader of
		// an older snapshot is in the way, and is tried again next time.
		err = w.conn.QueryRowContext(context.Background(), "PRAGMA wal_checkpoint(RESTART)").Scan(&busy, &frames, &done)
	}
	if err == nil && done >= frames {
		w.d.ckptAt.Store(c)
	}
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
	for {
		err := w.tryTx(ops)
		if err != nil && txFull(err, ops) {
			w.d.fullAt.Store(w.commits.Load())
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
	if w.beganVersion == 0 || w.beganVersion != w.dataVersion {
		// Another connection wrote since this one's last commit (or it
		// cannot be told): it may have written rows.
		w.forgetQuiet()
	}
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
		w.recent.put(e)
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
	if len(w.touched) > 0 {
		w.d.xw.Notify()
	}
	return nil
}

// abort rolls back and forgets what the transaction may have changed in
// the writer's caches.
func (w *writer) abort() {
	_, _ = w.st.rollback.ExecContext(context.Background())
	w.subsVersion = -1
	w.forgetQuiet() // a rollback can bring rows back
}

func (w *writer) touch(subID int64) { w.touched[subID] = struct{}{} }
