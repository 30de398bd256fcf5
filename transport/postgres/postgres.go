package postgres

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/ripplehq/ripple/internal/wake"
	"github.com/ripplehq/ripple/transport"
)

func init() {
	transport.Register("postgres", Open)
	transport.Register("postgresql", Open)
}

// ErrClosed is wrapped by every error returned after the driver (or, for
// Receive, the subscription) has been closed.
var ErrClosed = errors.New("postgres transport: closed")

const (
	name = "postgres"
	// defaultLease applies when a SubscriptionSpec has no lease.
	defaultLease = 30 * time.Second
	// safetyPoll bounds how long a receiver sleeps without looking, in
	// case a notification was lost (the listening connection dropped).
	safetyPoll = time.Second
	// defaultSchema is where Ripple's tables live unless ?schema= says
	// otherwise.
	defaultSchema = "ripple"
	// publishers is how many group-commit goroutines run publishes.
	publishers = 4
	// inflight bounds the publish statements under way at once. While
	// they wait for their commit, the publishes arriving meanwhile queue
	// and go together in the next statement: with a bound of 2, one
	// statement commits while the next one fills.
	inflight = 2
	// maxBatch bounds the messages of one group commit.
	maxBatch = 512
)

var schemaName = regexp.MustCompile(`^[a-z_][a-z0-9_]{0,62}$`)

type options struct {
	schema string
	pgURL  string // the URL handed to pgx, without Ripple's parameters
}

// parseURL splits Ripple's own parameters off a postgres:// URL.
func parseURL(raw string) (options, error) {
	o := options{schema: defaultSchema}
	u, err := url.Parse(raw)
	if err != nil {
		return o, fmt.Errorf("postgres transport: URL %q: %v; write postgres://user:password@host:5432/dbname", raw, err)
	}
	if u.Scheme != "postgres" && u.Scheme != "postgresql" {
		return o, fmt.Errorf("postgres transport: URL %q must start with postgres://", raw)
	}
	q := u.Query()
	if v, ok := q["schema"]; ok {
		s := v[len(v)-1]
		if !schemaName.MatchString(s) {
			return o, fmt.Errorf("postgres transport: URL %q: schema=%q; a schema name is 1 to 63 lower-case letters, digits and underscores, not starting with a digit", raw, s)
		}
		o.schema = s
		q.Del("schema")
	}
	u.RawQuery = q.Encode()
	o.pgURL = u.String()
	return o, nil
}

// driver implements transport.Driver and the optional interfaces.
type driver struct {
	schema  string
	qschema string // schema, quoted as an identifier
	channel string // LISTEN/NOTIFY channel of this schema
	lockKey int32  // advisory lock namespace of this schema
	dbName  string
	ret     transport.Retention
	log     *slog.Logger

	pool *pgxpool.Pool
	pub  chan *pubOp
	// slots holds a token per publish statement under way (inflight).
	slots chan struct{}

	mu      sync.RWMutex
	closed  bool
	closing chan struct{}
	bg      sync.WaitGroup

	// wake wakes this process's receivers of a subscription.
	wake wake.Set
	// notifier wakes other processes' receivers after a commit.
	notifier *notifier
	// listenerPID is the server process of the listening connection.
	listenerPID atomic.Uint32
	// listenerName is the listening connection's application_name, unique
	// to this driver: the notifier tells its own listener from other
	// processes' by it, which holds from the moment the LISTEN runs (the
	// PID is known only once the connection is up).
	listenerName string
	// settles groups concurrent settlements into one statement.
	settles settler

	nmu       sync.Mutex     // guards receivers
	receivers map[string]int // ephemeral subscriptions: receivers open in this process

	sqlCache sync.Map // template → SQL with the schema filled in
}

var (
	_ transport.Driver          = (*driver)(nil)
	_ transport.Inspector       = (*driver)(nil)
	_ transport.DeadLetterQueue = (*driver)(nil)
	_ transport.Replayer        = (*driver)(nil)
	_ transport.Claimer         = (*driver)(nil)
	_ transport.Unsubscriber    = (*driver)(nil)
	_ transport.RateLimiter     = (*driver)(nil)
	_ transport.Pauser          = (*driver)(nil)
	_ transport.TxPublisher     = (*driver)(nil)
	_ transport.TxClaimer       = (*driver)(nil)
)

