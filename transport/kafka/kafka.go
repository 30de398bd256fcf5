package kafka

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/sasl/plain"
	"github.com/twmb/franz-go/pkg/sasl/scram"

	"github.com/ripplehq/ripple/transport"
	"github.com/ripplehq/ripple/transport/sidestore"
)

func init() {
	transport.Register("kafka", Open)
}

// DefaultNamespace is the topic prefix used when the URL has no namespace
// parameter.
const DefaultNamespace = "ripple"

// ErrClosed is returned by calls on a closed driver.
var ErrClosed = errors.New("kafka transport is closed")

// maxTopicLen is the longest topic name Kafka accepts.
const maxTopicLen = 249

var (
	namespaceRE = regexp.MustCompile(`^[a-zA-Z0-9._-]{1,200}$`)
	topicRE     = regexp.MustCompile(`^[a-zA-Z0-9._-]+$`)
)

// options are the parsed URL parameters.
type options struct {
	seeds          []string
	namespace      string
	partitions     int32
	replication    int16
	sessionTimeout time.Duration
	retention      time.Duration
	dialTimeout    time.Duration
	tls            bool
	skipVerify     bool
	mechanism      string
	user, password string
	// store is the URL of the side store (store=, or its older
	// spelling claims=) and storeParam the parameter that named it.
	store, storeParam string
}

// parseURL reads a kafka:// URL.
func parseURL(raw string) (options, error) {
	o := options{
		namespace:      DefaultNamespace,
		partitions:     4,
		replication:    -1,
		sessionTimeout: 6 * time.Second,
		dialTimeout:    10 * time.Second,
	}
	rest, ok := strings.CutPrefix(raw, "kafka://")
	if !ok {
		return o, fmt.Errorf("kafka: URL %s does not start with kafka://", redact(raw))
	}
	// The broker list is not one host, so url.Parse cannot read the
	// authority: split it off by hand.
	end := strings.IndexAny(rest, "/?")
	if end < 0 {
		end = len(rest)
	}
	authority := rest[:end]
	hosts := authority
	if at := strings.LastIndex(authority, "@"); at >= 0 {
		hosts = authority[at+1:]
		ui, err := url.Parse("kafka://" + authority[:at] + "@x")
		if err != nil || ui.User == nil {
			return o, fmt.Errorf("kafka: cannot read the user and password of the URL (%s); percent-encode special characters", redact(raw))
		}
		o.user = ui.User.Username()
		o.password, _ = ui.User.Password()
		o.mechanism = "plain"
	}
	u, err := url.Parse("kafka://x" + rest[end:])
	if err != nil {
		return o, fmt.Errorf("kafka: cannot parse the URL (%s): %w; write it as kafka://HOST:PORT[,HOST:PORT...][?namespace=NAME]", redact(raw), unwrapURLError(err))
	}
	if hosts == "" {
		return o, fmt.Errorf("kafka: the URL names no broker; write it as kafka://HOST:PORT[,HOST:PORT...]")
	}
	for _, h := range strings.Split(hosts, ",") {
		if h == "" {
			return o, fmt.Errorf("kafka: the URL's broker list %q has an empty entry", hosts)
		}
		if _, _, err := net.SplitHostPort(h); err != nil {
			h = net.JoinHostPort(h, "9092")
		}
		o.seeds = append(o.seeds, h)
	}
	if u.Path != "" && u.Path != "/" {
		return o, fmt.Errorf("kafka: the URL has a path %q; Kafka URLs have none (use ?namespace=NAME to separate applications)", u.Path)
	}
	for k, vs := range u.Query() {
		v := vs[len(vs)-1]
		bad := func(why string) error {
			return fmt.Errorf("kafka: URL parameter %s=%q %s", k, v, why)
		}
		switch k {
		case "namespace":
			if !namespaceRE.MatchString(v) {
				return o, bad("is not a valid namespace: use 1 to 200 of a-z A-Z 0-9 . _ -")
			}
			o.namespace = v
		case "partitions":
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 || n > 10000 {
				return o, bad("must be a partition count from 1 to 10000")
			}
			o.partitions = int32(n)
		case "replication":
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 || n > 32 {
				return o, bad("must be a replication factor from 1 to 32 (leave it out for the broker's default)")
			}
			o.replication = int16(n)
		case "session_timeout", "retention", "dial_timeout":
			d, err := time.ParseDuration(v)
			if err != nil || d <= 0 {
				return o, bad("must be a positive duration such as 6s or 168h")
			}
			switch k {
			case "session_timeout":
				o.sessionTimeout = d
			case "retention":
				o.retention = d
			default:
				o.dialTimeout = d
			}
		case "tls", "skip_verify":
			b, err := strconv.ParseBool(v)
			if err != nil {
				return o, bad("must be true or false")
			}
			if k == "tls" {
				o.tls = b
			} else {
				o.skipVerify = b
			}
		case "store", "store_env", "claims", "claims_env":
			param, _ := strings.CutSuffix(k, "_env")
			if o.storeParam != "" {
				return o, fmt.Errorf("kafka: URL parameters %s and %s both name the side store (claims= is the older spelling of store=); give one", o.storeParam, k)
			}
			if param != k {
				name := v
				if v = os.Getenv(name); v == "" {
					return o, fmt.Errorf("kafka: URL parameter %s=%s names an environment variable that is empty or unset; set it to the store's URL", k, name)
				}
			}
			o.store, o.storeParam = v, k
		case "sasl":
			switch strings.ToLower(v) {
			case "plain", "scram-sha-256", "scram-sha-512":
				o.mechanism = strings.ToLower(v)
			default:
				return o, bad("is not a supported SASL mechanism: use plain, scram-sha-256 or scram-sha-512")
			}
		default:
			return o, fmt.Errorf("kafka: unknown URL parameter %q; known: namespace, partitions, replication, retention, session_timeout, dial_timeout, tls, skip_verify, sasl, store, store_env (claims, claims_env)", k)
		}
	}
	if o.mechanism != "" && o.user == "" {
		return o, fmt.Errorf("kafka: sasl=%s needs a user and password in the URL: kafka://USER:PASSWORD@HOST:PORT?sasl=%s", o.mechanism, o.mechanism)
	}
	return o, nil
}

