package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ripplehq/ripple/internal/wake"
	"github.com/ripplehq/ripple/internal/xwake"
	"github.com/ripplehq/ripple/transport"
	_ "modernc.org/sqlite" // registers the "sqlite" database/sql driver
)

func init() {
	transport.Register("sqlite", Open)
}

// ErrClosed is wrapped by every error returned after the driver (or, for
// Receive, the subscription) has been closed, so callers can tell a shutdown
// from a storage failure with errors.Is.
var ErrClosed = errors.New("sqlite transport: closed")

const (
	name = "sqlite"
	// busyTimeout is how long one SQLite call waits for another process's
	// lock before the writer backs off and tries again.
	busyTimeout = 5 * time.Second
	// pollInterval is how often the driver looks for other processes'
	// commits; it bounds cross-process delivery latency.
	pollInterval = 20 * time.Millisecond
	// defaultLease applies when a SubscriptionSpec has no lease.
	defaultLease = 30 * time.Second
)

type options struct {
	path        string
	synchronous string // "FULL" or "NORMAL"
}

// parseURL accepts sqlite://path[?synchronous=full|normal].
func parseURL(raw string) (options, error) {
	o := options{synchronous: "FULL"}
	const prefix = "sqlite://"
	if len(raw) < len(prefix) || !strings.EqualFold(raw[:len(prefix)], prefix) {
		return o, fmt.Errorf("sqlite transport: URL %q must start with %s, for example sqlite://app.db or sqlite:///var/lib/app.db", raw, prefix)
	}
	rest := raw[len(prefix):]
	p, query, _ := strings.Cut(rest, "?")
	path, err := url.PathUnescape(p)
	if err != nil {
		return o, fmt.Errorf("sqlite transport: URL %q: bad path escape: %v", raw, err)
	}
	if path == "" {
		return o, fmt.Errorf("sqlite transport: URL %q has no file path; write sqlite://app.db (relative) or sqlite:///abs/path/app.db", raw)
	}
	if path == ":memory:" || strings.HasPrefix(path, "file:") {
		return o, fmt.Errorf("sqlite transport: URL %q: give a plain file path (in-memory SQLite cannot be shared by the driver's connections; use memory:// for a non-durable bus)", raw)
	}
	o.path = path
	q, err := url.ParseQuery(query)
	if err != nil {
		return o, fmt.Errorf("sqlite transport: URL %q: bad query: %v", raw, err)
	}
	for k, vs := range q {
		switch k {
		case "synchronous":
			v := strings.ToLower(vs[len(vs)-1])
			switch v {
			case "full":
				o.synchronous = "FULL"
			case "normal":
				o.synchronous = "NORMAL"
			default:
				return o, fmt.Errorf("sqlite transport: URL %q: synchronous=%q; accepted values are full (survives power loss) and normal (survives a process crash only)", raw, vs[len(vs)-1])
			}
		default:
			return o, fmt.Errorf("sqlite transport: URL %q: unknown parameter %q; accepted parameters: synchronous", raw, k)
		}
	}
	return o, nil
}