// Open connects to the database named by url, creates or migrates Ripple's
// schema in it, and starts the driver's background work. It is registered
// as the opener of the "postgres" and "postgresql" schemes; applications
// reach it through ripple.Open.
func Open(ctx context.Context, rawURL string, cfg transport.Config) (transport.Driver, error) {
	o, err := parseURL(rawURL)
	if err != nil {
		return nil, err
	}
	pcfg, err := pgxpool.ParseConfig(o.pgURL)
	if err != nil {
		return nil, fmt.Errorf("postgres transport: URL %s: %v", redact(rawURL), err)
	}
	if _, set := pcfg.ConnConfig.RuntimeParams["application_name"]; !set {
		pcfg.ConnConfig.RuntimeParams["application_name"] = "ripple"
	}
	if !strings.Contains(o.pgURL, "pool_max_conns") {
		pcfg.MaxConns = 10
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	h := fnv.New32a()
	h.Write([]byte("ripple:" + o.schema))
	d := &driver{
		schema:    o.schema,
		qschema:   pgx.Identifier{o.schema}.Sanitize(),
		channel:   "ripple." + o.schema,
		lockKey:   int32(h.Sum32()),
		ret:       cfg.Retention.Resolve(),
		log:       log,
		pub:       make(chan *pubOp, maxBatch),
		slots:     make(chan struct{}, inflight),
		closing:   make(chan struct{}),
		receivers: map[string]int{},
	}
	d.listenerName = "ripple listener " + rand.Text()
	d.notifier = newNotifier(d)
	d.settles.d = d
	d.pool, err = pgxpool.NewWithConfig(ctx, pcfg)
	if err != nil {
		return nil, fmt.Errorf("postgres transport: %s: %v", redact(rawURL), err)
	}
	if err := d.migrate(ctx); err != nil {
		d.pool.Close()
		return nil, err
	}
	d.bg.Add(3 + publishers)
	// The listening connection is made in the background: until it is up
	// receivers rely on local wake-ups and the safety poll, and once it is
	// up every receiver looks again.
	go func() { defer d.bg.Done(); d.listen(nil) }()
	go func() { defer d.bg.Done(); d.pruneLoop() }()
	go func() { defer d.bg.Done(); d.notifier.loop() }()
	for range publishers {
		go func() { defer d.bg.Done(); d.publishLoop() }()
	}
	return d, nil
}

// redact hides a URL's password in error messages.
func redact(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(unparsable URL)"
	}
	return u.Redacted()
}

// q returns the SQL template with every "@." replaced by the schema.
func (d *driver) q(tmpl string) string {
	if s, ok := d.sqlCache.Load(tmpl); ok {
		return s.(string)
	}
	s := strings.ReplaceAll(tmpl, "@.", d.qschema+".")
	s = strings.ReplaceAll(s, "@LOCK", strconv.Itoa(int(d.lockKey)))
	d.sqlCache.Store(tmpl, s)
	return s
}

// Name implements transport.Driver.
func (d *driver) Name() string { return name }

// Capabilities implements transport.Driver.
func (d *driver) Capabilities() transport.Capabilities {
	return transport.Capabilities{Durable: true, Delay: true, Priority: true, Ordered: true, Dedup: true,
		SharedRateLimit: true, Ephemeral: true, StartFrom: true}
}

// Close stops the background work, answers queued publishes, and closes
// the pool. It is idempotent.
func (d *driver) Close() error {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return nil
	}
	d.closed = true
	close(d.closing)
	close(d.pub)
	d.mu.Unlock()
	d.bg.Wait()
	d.pool.Close()
	return nil
}

func (d *driver) checkOpen() error {
	d.mu.RLock()
	defer d.mu.RUnlock()
	if d.closed {
		return d.errClosed()
	}
	return nil
}

func (d *driver) errClosed() error {
	return fmt.Errorf("%w (schema %s)", ErrClosed, d.schema)
}

// wrap adds the transport's name to err and maps PostgreSQL's conditions
// onto the transport sentinels.
func (d *driver) wrap(err error) error {
	if err == nil {
		return nil
	}
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		switch pe.Code {
		case "53100", "53200": // disk_full, out_of_memory
			return fmt.Errorf("postgres transport: %w: %v", transport.ErrStorageFull, err)
		case "XX001", "XX002": // data_corrupted, index_corrupted
			return fmt.Errorf("postgres transport: %w: %v; restore the database from a backup or REINDEX", transport.ErrCorrupt, err)
		}
	}
	return fmt.Errorf("postgres transport: %w", err)
}