func unwrapURLError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

// redact hides a password in a URL: everything between the scheme's
// colon-slashes and the last @ of the authority.
func redact(raw string) string {
	base, query, hasQuery := strings.Cut(raw, "?")
	if hasQuery {
		query = redactStore(query)
	}
	i := strings.Index(base, "://")
	if i >= 0 {
		rest := base[i+3:]
		auth := rest
		if end := strings.IndexByte(rest, '/'); end >= 0 {
			auth = rest[:end]
		}
		if at := strings.LastIndex(auth, "@"); at >= 0 {
			user := auth[:at]
			if c := strings.Index(user, ":"); c >= 0 {
				user = user[:c] + ":xxxxx"
			}
			base = base[:i+3] + user + rest[at:]
		}
	}
	if hasQuery {
		return base + "?" + query
	}
	return base
}

// redactStore hides the password of a store URL (store=, claims=) in a
// kafka URL's query.
func redactStore(query string) string {
	vs, err := url.ParseQuery(query)
	if err != nil {
		return "(hidden)"
	}
	changed := false
	for _, k := range []string{"store", "claims"} {
		for i, v := range vs[k] {
			if r := sidestore.Redact(v); r != v {
				vs[k][i] = r
				changed = true
			}
		}
	}
	if !changed {
		return query
	}
	return vs.Encode()
}

// Driver is the Kafka transport. It is safe for concurrent use.
type Driver struct {
	opts  options
	cfg   transport.Config
	log   *slog.Logger
	cl    *kgo.Client // producer and admin requests
	adm   *kadm.Client
	base  []kgo.Opt // connection options shared by every client
	topic string    // the namespace's event topic

	mu       sync.Mutex
	closed   bool
	paused   map[string]bool // from the registry topic's pause/ records
	groups   map[string]*group
	known    map[string]bool // topics known to exist
	adminMus map[string]*sync.Mutex

	stopWatch func() // stops the registry watcher
}

var _ interface {
	transport.Driver
	transport.Replayer
	transport.DeadLetterQueue
	transport.Inspector
	transport.Unsubscriber
	transport.Pauser
} = (*Driver)(nil)