// driver implements transport.Driver and the optional interfaces.
type driver struct {
	path   string
	ret    transport.Retention
	logger *slog.Logger

	wdb *sql.DB // exactly one connection, owned by the writer goroutine
	rdb *sql.DB // read pool
	app *sql.DB // the application's pool (DB), for PublishTx
	// absPath is path made absolute, as PRAGMA database_list reports it.
	absPath string
	// nudge asks the poller to look for a commit at once (see nudgeWake).
	nudge chan struct{}
	w     *writer
	poll  *sql.Conn
	// mdb holds the maintenance connection mconn (see maintain.go);
	// walFrames is the WAL's size in frames at its last pass.
	mdb       *sql.DB
	mconn     *sql.Conn
	walFrames atomic.Int64
	// ckptMu keeps the writer's checkpoint and the maintenance pass's
	// apart (see writer.maybeCheckpoint).
	ckptMu sync.Mutex
	// ckptAt is the writer's commit count when a checkpoint last reached
	// the end of the WAL.
	ckptAt atomic.Int64
	// fullAt is the writer's commit count when a write last failed for a
	// full disk, -1 for never (see afterFull).
	fullAt atomic.Int64

	// mu guards closed and the send side of w.ops: senders hold it for
	// reading, so Close can close the channel once no send is in flight.
	mu      sync.RWMutex
	closed  bool
	closing chan struct{}
	bg      sync.WaitGroup

	// wake wakes this process's receivers of a subscription.
	wake wake.Set
	// xw wakes the other processes on the file after a commit that made
	// something deliverable, and this one after theirs (nil if joining
	// failed: the poll alone notices their commits).
	xw *xwake.Notifier

	nmu sync.Mutex
	// ephemeral counts this process's open receivers of each ephemeral
	// subscription, by id (guarded by nmu).
	ephemeral map[int64]int

	// dmu guards damaged, the error that showed the file damaged, and
	// when that was last logged.
	dmu          sync.Mutex
	damaged      error
	damageLogged time.Time
	// logSkips holds, by subscription, the ranges of log entries found
	// unreadable and dead-lettered, which log scans jump over (guarded by
	// dmu).
	logSkips map[int64][][2]int64
}

var (
	_ transport.Driver          = (*driver)(nil)
	_ transport.Inspector       = (*driver)(nil)
	_ transport.DeadLetterQueue = (*driver)(nil)
	_ transport.Replayer        = (*driver)(nil)
	_ transport.Claimer         = (*driver)(nil)
)

// Open opens (creating when missing) the Ripple database named by url, of
// the form sqlite://path[?synchronous=full|normal]. It is registered as the
// opener of the "sqlite" scheme; applications reach it through ripple.Open.
func Open(ctx context.Context, rawURL string, cfg transport.Config) (transport.Driver, error) {
	o, err := parseURL(rawURL)
	if err != nil {
		return nil, err
	}
	if err := checkFile(o.path); err != nil {
		return nil, err
	}
	d := &driver{
		path:    o.path,
		ret:     cfg.Retention.Resolve(),
		logger:  cfg.Logger,
		closing: make(chan struct{}),
		nudge:   make(chan struct{}, 1),
	}
	d.fullAt.Store(-1)
	if d.logger == nil {
		d.logger = slog.Default()
	}
	ok := false
	defer func() {
		if !ok {
			d.closeDBs()
		}
	}()

	bt := fmt.Sprint(busyTimeout.Milliseconds())
	// SQLite's automatic checkpoint runs inside a commit, before that
	// commit's callers can be answered; the writer checkpoints itself
	// between batches instead (see writer.checkpoint).
	wdsn := o.path + "?_pragma=busy_timeout(" + bt + ")&_pragma=synchronous(" + o.synchronous + ")&_pragma=wal_autocheckpoint(0)"
	d.wdb, err = sql.Open("sqlite", wdsn)
	if err != nil {
		return nil, fileErr(o.path, err)
	}
	d.wdb.SetMaxOpenConns(1)
	d.wdb.SetMaxIdleConns(1)
	d.wdb.SetConnMaxLifetime(0)
	d.wdb.SetConnMaxIdleTime(0)
	wconn, err := d.wdb.Conn(ctx)
	if err != nil {
		return nil, fileErr(o.path, err)
	}
	if err := initSchema(ctx, wconn, o.path); err != nil {
		_ = wconn.Close()
		return nil, err
	}

	rdsn := o.path + "?_pragma=busy_timeout(" + bt + ")&_pragma=query_only(1)"
	d.rdb, err = sql.Open("sqlite", rdsn)
	if err != nil {
		_ = wconn.Close()
		return nil, fileErr(o.path, err)
	}
	d.rdb.SetMaxOpenConns(4)
	d.rdb.SetMaxIdleConns(4)
	d.poll, err = d.rdb.Conn(ctx)
	if err != nil {
		_ = wconn.Close()
		return nil, fileErr(o.path, err)
	}

	d.w, err = newWriter(ctx, d, wconn, o.synchronous == "FULL")
	if err != nil {
		_ = wconn.Close()
		return nil, fileErr(o.path, err)
	}
	// From here on the writer waits for another process's lock in its
	// own retry loop, with short sleeps (see writer.runTx), not in
	// SQLite's busy handler, whose sleeps grow to 100 ms.
	if _, err := wconn.ExecContext(ctx, "PRAGMA busy_timeout = 0"); err != nil {
		_ = wconn.Close()
		return nil, fileErr(o.path, err)
	}
	d.mdb, err = sql.Open("sqlite", o.path+"?_pragma=busy_timeout(0)&_pragma=synchronous("+o.synchronous+")")
	if err != nil {
		_ = wconn.Close()
		return nil, fileErr(o.path, err)
	}
	d.mdb.SetMaxOpenConns(1)
	if d.mconn, err = d.mdb.Conn(ctx); err != nil {
		_ = wconn.Close()
		return nil, fileErr(o.path, err)
	}
	d.openAppDB(o.synchronous)
	if d.xw, err = xwake.Open(o.path); err != nil {
		d.logger.Warn("sqlite transport: no cross-process wake-up; other processes' commits are noticed by polling", "path", o.path, "err", err)
	}
	d.bg.Add(3)
	go func() { defer d.bg.Done(); d.w.loop() }()
	go func() { defer d.bg.Done(); d.pollLoop() }()
	go func() { defer d.bg.Done(); d.maintainLoop() }()
	ok = true
	return d, nil
}