// signalPayload wakes the subscriptions named in a notification payload:
// comma-separated ids, or "*" for all. A payload of this driver's own
// notifier is skipped: its receivers were woken when it was queued.
func (d *driver) signalPayload(p string) {
	if d.notifier.own(p) {
		return
	}
	if p == "*" || p == "" {
		d.wake.FireAll()
		return
	}
	for _, s := range strings.Split(p, ",") {
		if id, err := strconv.ParseInt(s, 10, 64); err == nil {
			d.wake.Fire(id)
		}
	}
}

// payload builds a notification payload for the subscription ids.
func payload(ids []int64) string {
	var b strings.Builder
	for i, id := range ids {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(strconv.FormatInt(id, 10))
		if b.Len() > 7000 {
			return "*"
		}
	}
	return b.String()
}

func (d *driver) connectListener(ctx context.Context) (*pgx.Conn, error) {
	cfg := d.pool.Config().ConnConfig.Copy()
	cfg.RuntimeParams["application_name"] = d.listenerName
	c, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, d.wrap(err)
	}
	if _, err := c.Exec(ctx, listenSQL(d.channel)); err != nil {
		_ = c.Close(ctx)
		return nil, d.wrap(err)
	}
	return c, nil
}

// listenSQL is the statement a driver's listening connection runs, and
// so its last statement in pg_stat_activity while it waits.
func listenSQL(channel string) string {
	return "LISTEN " + pgx.Identifier{channel}.Sanitize()
}

// listen turns notifications on the schema's channel into wake-ups. When
// the connection drops it reconnects, and wakes every receiver, since a
// notification may have been missed meanwhile.
func (d *driver) listen(c *pgx.Conn) {
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		select {
		case <-d.closing:
		case <-ctx.Done():
		}
		cancel()
	}()
	defer cancel()
	backoff := time.Duration(0)
	for {
		if c == nil {
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			var err error
			cctx, ccancel := context.WithTimeout(ctx, 10*time.Second)
			c, err = d.connectListener(cctx)
			ccancel()
			if err != nil {
				c = nil
				backoff = min(max(backoff*2, 50*time.Millisecond), 2*time.Second)
				continue
			}
			backoff = 50 * time.Millisecond
			d.listenerPID.Store(c.PgConn().PID())
			d.wake.FireAll()
		}
		n, err := c.WaitForNotification(ctx)
		if err != nil {
			_ = c.Close(context.Background())
			c = nil
			if ctx.Err() != nil {
				return
			}
			d.log.Warn("postgres transport: notification connection lost; reconnecting", "schema", d.schema, "err", err)
			continue
		}
		d.signalPayload(n.Payload)
	}
}

// notify sends a notification waking the subscriptions ids in every
// process, and wakes this process's receivers at once.
func (d *driver) notify(ctx context.Context, ids ...int64) {
	for _, id := range ids {
		d.wake.Fire(id)
	}
	if len(ids) == 0 {
		return
	}
	_, _ = d.pool.Exec(ctx, "SELECT pg_notify($1, $2)", d.channel, d.notifier.payload(ids))
}

func fromNanos(n int64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n)
}

func nanos(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

// sinceNanos is the bound of a "published at or after t" comparison
// (Replay, SubscriptionSpec.From) at the precision publish times are
// stored with (now_ns: the database clock in whole microseconds): t
// rounded down to its microsecond, so an event published in the same
// microsecond just after t, stored as that microsecond, is included.
func sinceNanos(t time.Time) int64 {
	n := nanos(t)
	if m := n % 1000; m < 0 {
		n -= m + 1000
	} else {
		n -= m
	}
	return n
}

// patternRegex translates a subscription pattern into an anchored POSIX
// regular expression that PostgreSQL evaluates when it fans a publish out.
func patternRegex(pattern string) string {
	var b strings.Builder
	b.WriteByte('^')
	for i, seg := range strings.Split(pattern, ".") {
		if i > 0 {
			b.WriteString(`\.`)
		}
		switch seg {
		case "*":
			b.WriteString(`[^.]*`)
		case ">":
			b.WriteString(`.+`)
		default:
			b.WriteString(regexp.QuoteMeta(seg))
		}
	}
	b.WriteByte('$')
	return b.String()
}