// Open opens a kafka:// URL. It connects before it returns and creates the
// namespace's event topic when it does not exist.
func Open(ctx context.Context, rawURL string, cfg transport.Config) (transport.Driver, error) {
	o, err := parseURL(rawURL)
	if err != nil {
		return nil, err
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	cfg.Retention = cfg.Retention.Resolve()
	var store *sidestore.Store
	if o.store != "" {
		// Opened first, so that a wrong store= fails at once, whether or
		// not the brokers answer.
		param, _ := strings.CutSuffix(o.storeParam, "_env")
		if store, err = sidestore.Open(ctx, "kafka", param, o.store, o.namespace, cfg); err != nil {
			return nil, err
		}
	}
	d, err := open(ctx, o, cfg)
	if err != nil {
		if store != nil {
			_ = store.Close()
		}
		return nil, err
	}
	if store != nil {
		return &StoreDriver{Driver: d, store: store}, nil
	}
	return d, nil
}

// open connects to the brokers.
func open(ctx context.Context, o options, cfg transport.Config) (*Driver, error) {
	base := []kgo.Opt{
		kgo.SeedBrokers(o.seeds...),
		kgo.DialTimeout(o.dialTimeout),
		kgo.WithLogger(kgoLogger{cfg.Logger}),
		kgo.MetadataMinAge(250 * time.Millisecond),
		kgo.RetryTimeout(30 * time.Second),
	}
	if o.tls {
		// franz-go sets ServerName to each dialed broker's host.
		base = append(base, kgo.DialTLSConfig(&tls.Config{InsecureSkipVerify: o.skipVerify, MinVersion: tls.VersionTLS12})) //nolint:gosec // skip_verify is the user's explicit choice
	}
	switch o.mechanism {
	case "plain":
		base = append(base, kgo.SASL(plain.Auth{User: o.user, Pass: o.password}.AsMechanism()))
	case "scram-sha-256":
		base = append(base, kgo.SASL(scram.Auth{User: o.user, Pass: o.password}.AsSha256Mechanism()))
	case "scram-sha-512":
		base = append(base, kgo.SASL(scram.Auth{User: o.user, Pass: o.password}.AsSha512Mechanism()))
	}
	prod := append(append([]kgo.Opt(nil), base...),
		kgo.RequiredAcks(kgo.AllISRAcks()),
		kgo.ProducerLinger(0),
		kgo.RecordPartitioner(kgo.StickyKeyPartitioner(nil)),
		kgo.ProducerBatchMaxBytes(int32(min(max(cfg.MaxMessageSize+64<<10, 1<<20), 64<<20))),
	)
	cl, err := kgo.NewClient(prod...)
	if err != nil {
		return nil, fmt.Errorf("kafka: %w", err)
	}
	d := &Driver{
		opts: o, cfg: cfg, log: cfg.Logger, cl: cl, adm: kadm.NewClient(cl), base: base,
		topic:    o.namespace + ".events",
		groups:   map[string]*group{},
		paused:   map[string]bool{},
		known:    map[string]bool{},
		adminMus: map[string]*sync.Mutex{},
	}
	if err := d.ping(ctx); err != nil {
		cl.Close()
		return nil, err
	}
	if err := d.ensureTopics(ctx, d.eventTopicConfig(), d.topic); err != nil {
		cl.Close()
		return nil, err
	}
	if err := d.ensureTopics(ctx, map[string]*string{"cleanup.policy": ptr("compact")}, d.registryTopic()); err != nil {
		cl.Close()
		return nil, err
	}
	if err := d.watchRegistry(); err != nil {
		cl.Close()
		return nil, err
	}
	if r, err := d.Retention(ctx); err == nil {
		d.log.Info("kafka: the event topic keeps events by its own retention", "topic", d.topic, "retention", r.String())
	}
	return d, nil
}

// Retention returns the event topic's retention.ms: how long Kafka keeps
// events, handled or not (-1, returned as a negative duration, keeps them
// forever). KeepCompleted does not change it; the topic's own
// configuration does.
func (d *Driver) Retention(ctx context.Context) (time.Duration, error) {
	rcs, err := d.adm.DescribeTopicConfigs(ctx, d.topic)
	if err != nil {
		return 0, fmt.Errorf("kafka: describing %s: %w", d.topic, err)
	}
	for _, rc := range rcs {
		if rc.Err != nil {
			return 0, fmt.Errorf("kafka: describing %s: %w", d.topic, rc.Err)
		}
		for _, c := range rc.Configs {
			if c.Key == "retention.ms" && c.Value != nil {
				ms, err := strconv.ParseInt(*c.Value, 10, 64)
				if err != nil {
					return 0, fmt.Errorf("kafka: %s has retention.ms %q: %w", d.topic, *c.Value, err)
				}
				return time.Duration(ms) * time.Millisecond, nil
			}
		}
	}
	return 0, fmt.Errorf("kafka: %s reports no retention.ms", d.topic)
}

// watchRegistry follows the registry topic for pause records, so that a
// Pause in any process stops this process's receivers within about a
// second, and for records that remove the entry of a handler running in
// this process, which it writes again (see reassert).
func (d *Driver) watchRegistry() error {
	cl, err := kgo.NewClient(append(append([]kgo.Opt(nil), d.base...),
		kgo.ConsumeTopics(d.registryTopic()),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.FetchMaxWait(200*time.Millisecond))...)
	if err != nil {
		return fmt.Errorf("kafka: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	d.stopWatch = func() {
		cancel()
		<-done
		cl.Close()
	}
	go func() {
		defer close(done)
		for ctx.Err() == nil {
			fs := cl.PollFetches(ctx)
			if fs.IsClientClosed() || ctx.Err() != nil {
				return
			}
			var entries []*kgo.Record
			d.mu.Lock()
			fs.EachRecord(func(r *kgo.Record) {
				if h, ok := strings.CutPrefix(string(r.Key), pausePrefix); ok {
					d.paused[h] = string(r.Value) == "1"
				} else {
					entries = append(entries, r)
				}
			})
			d.mu.Unlock()
			d.reassert(ctx, entries)
			if len(fs.Errors()) > 0 {
				select {
				case <-ctx.Done():
				case <-time.After(time.Second):
				}
			}
		}
	}()
	return nil
}

// pausePrefix starts the registry keys of pause records.
const pausePrefix = "pause/"

func (d *Driver) isPaused(handler string) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.paused[handler]
}

// Pause stops every process's receivers of handler from handing out
// events (within about a second), by a record in the registry topic.
func (d *Driver) Pause(ctx context.Context, handler string) error {
	return d.setPaused(ctx, handler, true)
}

// Resume undoes Pause.
func (d *Driver) Resume(ctx context.Context, handler string) error {
	return d.setPaused(ctx, handler, false)
}

func (d *Driver) setPaused(ctx context.Context, handler string, p bool) error {
	if _, err := d.pattern(ctx, handler); err != nil {
		return err
	}
	v := "0"
	if p {
		v = "1"
	}
	if err := d.produce(ctx, []*kgo.Record{{Topic: d.registryTopic(), Key: []byte(pausePrefix + handler), Value: []byte(v)}}); err != nil {
		return err
	}
	d.mu.Lock()
	d.paused[handler] = p
	g := d.groups[handler]
	d.mu.Unlock()
	if g != nil {
		g.mu.Lock()
		g.broadcast()
		g.mu.Unlock()
	}
	return nil
}

func ptr[T any](v T) *T { return &v }

// ping checks that a broker answers before ctx ends.
func (d *Driver) ping(ctx context.Context) error {
	pctx, cancel := context.WithTimeout(ctx, d.opts.dialTimeout+5*time.Second)
	defer cancel()
	if _, err := d.adm.BrokerMetadata(pctx); err != nil {
		if errors.Is(err, kerr.SaslAuthenticationFailed) || errors.Is(err, kerr.IllegalSaslState) || errors.Is(err, kerr.UnsupportedSaslMechanism) {
			return fmt.Errorf("kafka: the brokers %s refused the URL's user %q with SASL %s: %w; check the user, password and sasl= mechanism", strings.Join(d.opts.seeds, ","), d.opts.user, d.opts.mechanism, err)
		}
		if d.opts.mechanism != "" {
			return fmt.Errorf("kafka: no broker of %s answered with SASL %s as user %q: %w; check the user and password (some brokers end the connection on a wrong one), the sasl= mechanism, tls=, and that the host and port are reachable", strings.Join(d.opts.seeds, ","), d.opts.mechanism, d.opts.user, err)
		}
		return fmt.Errorf("kafka: no broker of %s answered: %w; check that Kafka (or Redpanda) runs there and that the host and port are reachable from this machine", strings.Join(d.opts.seeds, ","), err)
	}
	return nil
}

// Name returns "kafka".
func (d *Driver) Name() string { return "kafka" }

// Advice implements transport.Advisor: publish deduplication and
// idempotency claims need a side store (store=).
func (d *Driver) Advice(option string) string { return sidestore.Advice(option) }

// Capabilities declares what the Kafka transport gives: durable publish,
// delays, per-key order, starting from retained history and ephemeral
// subscriptions; no priority, no publish deduplication and no idempotency
// claims.
func (d *Driver) Capabilities() transport.Capabilities {
	return transport.Capabilities{Durable: true, Delay: true, Ordered: true, StartFrom: true, Ephemeral: true}
}

// Close closes every subscription's consumer and the producer.
func (d *Driver) Close() error {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return nil
	}
	d.closed = true
	gs := make([]*group, 0, len(d.groups))
	for _, g := range d.groups {
		gs = append(gs, g)
	}
	d.mu.Unlock()
	for _, g := range gs {
		g.shutdown()
	}
	if d.stopWatch != nil {
		d.stopWatch()
	}
	d.cl.Close()
	return nil
}