func (d *driver) closeDBs() {
	if d.app != nil {
		_ = d.app.Close()
	}
	if d.poll != nil {
		_ = d.poll.Close()
	}
	if d.mconn != nil {
		_ = d.mconn.Close()
	}
	if d.mdb != nil {
		_ = d.mdb.Close()
	}
	if d.rdb != nil {
		_ = d.rdb.Close()
	}
	if d.wdb != nil {
		_ = d.wdb.Close()
	}
}

// Name implements transport.Driver.
func (d *driver) Name() string { return name }

// Capabilities implements transport.Driver.
func (d *driver) Capabilities() transport.Capabilities {
	return transport.Capabilities{Durable: true, Delay: true, Priority: true, Ordered: true, Dedup: true,
		SharedRateLimit: true, Ephemeral: true, StartFrom: true}
}

// Close stops the background goroutines, lets the writer finish every write
// already queued, and closes the database. It is idempotent.
func (d *driver) Close() error {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return nil
	}
	d.mu.Unlock()
	// Ephemeral subscriptions still held here go with this process.
	d.nmu.Lock()
	var eph []int64
	for id := range d.ephemeral {
		eph = append(eph, id)
	}
	clear(d.ephemeral)
	d.nmu.Unlock()
	for _, id := range eph {
		if err := d.dropEphemeral(id); err != nil {
			d.logger.Warn("sqlite transport: deleting an ephemeral subscription at close failed; another process reaps it later", "path", d.path, "err", err)
		}
	}
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return nil
	}
	d.closed = true
	close(d.closing)
	close(d.w.ops)
	d.mu.Unlock()
	d.bg.Wait()
	_ = d.xw.Close()
	err := d.w.close()
	d.closeDBs()
	return err
}

func (d *driver) errClosed() error {
	return fmt.Errorf("%w (%s)", ErrClosed, d.path)
}

// submit runs o on the calling goroutine when the writer is idle (see
// writer.tryInline) or queues it for the writer goroutine. It fails only
// when the driver is closed.
func (d *driver) submit(o *op) (inline bool, err error) {
	d.mu.RLock()
	defer d.mu.RUnlock()
	if d.closed {
		return false, d.errClosed()
	}
	if d.w.tryInline(o) {
		return true, nil
	}
	d.w.ops <- o
	return false, nil
}

