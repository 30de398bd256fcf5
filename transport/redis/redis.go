package redis

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/ripplehq/ripple/transport"
)

func init() {
	transport.Register("redis", Open)
	transport.Register("rediss", Open)
}

// DefaultPrefix is the key namespace used when the URL has no prefix
// parameter.
const DefaultPrefix = "ripple"

// ErrClosed is returned by calls on a closed driver.
var ErrClosed = errors.New("redis transport is closed")

// minVersion is the oldest Redis the driver accepts: XAUTOCLAIM's report
// of deleted entries and exclusive XRANGE bounds arrived in 7.0.
const minVersion = 7

// Driver is the redis transport's transport.Driver. Its As method exposes
// the underlying go-redis client.
type Driver struct {
	client *goredis.Client
	// noRetry never retries a command that may have reached Redis; direct
	// publishes use it (see route.go).
	noRetry *goredis.Client
	opts    *goredis.Options
	prefix  string
	ret     transport.Retention
	maxSize int
	log     *slog.Logger
	// clientLog receives go-redis's own lines (see clientLogger).
	clientLog *slog.Logger

	batch  combiner // script publishes and settlements other than completions
	direct combiner // direct publishes
	acks   *acker   // completions

	routeMu sync.Mutex
	routes  *routeTable // cached subscription registry, nil until read

	mu     sync.Mutex
	closed bool
	subs   map[*subscription]struct{}
}

// Open opens a driver for a redis:// or rediss:// URL. It connects, and
// checks the server's version and eviction policy, before it returns.
func Open(ctx context.Context, rawURL string, cfg transport.Config) (transport.Driver, error) {
	opts, prefix, allowEviction, err := parseURL(rawURL)
	if err != nil {
		return nil, err
	}
	clientLog := cmp.Or(cfg.Logger, slog.Default()).With("transport", "redis")
	d := &Driver{
		client:    goredis.NewClient(opts),
		opts:      opts,
		prefix:    prefix,
		ret:       cfg.Retention.Resolve(),
		maxSize:   cfg.MaxMessageSize,
		log:       clientLog.With("prefix", prefix),
		clientLog: clientLog,
		subs:      map[*subscription]struct{}{},
	}
	// Before the first dial, so that go-redis's lines about it go to the
	// application's logger too.
	addClientLogger(clientLog)
	d.batch = combiner{maxActive: batchSlots, maxItems: maxBatchItems, maxBytes: maxBatchBytes, exec: d.execBatch}
	d.direct = combiner{maxActive: batchSlots, maxItems: maxBatchItems, maxBytes: maxBatchBytes, exec: d.execDirect}
	d.acks = newAcker(d)
	nr := *opts
	nr.MaxRetries = -1
	d.noRetry = goredis.NewClient(&nr)
	if err := d.check(ctx, redactURL(rawURL), allowEviction); err != nil {
		_ = d.client.Close()
		_ = d.noRetry.Close()
		removeClientLogger(clientLog)
		return nil, err
	}
	return d, nil
}

// go-redis writes its own log lines (a dial that failed, a connection it
// dropped) through one logger for the whole process, to stderr unless
// told otherwise, which bypasses the logger an application gives Ripple.
// The first Open therefore installs clientLogger, once: installing it
// again at every Open would undo a logger the application set for
// go-redis itself after its first Open. Being global, it cannot tell
// which client a line is about; it passes each line to the logger of the
// most recently opened driver still open (slog's default when none is),
// since applications give all their buses the same logger as a rule, so
// the lines go where the application looks.
var clientLogs struct {
	once    sync.Once
	mu      sync.Mutex
	loggers []*slog.Logger // Driver.clientLog of each open driver, oldest first
}

// clientLogger is go-redis's logger while Ripple is in use.
type clientLogger struct{}

// Printf logs one go-redis line. A failed dial comes back to Ripple as
// the error of the call that needed the connection, which Ripple reports
// or returns, so it is logged at Debug: at every call during an outage a
// higher level would repeat that error. Any other line is logged at Warn,
// as it may be the only report of its problem.
func (clientLogger) Printf(ctx context.Context, format string, v ...any) {
	clientLogs.mu.Lock()
	var l *slog.Logger
	if n := len(clientLogs.loggers); n > 0 {
		l = clientLogs.loggers[n-1]
	}
	clientLogs.mu.Unlock()
	if l == nil {
		l = slog.Default().With("transport", "redis")
	}
	level := slog.LevelWarn
	if strings.Contains(format, "failed to dial") || strings.Contains(format, "usable connection") {
		level = slog.LevelDebug
	}
	if !l.Enabled(ctx, level) {
		return
	}
	l.Log(ctx, level, "redis transport: go-redis: "+strings.TrimPrefix(fmt.Sprintf(format, v...), "redis: "))
}