func (d *Driver) isClosed() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.closed
}

// Topic names.
func (d *Driver) registryTopic() string      { return d.opts.namespace + ".subscriptions" }
func (d *Driver) retryTopic(h string) string { return d.opts.namespace + ".retry." + h }
func (d *Driver) deadTopic(h string) string  { return d.opts.namespace + ".dead." + h }
func (d *Driver) groupName(h string) string  { return d.opts.namespace + "." + h }

func (d *Driver) eventTopicConfig() map[string]*string {
	c := map[string]*string{}
	if d.opts.retention > 0 {
		c["retention.ms"] = ptr(strconv.FormatInt(d.opts.retention.Milliseconds(), 10))
	}
	if d.cfg.MaxMessageSize > 0 {
		c["max.message.bytes"] = ptr(strconv.Itoa(max(d.cfg.MaxMessageSize+64<<10, 1<<20)))
	}
	return c
}

// normTopic is a topic name as Kafka compares names for collisions: '.'
// and '_' are the same character in its metric names.
func normTopic(s string) string { return strings.ReplaceAll(s, ".", "_") }

// checkTopicName refuses a name Kafka would reject.
func checkTopicName(name string) error {
	if len(name) > maxTopicLen {
		return fmt.Errorf("kafka: topic name %q is %d characters; Kafka accepts at most %d: use a shorter handler name or namespace", name, len(name), maxTopicLen)
	}
	if !topicRE.MatchString(name) || name == "." || name == ".." {
		return fmt.Errorf("kafka: topic name %q is not valid in Kafka: use only a-z A-Z 0-9 . _ -", name)
	}
	return nil
}