// execFlags modify how exec queues and waits for an operation.
type execFlags uint8

const (
	// returnOnCancel makes exec return ctx.Err() as soon as ctx ends; the
	// write may still commit. Without it exec waits for the writer's
	// answer, which comes promptly for cancelled contexts, so that a
	// lease is never taken for a caller that has left.
	returnOnCancel execFlags = 1 << iota
	// soft marks delivery bookkeeping (Receive, Extend, Settle, pruning):
	// losing it in a power failure only means a delivery comes back,
	// which at-least-once delivery allows. A batch of only soft
	// operations commits without fsync even at synchronous=full, so the
	// only fsync per event is the publish's.
	soft
)

// exec runs fn in the writer and waits for the commit.
func (d *driver) exec(ctx context.Context, fn func(w *writer) error, f execFlags) error {
	return d.execOp(ctx, &op{ctx: ctx, run: fn, soft: f&soft != 0}, f)
}

// execOp runs o (its ctx, run or msgs, and soft set) and waits for the
// commit. A full disk or a damaged file is reported as such (storageErr).
func (d *driver) execOp(ctx context.Context, o *op, f execFlags) error {
	return d.storageErr(d.execOpRaw(ctx, o, f))
}

func (d *driver) execOpRaw(ctx context.Context, o *op, f execFlags) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	o.done = make(chan struct{})
	if !o.soft {
		// While this is pending, and just after, bookkeeping waits to
		// join a durable transaction instead of committing in between
		// (see writer.park).
		d.w.durableStart()
		defer d.w.durableEnd()
	}
	inline, err := d.submit(o)
	if err != nil {
		return err
	}
	if inline {
		if o.err != nil && ctx.Err() != nil {
			// The write failed because the caller gave up (its wait for
			// another process's lock was cut short): say so plainly.
			return ctx.Err()
		}
		return o.err
	}
	if f&returnOnCancel != 0 {
		select {
		case <-o.done:
		case <-ctx.Done():
			return ctx.Err()
		}
	} else {
		<-o.done
	}
	return o.err
}

// pollLoop notices commits by other processes: SQLite's data_version
// changes on a connection whenever another connection has committed, so one
// cheap pragma replaces a notification channel that SQLite does not have.
func (d *driver) pollLoop() {
	t := time.NewTicker(pollInterval)
	defer t.Stop()
	// last starts at the version when the driver opened, so a commit made
	// by another process before the first Receive began waiting still
	// signals: a receiver that looked before that commit is then woken,
	// and one that looked after it merely wakes once for nothing.
	ctx := context.Background()
	var last int64
	if err := d.poll.QueryRowContext(ctx, "PRAGMA data_version").Scan(&last); err != nil {
		last = -1
	}
	published := false
	for {
		nudged := false
		select {
		case <-d.closing:
			return
		case <-t.C:
		case <-d.xw.C():
		case <-d.nudge:
			nudged, published = true, true
		}
		d.nmu.Lock()
		any := d.wake.Len() > 0
		d.nmu.Unlock()
		// A process that publishes in application transactions keeps
		// last current, to tell when its commit lands and wake the others.
		if !any && !published {
			continue
		}
		var v int64
		if err := d.poll.QueryRowContext(ctx, "PRAGMA data_version").Scan(&v); err != nil {
			continue
		}
		// An application transaction is committing (its commit hook ran
		// just before the commit takes effect): look again every
		// millisecond for a while rather than wait for the next tick.
		for i := 0; nudged && v == last && i < 100; i++ {
			select {
			case <-d.closing:
				return
			case <-time.After(time.Millisecond):
			}
			if err := d.poll.QueryRowContext(ctx, "PRAGMA data_version").Scan(&v); err != nil {
				break
			}
		}
		if v != last {
			d.wake.FireAll()
			if nudged {
				d.xw.Notify() // an application transaction's publish
			}
		}
		last = v
	}
}