// addClientLogger makes l the logger of go-redis's lines, installing
// clientLogger on first use.
func addClientLogger(l *slog.Logger) {
	clientLogs.once.Do(func() { goredis.SetLogger(clientLogger{}) })
	clientLogs.mu.Lock()
	clientLogs.loggers = append(clientLogs.loggers, l)
	clientLogs.mu.Unlock()
}

// removeClientLogger undoes addClientLogger(l) for a driver that closed.
func removeClientLogger(l *slog.Logger) {
	clientLogs.mu.Lock()
	defer clientLogs.mu.Unlock()
	for i := len(clientLogs.loggers) - 1; i >= 0; i-- {
		if clientLogs.loggers[i] == l {
			clientLogs.loggers = slices.Delete(clientLogs.loggers, i, i+1)
			return
		}
	}
}

// parseURL splits Ripple's own query parameters off the URL and hands the
// rest to go-redis, which rejects parameters it does not know.
func parseURL(rawURL string) (*goredis.Options, string, bool, error) {
	shown := redactURL(rawURL)
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, "", false, fmt.Errorf("redis transport: URL %q is not a valid URL: %v; write it as redis://[user:password@]host:port/db", shown, errors.Unwrap(err))
	}
	if u.Scheme != "redis" && u.Scheme != "rediss" {
		return nil, "", false, fmt.Errorf("redis transport: URL %q must start with redis:// or rediss:// (TLS)", shown)
	}
	if u.Host == "" {
		return nil, "", false, fmt.Errorf("redis transport: URL %q has no host; write it as redis://host:port/db, for example redis://localhost:6379/0", shown)
	}
	q := u.Query()
	prefix := DefaultPrefix
	if vs, ok := q["prefix"]; ok {
		prefix = vs[len(vs)-1]
		if err := validPrefix(prefix); err != nil {
			return nil, "", false, fmt.Errorf("redis transport: URL %q: %w", shown, err)
		}
		q.Del("prefix")
	}
	allowEviction := false
	if vs, ok := q["allow_eviction"]; ok {
		b, err := strconv.ParseBool(vs[len(vs)-1])
		if err != nil {
			return nil, "", false, fmt.Errorf("redis transport: URL %q: allow_eviction must be true or false, not %q", shown, vs[len(vs)-1])
		}
		allowEviction = b
		q.Del("allow_eviction")
	}
	u.RawQuery = q.Encode()
	opts, err := goredis.ParseURL(u.String())
	if err != nil {
		msg := strings.TrimPrefix(err.Error(), "redis: ")
		return nil, "", false, fmt.Errorf("redis transport: URL %q: %s; Ripple's parameters are prefix and allow_eviction, the others are go-redis connection options such as dial_timeout, read_timeout, pool_size, client_name, protocol and (with rediss:// only) skip_verify", shown, msg)
	}
	// Without it go-redis waits for a reply until its read timeout,
	// whatever the caller's ctx says, so a slow Redis would hold a
	// Publish past its deadline.
	opts.ContextTimeoutEnabled = true
	return opts, prefix, allowEviction, nil
}

func validPrefix(p string) error {
	if p == "" || len(p) > 64 {
		return fmt.Errorf("prefix must be 1 to 64 characters, got %d", len(p))
	}
	for _, r := range p {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("_-.:", r)) {
			return fmt.Errorf("prefix %q contains %q; use only letters, digits, '_', '-', '.' and ':'", p, r)
		}
	}
	return nil
}

// redactURL hides the password of a URL shown in an error.
func redactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil || u.User == nil {
		if err != nil {
			if at := strings.LastIndex(raw, "@"); at >= 0 {
				if i := strings.Index(raw, "://"); i >= 0 && i < at {
					return raw[:i+3] + "xxxxx" + raw[at:]
				}
			}
		}
		return raw
	}
	if _, has := u.User.Password(); has {
		u.User = url.UserPassword(u.User.Username(), "xxxxx")
	}
	return u.String()
}