// ensureTopics creates the topics that do not exist yet, refusing names
// Kafka rejects and names that collide with an existing topic once '.'
// and '_' are treated alike.
func (d *Driver) ensureTopics(ctx context.Context, configs map[string]*string, topics ...string) error {
	var missing []string
	d.mu.Lock()
	for _, t := range topics {
		if !d.known[t] {
			missing = append(missing, t)
		}
	}
	d.mu.Unlock()
	if len(missing) == 0 {
		return nil
	}
	for _, t := range missing {
		if err := checkTopicName(t); err != nil {
			return err
		}
	}
	existing, err := d.adm.ListTopics(ctx)
	if err != nil {
		return fmt.Errorf("kafka: listing topics: %w", err)
	}
	var create []string
	for _, t := range missing {
		if _, ok := existing[t]; ok {
			continue
		}
		for name := range existing {
			if name != t && normTopic(name) == normTopic(t) {
				return fmt.Errorf("kafka: topic %q would collide with the existing topic %q (Kafka treats '.' and '_' alike in topic names): rename the handler or use another namespace", t, name)
			}
		}
		create = append(create, t)
	}
	for _, t := range create {
		parts := d.opts.partitions
		if t == d.registryTopic() || strings.HasPrefix(t, d.opts.namespace+".dead.") {
			parts = 1
		}
		resp, err := d.adm.CreateTopic(ctx, parts, d.opts.replication, configs, t)
		if err == nil {
			err = resp.Err
		}
		if err != nil && !errors.Is(err, kerr.TopicAlreadyExists) {
			return fmt.Errorf("kafka: creating topic %q: %w", t, err)
		}
	}
	d.mu.Lock()
	for _, t := range missing {
		d.known[t] = true
	}
	d.mu.Unlock()
	// Wait until the new topics' metadata is visible, so that the first
	// produce or fetch does not race their creation.
	if len(create) > 0 {
		deadline := time.Now().Add(10 * time.Second)
		for time.Now().Before(deadline) {
			md, err := d.adm.Metadata(ctx, create...)
			if err == nil {
				ok := true
				for _, t := range create {
					td, found := md.Topics[t]
					if !found || td.Err != nil || len(td.Partitions) == 0 {
						ok = false
					}
					for _, p := range td.Partitions {
						if p.Leader < 0 {
							ok = false
						}
					}
				}
				if ok {
					break
				}
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(20 * time.Millisecond):
			}
		}
	}
	return nil
}

