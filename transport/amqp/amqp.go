package amqp

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"regexp"
	"strconv"
	"sync"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/ripplehq/ripple/transport"
	"github.com/ripplehq/ripple/transport/sidestore"
)

func init() {
	transport.Register("amqp", Open)
	transport.Register("amqps", Open)
}

// DefaultNamespace names the exchange and queues when the URL has no
// namespace parameter.
const DefaultNamespace = "ripple"

// DefaultMaxMessageSize is RabbitMQ 3.10's default max_message_size; a
// publish larger than the URL's max_message_size is refused before it is
// sent.
const DefaultMaxMessageSize = 128 << 20

// ErrClosed is returned by calls on a closed driver.
var ErrClosed = errors.New("amqp transport is closed")

var namespaceRE = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,100}$`)

// Driver is the amqp transport's transport.Driver.
type Driver struct {
	ns       string
	exchange string
	maxSize  int
	// queueType is the handler queues' x-queue-type: quorum or classic.
	queueType string
	ret       transport.Retention
	log       *slog.Logger
	redacted  string

	pubConn *conn // publishes, settlements' republishes, administration
	subConn *conn // consumers
	pub     *publisher
	// store keeps publish deduplication records, idempotency claims and
	// shared rate-limit windows (the store= parameter); nil without one.
	store *sidestore.Store

	mu       sync.Mutex
	declared map[string]bool // queues declared through this driver
	subs     map[*subscription]struct{}
	handlers map[string]string // handler name -> pattern, subscribed here
	closed   bool

	ctx    context.Context
	cancel context.CancelFunc
}

// Open connects to RabbitMQ. The URL is
// amqp[s]://user:password@host:port/vhost?namespace=NAME&max_message_size=N;
// see the package documentation.
func Open(ctx context.Context, rawURL string, cfg transport.Config) (transport.Driver, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, fmt.Errorf("amqp: cannot parse the URL: %v", redactErr(err))
	}
	d := &Driver{
		ns:        DefaultNamespace,
		maxSize:   DefaultMaxMessageSize,
		queueType: "quorum",
		ret:       cfg.Retention.Resolve(),
		log:       cfg.Logger,
		declared:  map[string]bool{},
		subs:      map[*subscription]struct{}{},
		handlers:  map[string]string{},
	}
	if d.log == nil {
		d.log = slog.New(slog.DiscardHandler)
	}
	q := u.Query()
	storeURL := ""
	if q.Has("store") && q.Has("store_env") {
		return nil, errors.New("amqp: URL parameters store= and store_env= both given; give one")
	}
	for k, vs := range q {
		v := vs[len(vs)-1]
		switch k {
		case "namespace":
			if !namespaceRE.MatchString(v) {
				return nil, fmt.Errorf("amqp: namespace %q: use 1-100 letters, digits, '.', '_' or '-'", v)
			}
			d.ns = v
		case "queue_type":
			if v != "quorum" && v != "classic" {
				return nil, fmt.Errorf("amqp: queue_type %q: want quorum (replicated, the default) or classic (faster to consume, one node)", v)
			}
			d.queueType = v
		case "max_message_size":
			n, err := strconv.Atoi(v)
			if err != nil || n <= 0 {
				return nil, fmt.Errorf("amqp: max_message_size %q: want a positive number of bytes (the broker's max_message_size)", v)
			}
			d.maxSize = n
		case "store", "store_env":
			if storeURL, err = storeParam(k, v); err != nil {
				return nil, err
			}
		default:
			return nil, fmt.Errorf("amqp: unknown URL parameter %q (known: namespace, queue_type, max_message_size, store, store_env)", k)
		}
	}
	if cfg.MaxMessageSize > 0 && cfg.MaxMessageSize < d.maxSize {
		d.maxSize = cfg.MaxMessageSize
	}
	u.RawQuery = ""
	dialURL := u.String()
	d.redacted = u.Redacted()
	d.exchange = d.ns + ".events"
	d.ctx, d.cancel = context.WithCancel(context.Background())

	var tlsCfg *tls.Config
	if u.Scheme == "amqps" {
		tlsCfg = &tls.Config{ServerName: u.Hostname(), MinVersion: tls.VersionTLS12}
	}
	d.pubConn, err = dialConn(ctx, d, dialURL, tlsCfg, "publish")
	if err != nil {
		d.cancel()
		return nil, err
	}
	d.subConn, err = dialConn(ctx, d, dialURL, tlsCfg, "consume")
	if err != nil {
		d.pubConn.close()
		d.cancel()
		return nil, err
	}
	d.pub = newPublisher(d)
	if err := d.admin(ctx, func(ch *amqp.Channel) error {
		return ch.ExchangeDeclare(d.exchange, "topic", true, false, false, false, nil)
	}); err != nil {
		d.Close()
		return nil, fmt.Errorf("amqp: declaring exchange %q on %s: %w", d.exchange, d.redacted, err)
	}
	if storeURL != "" {
		d.store, err = sidestore.Open(ctx, "amqp", "store", storeURL, d.ns, cfg)
		if err != nil {
			d.Close()
			return nil, err
		}
		return &StoreDriver{Driver: d}, nil
	}
	return d, nil
}

// Name implements transport.Driver.
func (d *Driver) Name() string { return "amqp" }

// Advice implements transport.Advisor: publish deduplication and
// idempotency claims need a side store (store=).
func (d *Driver) Advice(option string) string { return sidestore.Advice(option) }

// Capabilities implements transport.Driver.
func (d *Driver) Capabilities() transport.Capabilities {
	c := transport.Capabilities{Durable: true, Delay: true, Ephemeral: true}
	if d.store != nil {
		c.Dedup = true
		c.SharedRateLimit = d.store.SharedRateLimit()
	}
	return c
}

// Close implements transport.Driver.
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
		s.Close()
	}
	d.cancel()
	if d.pub != nil {
		d.pub.close()
	}
	d.subConn.close()
	d.pubConn.close()
	if d.store != nil {
		return d.store.Close()
	}
	return nil
}

func (d *Driver) isClosed() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.closed
}

// Queue names.
func (d *Driver) queueName(handler string) string { return d.ns + ".h." + handler }
func (d *Driver) deadName(handler string) string  { return d.ns + ".dead." + handler }
func (d *Driver) delayName(handler string, ttl time.Duration) string {
	return d.ns + ".delay." + handler + "." + strconv.FormatInt(ttl.Milliseconds(), 10)
}

// admin runs fn on a fresh channel of the publish connection, closing it
// afterwards. A channel error (404, 406) closes only that channel.
func (d *Driver) admin(ctx context.Context, fn func(ch *amqp.Channel) error) error {
	c, err := d.pubConn.get(ctx)
	if err != nil {
		return err
	}
	ch, err := c.Channel()
	if err != nil {
		return fmt.Errorf("amqp: opening a channel: %w", err)
	}
	done := make(chan error, 1)
	go func() { done <- fn(ch) }()
	select {
	case err = <-done:
	case <-ctx.Done():
		ch.Close()
		return ctx.Err()
	}
	if !ch.IsClosed() {
		ch.Close()
	}
	return err
}

// declareOnce declares a queue with args unless this driver already did.
// A queue that exists with other arguments is a clear error.
func (d *Driver) declareOnce(ctx context.Context, name string, args amqp.Table, durable, autoDelete bool) error {
	d.mu.Lock()
	done := d.declared[name]
	d.mu.Unlock()
	if done {
		return nil
	}
	err := d.admin(ctx, func(ch *amqp.Channel) error {
		_, err := ch.QueueDeclare(name, durable, autoDelete, false, false, args)
		return err
	})
	if err != nil {
		return declareErr(name, err)
	}
	d.mu.Lock()
	d.declared[name] = true
	d.mu.Unlock()
	if declareHook != nil {
		declareHook(d.ns, name)
	}
	return nil
}

// declareHook, set by tests, learns every queue declared, to delete it.
var declareHook func(ns, queue string)

// declareKeeping declares a history or dead-letter queue whose arguments
// carry retention limits. When the queue exists with other limits (the
// retention changed since it was declared), it keeps its own, with a
// warning: AMQP cannot change a queue's arguments.
func (d *Driver) declareKeeping(ctx context.Context, name string, args amqp.Table, durable bool) error {
	err := d.declareOnce(ctx, name, args, durable, false)
	var ae *amqp.Error
	if err == nil || !errors.As(err, &ae) || ae.Code != amqp.PreconditionFailed {
		return err
	}
	perr := d.admin(ctx, func(ch *amqp.Channel) error {
		_, err := ch.QueueDeclarePassive(name, durable, false, false, false, nil)
		return err
	})
	if perr != nil {
		return err
	}
	d.log.Warn("amqp: queue exists with other retention limits and keeps them; delete it (rabbitmqctl delete_queue) or apply a policy to change them",
		"queue", name, "broker", ae.Reason)
	d.mu.Lock()
	d.declared[name] = true
	d.mu.Unlock()
	return nil
}

func (d *Driver) forget(names ...string) {
	d.mu.Lock()
	for _, n := range names {
		delete(d.declared, n)
	}
	d.mu.Unlock()
}

func declareErr(name string, err error) error {
	var ae *amqp.Error
	if errors.As(err, &ae) && ae.Code == amqp.PreconditionFailed {
		return fmt.Errorf("amqp: queue %q exists with other arguments (%s); delete it (rabbitmqctl delete_queue %s) or use another namespace: %w", name, ae.Reason, name, err)
	}
	return fmt.Errorf("amqp: declaring queue %q: %w", name, err)
}

// redactErr removes credentials a url.Error may carry.
func redactErr(err error) string {
	var ue *url.Error
	if errors.As(err, &ue) {
		if u, perr := url.Parse(ue.URL); perr == nil {
			ue.URL = u.Redacted()
		} else {
			ue.URL = "(redacted)"
		}
		return ue.Error()
	}
	return err.Error()
}

// conn is one AMQP connection that reconnects with backoff when lost.
type conn struct {
	d    *Driver
	url  string
	tls  *tls.Config
	role string

	mu      sync.Mutex
	cur     *amqp.Connection
	gen     uint64
	ready   chan struct{} // closed while cur is usable
	blocked *amqp.Blocking
	unblock chan struct{} // closed when the block lifts
	closed  bool
}

func dialConn(ctx context.Context, d *Driver, rawURL string, tlsCfg *tls.Config, role string) (*conn, error) {
	c := &conn{d: d, url: rawURL, tls: tlsCfg, role: role, ready: make(chan struct{})}
	ac, err := c.dial(ctx)
	if err != nil {
		return nil, err
	}
	c.install(ac)
	return c, nil
}

func (c *conn) dial(ctx context.Context) (*amqp.Connection, error) {
	cfg := amqp.Config{
		Heartbeat:       10 * time.Second,
		TLSClientConfig: c.tls,
		Properties:      amqp.Table{"connection_name": "ripple " + c.d.ns + " " + c.role},
	}
	type res struct {
		c   *amqp.Connection
		err error
	}
	ch := make(chan res, 1)
	go func() {
		ac, err := amqp.DialConfig(c.url, cfg)
		ch <- res{ac, err}
	}()
	select {
	case r := <-ch:
		if r.err != nil {
			return nil, dialErr(c.d.redacted, r.err)
		}
		return r.c, nil
	case <-ctx.Done():
		go func() {
			if r := <-ch; r.c != nil {
				r.c.Close()
			}
		}()
		return nil, fmt.Errorf("amqp: connecting to %s: %w", c.d.redacted, ctx.Err())
	}
}

func dialErr(where string, err error) error {
	var ae *amqp.Error
	if errors.As(err, &ae) {
		switch ae.Code {
		case amqp.AccessRefused:
			return fmt.Errorf("amqp: %s refused the credentials (check the user and password in the URL): %w", where, err)
		case amqp.NotAllowed:
			return fmt.Errorf("amqp: %s refused the virtual host (check that it exists and the user may use it): %w", where, err)
		}
	}
	if errors.Is(err, amqp.ErrCredentials) {
		return fmt.Errorf("amqp: %s refused the credentials (check the user and password in the URL): %w", where, err)
	}
	if errors.Is(err, amqp.ErrVhost) {
		return fmt.Errorf("amqp: %s refused the virtual host (check that it exists and the user may use it): %w", where, err)
	}
	return fmt.Errorf("amqp: connecting to %s: %v", where, redactErr(err))
}

func (c *conn) install(ac *amqp.Connection) {
	closes := ac.NotifyClose(make(chan *amqp.Error, 1))
	blocks := ac.NotifyBlocked(make(chan amqp.Blocking, 4))
	c.mu.Lock()
	c.cur = ac
	c.gen++
	c.blocked = nil
	close(c.ready)
	c.mu.Unlock()
	go func() {
		for b := range blocks {
			c.mu.Lock()
			if b.Active {
				bb := b
				c.blocked = &bb
				c.unblock = make(chan struct{})
				c.d.log.Warn("amqp: the broker blocked publishing (resource alarm)", "reason", b.Reason)
			} else if c.blocked != nil {
				c.blocked = nil
				close(c.unblock)
			}
			c.mu.Unlock()
		}
	}()
	go c.watch(ac, closes)
}

// watch waits for the connection to close and reconnects with backoff.
func (c *conn) watch(ac *amqp.Connection, closes chan *amqp.Error) {
	err := <-closes
	c.mu.Lock()
	if c.cur == ac {
		c.ready = make(chan struct{})
		if c.blocked != nil {
			c.blocked = nil
			close(c.unblock)
		}
	}
	closed := c.closed
	c.mu.Unlock()
	if closed || err == nil {
		return
	}
	c.d.log.Warn("amqp: connection lost; reconnecting", "role", c.role, "err", err)
	backoff := 50 * time.Millisecond
	for {
		select {
		case <-c.d.ctx.Done():
			return
		case <-time.After(backoff):
		}
		ctx, cancel := context.WithTimeout(c.d.ctx, 10*time.Second)
		nac, err := c.dial(ctx)
		cancel()
		if err == nil {
			c.mu.Lock()
			if c.closed {
				c.mu.Unlock()
				nac.Close()
				return
			}
			c.mu.Unlock()
			c.install(nac)
			c.d.log.Info("amqp: reconnected", "role", c.role)
			return
		}
		backoff = min(backoff*2, 3*time.Second)
	}
}

// get returns the current connection, waiting within ctx for a reconnect.
func (c *conn) get(ctx context.Context) (*amqp.Connection, error) {
	for {
		c.mu.Lock()
		closed, ready, cur := c.closed, c.ready, c.cur
		c.mu.Unlock()
		if closed {
			return nil, ErrClosed
		}
		select {
		case <-ready:
			if !cur.IsClosed() {
				return cur, nil
			}
			// Closed but watch has not noticed yet.
			select {
			case <-ctx.Done():
				return nil, fmt.Errorf("amqp: waiting for the connection to %s: %w", c.d.redacted, ctx.Err())
			case <-time.After(5 * time.Millisecond):
			}
		case <-ctx.Done():
			return nil, fmt.Errorf("amqp: waiting for the connection to %s to come back: %w", c.d.redacted, ctx.Err())
		case <-c.d.ctx.Done():
			return nil, ErrClosed
		}
	}
}

// waitUnblocked returns once the broker does not block publishing, or
// an error wrapping ErrStorageFull when ctx ends first.
func (c *conn) waitUnblocked(ctx context.Context) error {
	c.mu.Lock()
	b, ch := c.blocked, c.unblock
	c.mu.Unlock()
	if b == nil {
		return nil
	}
	select {
	case <-ch:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("amqp: the broker blocks publishing (%s: a memory or disk alarm; free resources or raise the watermark); nothing was sent: %w (%w)", b.Reason, transport.ErrStorageFull, ctx.Err())
	}
}

func (c *conn) close() {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	c.closed = true
	cur := c.cur
	c.mu.Unlock()
	if cur != nil {
		cur.Close()
	}
}

// String keeps credentials out of any formatting of the driver.
func (d *Driver) String() string { return "amqp transport " + d.redacted + " namespace " + d.ns }

var _ fmt.Stringer = (*Driver)(nil)

func isNotFound(err error) bool {
	var ae *amqp.Error
	return errors.As(err, &ae) && ae.Code == amqp.NotFound
}