// check connects and refuses servers Ripple cannot run on safely.
func (d *Driver) check(ctx context.Context, shown string, allowEviction bool) error {
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	fields := map[string]string{}
	// The server section comes alone: Redis 6 takes one section per INFO
	// and answers a syntax error to several, which would hide the version
	// message below.
	if err := d.info(cctx, fields, "server"); err != nil {
		return d.connectErr(shown, err)
	}
	version := fields["redis_version"]
	major, _, _ := strings.Cut(version, ".")
	if n, err := strconv.Atoi(major); err != nil || n < minVersion {
		return fmt.Errorf("redis transport: the server at %s is Redis %q; Ripple needs Redis %d or newer (for XAUTOCLAIM and stream lag), so upgrade the server", d.opts.Addr, version, minVersion)
	}
	if err := d.info(cctx, fields, "memory", "replication", "cluster"); err != nil {
		return d.connectErr(shown, err)
	}
	if fields["role"] == "slave" {
		// A read-only replica fails every write; a writable one keeps
		// them only until its next resync with the primary.
		return fmt.Errorf("redis transport: the server at %s is a replica of %s:%s; point the URL at the primary (after a failover, at the new primary)", d.opts.Addr, fields["master_host"], fields["master_port"])
	}
	if fields["cluster_enabled"] == "1" {
		return fmt.Errorf("redis transport: the server at %s is a Redis Cluster node; Ripple's scripts touch several keys of one namespace at once, which Redis Cluster refuses across slots, so use a standalone Redis (or a primary with replicas)", d.opts.Addr)
	}
	if policy := fields["maxmemory_policy"]; policy != "" && policy != "noeviction" && !allowEviction {
		return fmt.Errorf("redis transport: the server at %s has maxmemory-policy %s: when memory is full Redis would evict keys and silently lose queued events, dedup and idempotency records; set maxmemory-policy noeviction (then a full Redis fails publishes loudly), or add allow_eviction=true to the URL to accept the risk", d.opts.Addr, policy)
	}
	if err := d.loadScripts(cctx); err != nil {
		return fmt.Errorf("redis transport: loading Lua scripts on %s: %w", d.opts.Addr, err)
	}
	return nil
}

// info adds the fields of INFO's sections to fields.
func (d *Driver) info(ctx context.Context, fields map[string]string, sections ...string) error {
	info, err := d.client.Info(ctx, sections...).Result()
	if err != nil {
		return err
	}
	for line := range strings.SplitSeq(info, "\n") {
		if k, v, ok := strings.Cut(strings.TrimSpace(line), ":"); ok {
			fields[k] = v
		}
	}
	return nil
}

func (d *Driver) connectErr(shown string, err error) error {
	msg := err.Error()
	var nerr net.Error
	var verr *tls.CertificateVerificationError
	var rerr tls.RecordHeaderError
	switch {
	case errors.As(err, &verr):
		return fmt.Errorf("redis transport: the TLS certificate of the server at %s could not be verified (from %q): %w; if it comes from a private CA, point the SSL_CERT_FILE environment variable at that CA's certificate (skip_verify=true in the URL turns verification off, for tests only)", d.opts.Addr, shown, err)
	case errors.As(err, &rerr):
		return fmt.Errorf("redis transport: the server at %s does not speak TLS (from %q): %w; use redis:// instead of rediss://, or the server's TLS port", d.opts.Addr, shown, err)
	case strings.Contains(msg, "NOAUTH") || strings.Contains(msg, "without authentication") || strings.Contains(msg, "Authentication required"):
		return fmt.Errorf("redis transport: the server at %s requires a password and the URL %q has none; write it as redis://:PASSWORD@host:port/db (or redis://USER:PASSWORD@… with ACL users): %w", d.opts.Addr, shown, err)
	case strings.Contains(msg, "WRONGPASS") || strings.Contains(msg, "invalid password") || strings.Contains(msg, "invalid username-password"):
		return fmt.Errorf("redis transport: the server at %s rejected the user name or password in %q: %w", d.opts.Addr, shown, err)
	case strings.Contains(msg, "NOPERM"):
		return fmt.Errorf("redis transport: the Redis user in %q lacks a permission Ripple needs (streams, Lua scripts, INFO): %w", shown, err)
	case errors.As(err, &nerr), errors.Is(err, context.DeadlineExceeded), strings.Contains(msg, "connection refused"), strings.Contains(msg, "no such host"):
		hint := "is redis-server running there, and are host and port right?"
		if d.opts.TLSConfig != nil {
			hint = "is redis-server running there, are host and port right, and does that port serve TLS (rediss://)?"
		}
		return fmt.Errorf("redis transport: cannot reach Redis at %s (from %q): %w; %s", d.opts.Addr, shown, err, hint)
	case errors.Is(err, io.EOF) && d.opts.TLSConfig == nil:
		return fmt.Errorf("redis transport: the server at %s closed the connection without answering (from %q): %w; if that port expects TLS, use rediss://", d.opts.Addr, shown, err)
	}
	return fmt.Errorf("redis transport: connecting to %s (from %q): %w", d.opts.Addr, shown, err)
}