// forget drops topics from the known set (after deleting them).
func (d *Driver) forget(topics ...string) {
	d.mu.Lock()
	for _, t := range topics {
		delete(d.known, t)
	}
	d.mu.Unlock()
}

// Publish produces messages to the namespace's event topic and returns
// once every broker in the in-sync replica set has them (acks=all).
func (d *Driver) Publish(ctx context.Context, msgs []*transport.Message) error {
	if d.isClosed() {
		return ErrClosed
	}
	now := time.Now()
	recs := make([]*kgo.Record, len(msgs))
	for i, m := range msgs {
		if m.Priority != 0 {
			return fmt.Errorf("kafka: priority is not supported: Kafka delivers a partition in order")
		}
		r := encode(m, d.topic, now)
		if m.Delay > 0 {
			r.Headers = append(r.Headers, kgo.RecordHeader{Key: hDue, Value: []byte(strconv.FormatInt(now.Add(m.Delay).UnixMilli(), 10))})
		}
		recs[i] = r
	}
	return d.produce(ctx, recs)
}

// produce awaits the acknowledgement of every record.
func (d *Driver) produce(ctx context.Context, recs []*kgo.Record) error {
	if len(recs) == 0 {
		return nil
	}
	res := d.cl.ProduceSync(ctx, recs...)
	for _, r := range res {
		if r.Err != nil {
			return produceError(ctx, r.Record, r.Err)
		}
	}
	return nil
}

// produceError explains a failed produce.
func produceError(ctx context.Context, r *kgo.Record, err error) error {
	switch {
	case errors.Is(err, kerr.MessageTooLarge), errors.Is(err, kerr.RecordListTooLarge):
		return fmt.Errorf("kafka: topic %s refused a record of %d bytes as too large: %w; raise the topic's max.message.bytes (and the producer's) or publish smaller events", r.Topic, len(r.Value), err)
	case errors.Is(err, kerr.UnknownTopicOrPartition), errors.Is(err, kerr.UnknownTopicID):
		return fmt.Errorf("kafka: topic %s does not exist (deleted?): %w; reopen the bus to create it again", r.Topic, err)
	case errors.Is(err, kerr.PolicyViolation), errors.Is(err, kerr.NotEnoughReplicas), errors.Is(err, kerr.NotEnoughReplicasAfterAppend):
		return fmt.Errorf("kafka: producing to %s: %w", r.Topic, err)
	case ctx.Err() != nil || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, kgo.ErrRecordTimeout):
		return fmt.Errorf("kafka: producing to %s: %w: %w", r.Topic, transport.ErrOutcomeUnknown, err)
	}
	return fmt.Errorf("kafka: producing to %s: %w", r.Topic, err)
}

// kgoLogger sends franz-go's warnings and errors to Ripple's logger.
type kgoLogger struct{ l *slog.Logger }

func (k kgoLogger) Level() kgo.LogLevel { return kgo.LogLevelWarn }

func (k kgoLogger) Log(level kgo.LogLevel, msg string, keyvals ...any) {
	lv := slog.LevelWarn
	if level == kgo.LogLevelError {
		lv = slog.LevelError
	}
	k.l.Log(context.Background(), lv, "kafka client: "+msg, keyvals...)
}