// Name returns "redis".
func (d *Driver) Name() string { return "redis" }

// Capabilities declares what the driver gives; see the package doc.
func (d *Driver) Capabilities() transport.Capabilities {
	return transport.Capabilities{Durable: true, Delay: true, Dedup: true, SharedRateLimit: true, Ephemeral: true, StartFrom: true}
}

// As sets target to the driver's go-redis client when target is a
// *(*redis.Client), a *redis.UniversalClient or a *redis.Cmdable (redis is
// github.com/redis/go-redis/v9), or to the driver itself for a
// *transport.Driver or **Driver, and reports whether it did.
func (d *Driver) As(target any) bool {
	switch t := target.(type) {
	case *transport.Driver:
		*t = d
	case **Driver:
		*t = d
	case **goredis.Client:
		*t = d.client
	case *goredis.UniversalClient:
		*t = d.client
	case *goredis.Cmdable:
		*t = d.client
	default:
		return false
	}
	return true
}

// Close stops every subscription and closes the connections. Leased
// deliveries not settled are redelivered after their leases run out.
func (d *Driver) Close() error {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return nil
	}
	d.closed = true
	subs := make([]*subscription, 0, len(d.subs))
	for s := range d.subs {
		subs = append(subs, s)
	}
	d.mu.Unlock()
	for _, s := range subs {
		_ = s.Close()
	}
	d.batch.wait()
	d.direct.wait()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var flushErr error
	if err := d.acks.flush(ctx); err != nil {
		flushErr = fmt.Errorf("redis transport: close: completions could not be acknowledged, so those events will be delivered again: %w", err)
	}
	err := errors.Join(flushErr, d.client.Close(), d.noRetry.Close())
	removeClientLogger(d.clientLog)
	return err
}

func (d *Driver) isClosed() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.closed
}

// Keys. Every key starts with the prefix, so several applications share
// one Redis database without seeing each other.
func (d *Driver) subsKey() string              { return d.prefix + ":subs" }
func (d *Driver) subsVersionKey() string       { return d.prefix + ":subsv" }
func (d *Driver) subsFromKey() string          { return d.prefix + ":subsfrom" }
func (d *Driver) streamKey(name string) string { return d.prefix + ":s:" + name }
func (d *Driver) pausedKey() string            { return d.prefix + ":paused" }
func (d *Driver) deadKey(name string) string   { return d.prefix + ":x:" + name }
func (d *Driver) claimKey(handler, id string) string {
	return d.prefix + ":c:" + handler + ":" + id
}

// rateKey is the handler's sliding rate-limit window (see reserveScript);
// PREFIX:rl:NAME held the token bucket of earlier versions.
func (d *Driver) rateKey(handler string) string { return d.prefix + ":rw:" + handler }

// dedupKey is the dedup record of an event identity (see publishScript).
func (d *Driver) dedupKey(source, id string) string {
	return d.prefix + ":di:" + transport.IdentityKey(source, id)
}
func (d *Driver) failedKey(name string) string { return d.prefix + ":n:" + name }
func (d *Driver) leasesKey(name string) string { return d.prefix + ":l:" + name }

// consumerName identifies one receiver in a consumer group; it names the
// host and process so that XINFO CONSUMERS shows who holds what.
func consumerName() string {
	host, _ := os.Hostname()
	if host == "" {
		host = "host"
	}
	return fmt.Sprintf("%s:%d:%s", host, os.Getpid(), randHex(4))
}
