package nats

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/ripplehq/ripple/transport"
)

func init() {
	transport.Register("nats", Open)
	transport.Register("tls", Open)
}

// DefaultPrefix is the namespace used when the URL names none.
const DefaultPrefix = "ripple"

// publishTimeout bounds the wait for a stream's acknowledgement when the
// caller's context has no deadline.
const publishTimeout = 15 * time.Second

// ErrClosed is returned by calls on a closed driver or subscription.
var ErrClosed = errors.New("nats transport is closed")

// Header names Ripple writes on the messages it stores.
const (
	hdrEnvelope  = "Ripple-Envelope"  // JSON envelope: id, type, time, key, attrs
	hdrPublished = "Ripple-Published" // when the original was stored (copies)
	hdrBase      = "Ripple-Base"      // attempts used before this copy
	hdrFirst     = "Ripple-First"     // first delivery of the original (copies)
	hdrError     = "Ripple-Error"     // JSON-quoted handler error (dead letters)
	hdrAttempts  = "Ripple-Attempts"  // attempts made (dead letters)
	hdrDeadAt    = "Ripple-Dead-At"   // when the message was dead-lettered
	hdrDue       = "Ripple-Due"       // due time beyond scheduleHorizon
	hdrStored    = "Ripple-Stored"    // sequence of the stored event's copy (ids stream)
	hdrSchedule  = "Nats-Schedule"
	hdrTarget    = "Nats-Schedule-Target"
)

// envelope is the part of a Message that travels in hdrEnvelope.
type envelope struct {
	ID    string            `json:"id"`
	Type  string            `json:"type"`
	Time  time.Time         `json:"time"`
	Key   string            `json:"key,omitempty"`
	Attrs map[string]string `json:"attrs,omitempty"`
}

// Driver is the nats transport's transport.Driver.
type Driver struct {
	nc       *nats.Conn
	js       jetstream.JetStream
	prefix   string
	replicas int
	history  jetstream.StorageType
	// replicasSet and historySet: the URL said replicas= / history=;
	// otherwise an existing namespace keeps what it has.
	replicasSet, historySet bool
	// raw is the retention as the bus gave it: zero fields were not set,
	// so an existing namespace keeps its own for them.
	raw     transport.Retention
	ret     transport.Retention
	maxSize int
	log     *slog.Logger

	events jetstream.Stream
	done   jetstream.Stream // nil when completed history is kept for no time
	dead   jetstream.Stream // nil when dead letters are kept for no time
	ids    jetstream.Stream // copies of events with caller-chosen ids
	claims jetstream.KeyValue
	state  jetstream.KeyValue

	mu     sync.Mutex
	closed bool
	subs   map[*subscription]struct{}
	// ephemeral counts open receivers of each ephemeral subscription.
	ephemeral map[string]int
}

// options are what a URL says besides the server address.
type options struct {
	servers  []string
	prefix   string
	replicas int
	timeout  time.Duration
	tls      bool
	tlsCA    string
	redacted string
	// history is the storage of the completed-history stream.
	history jetstream.StorageType
	// replicasSet and historySet: the URL gave replicas= / history=.
	replicasSet, historySet bool
}

// Open opens a driver for a nats:// or tls:// URL. It connects, checks that
// the server runs JetStream, and creates or updates the namespace's streams,
// consumers and key-value buckets before it returns.
func Open(ctx context.Context, rawURL string, cfg transport.Config) (transport.Driver, error) {
	o, err := parseURL(rawURL)
	if err != nil {
		return nil, err
	}
	log := cmp.Or(cfg.Logger, slog.Default()).With("transport", "nats", "prefix", o.prefix)
	copts := []nats.Option{
		nats.Name("ripple"),
		nats.Timeout(o.timeout),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250 * time.Millisecond),
		nats.RetryOnFailedConnect(false),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				log.Warn("nats: disconnected; reconnecting", "err", err)
			}
		}),
		nats.ReconnectHandler(func(*nats.Conn) { log.Info("nats: reconnected") }),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			log.Warn("nats: asynchronous error", "err", err)
		}),
	}
	if o.tls {
		copts = append(copts, nats.Secure())
	}
	if o.tlsCA != "" {
		copts = append(copts, nats.RootCAs(o.tlsCA))
	}
	nc, err := nats.Connect(strings.Join(o.servers, ","), copts...)
	if err != nil {
		hint := "check that nats-server runs there (with -js) and that the URL's host, port and credentials are right"
		if strings.Contains(err.Error(), "x509") || strings.Contains(err.Error(), "tls") {
			hint = "the server's TLS certificate was not accepted: give the certificate authority that signed it with tls_ca=FILE (PEM), and reach the server by a name or address the certificate lists"
		}
		return nil, fmt.Errorf("nats: cannot connect to %s: %w; %s", o.redacted, err, hint)
	}
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncTimeout(publishTimeout), jetstream.WithDefaultTimeout(o.timeout))
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("nats: %s: %w", o.redacted, err)
	}
	ret := cfg.Retention.Resolve()
	d := &Driver{
		nc: nc, js: js, prefix: o.prefix, replicas: o.replicas, history: o.history, ret: ret,
		replicasSet: o.replicasSet, historySet: o.historySet, raw: cfg.Retention,
		maxSize: cfg.MaxMessageSize, log: log,
		subs: map[*subscription]struct{}{}, ephemeral: map[string]int{},
	}
	if err := d.setup(ctx, o.redacted); err != nil {
		nc.Close()
		return nil, err
	}
	return d, nil
}

// parseURL reads a nats:// or tls:// URL.
func parseURL(raw string) (options, error) {
	o := options{prefix: DefaultPrefix, replicas: 1, timeout: 5 * time.Second, history: jetstream.FileStorage}
	u, err := url.Parse(raw)
	if err != nil {
		return o, fmt.Errorf("nats: cannot parse the URL: %w; write it as nats://[user:password@]host:port[/prefix][?params]", redactErr(err))
	}
	o.redacted = u.Redacted()
	if u.User != nil {
		if _, has := u.User.Password(); !has {
			// A token: show that there was one, not what it is.
			r := *u
			r.User = url.User("xxxxx")
			o.redacted = r.String()
		}
	}
	scheme := strings.ToLower(u.Scheme)
	if scheme != "nats" && scheme != "tls" {
		return o, fmt.Errorf("nats: URL %s has scheme %q; use nats:// or tls://", o.redacted, u.Scheme)
	}
	if u.Host == "" {
		return o, fmt.Errorf("nats: URL %s has no host; write it as nats://host:4222", o.redacted)
	}
	o.tls = scheme == "tls"
	if p := strings.Trim(u.Path, "/"); p != "" {
		o.prefix = p
	}
	q := u.Query()
	for k, vs := range q {
		v := vs[len(vs)-1]
		switch k {
		case "prefix":
			o.prefix = v
		case "replicas":
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 || n > 5 {
				return o, fmt.Errorf("nats: URL %s: replicas=%q is not a number from 1 to 5", o.redacted, v)
			}
			o.replicas = n
			o.replicasSet = true
		case "timeout":
			t, err := time.ParseDuration(v)
			if err != nil || t <= 0 {
				return o, fmt.Errorf("nats: URL %s: timeout=%q is not a positive duration such as 5s", o.redacted, v)
			}
			o.timeout = t
		case "tls":
			b, err := strconv.ParseBool(v)
			if err != nil {
				return o, fmt.Errorf("nats: URL %s: tls=%q is not true or false", o.redacted, v)
			}
			o.tls = o.tls || b
		case "tls_ca":
			o.tlsCA = v
			o.tls = true
		case "history":
			switch v {
			case "file":
				o.history = jetstream.FileStorage
			case "memory":
				o.history = jetstream.MemoryStorage
			default:
				return o, fmt.Errorf("nats: URL %s: history=%q must be file or memory", o.redacted, v)
			}
			o.historySet = true
		case "servers":
			for s := range strings.SplitSeq(v, ",") {
				if s = strings.TrimSpace(s); s != "" {
					o.servers = append(o.servers, s)
				}
			}
		default:
			return o, fmt.Errorf("nats: URL %s has unknown parameter %q; known: prefix, replicas, history, timeout, tls, tls_ca, servers", o.redacted, k)
		}
	}
	if !validPrefix(o.prefix) {
		return o, fmt.Errorf("nats: URL %s: prefix %q must be 1 to 64 characters of [A-Za-z0-9_-]", o.redacted, o.prefix)
	}
	// The first server carries the URL's credentials; nats.go uses them
	// for the other servers of the list too.
	first := url.URL{Scheme: "nats", User: u.User, Host: u.Host}
	if o.tls {
		first.Scheme = "tls"
	}
	seeds := []string{first.String()}
	for _, s := range o.servers {
		if !strings.Contains(s, "://") {
			s = first.Scheme + "://" + s
		}
		seeds = append(seeds, s)
	}
	o.servers = seeds
	return o, nil
}

func redactErr(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return errors.New(ue.Err.Error())
	}
	return err
}

func validPrefix(p string) bool {
	if p == "" || len(p) > 64 {
		return false
	}
	for _, c := range p {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// Names of the namespace's JetStream objects.
func (d *Driver) eventsStream() string { return "ripple-" + d.prefix + "-events" }
func (d *Driver) doneStream() string   { return "ripple-" + d.prefix + "-done" }
func (d *Driver) deadStream() string   { return "ripple-" + d.prefix + "-dlq" }
func (d *Driver) idsStream() string    { return "ripple-" + d.prefix + "-ids" }
func (d *Driver) claimsBucket() string { return "ripple-" + d.prefix + "-claims" }
func (d *Driver) stateBucket() string  { return "ripple-" + d.prefix + "-state" }

// schedulerConsumer is the consumer that keeps scheduled messages stored
// in the interest-retention events stream until the server fires them.
const schedulerConsumer = "scheduler"

// Subjects.
func (d *Driver) eventSubject(typ string) string   { return d.prefix + ".ev." + typ }
func (d *Driver) requeueSubject(tok string) string { return d.prefix + ".rq." + tok }
func (d *Driver) doneSubject(tok string) string    { return d.prefix + ".done." + tok }
func (d *Driver) deadSubject(tok string) string    { return d.prefix + ".dlq." + tok }

// idSubject is the subject of the copies of events with m's source and
// id: a hash of its identity key, which any bytes may make up.
func (d *Driver) idSubject(m *transport.Message) string {
	sum := sha256.Sum256([]byte(transport.IdentityKey(m.Source(), m.ID)))
	return d.prefix + ".id." + hex.EncodeToString(sum[:])
}

// copyMargin is how much longer than the dedup window a copy is kept: it
// is written just before its event, whose dedup entry then lasts the
// window.
const copyMargin = time.Minute

// scheduleSubject is the subject of one scheduled message; its target is
// "ev.TYPE" or "rq.TOKEN", so that Stats can count what is delayed for
// whom.
func (d *Driver) scheduleSubject(target string) string {
	return d.prefix + ".sched." + nats.NewInbox()[len(nats.InboxPrefix):] + "." + target
}

// setup creates or updates the namespace's streams and buckets.
func (d *Driver) setup(ctx context.Context, where string) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if _, err := d.js.AccountInfo(ctx); err != nil {
		if errors.Is(err, jetstream.ErrJetStreamNotEnabled) || errors.Is(err, jetstream.ErrJetStreamNotEnabledForAccount) {
			return fmt.Errorf("nats: the server at %s does not run JetStream: start nats-server with -js (and a store directory, -sd DIR), or enable jetstream for this account", where)
		}
		return fmt.Errorf("nats: cannot reach JetStream at %s: %w; check that the server runs with -js", where, err)
	}
	dedup := d.ret.DedupWindow
	if dedup < 100*time.Millisecond {
		dedup = 100 * time.Millisecond
	}
	var err error
	d.events, err = d.ensureStream(ctx, jetstream.StreamConfig{
		Name:              d.eventsStream(),
		Description:       "Ripple events of namespace " + d.prefix,
		Subjects:          []string{d.prefix + ".ev.>", d.prefix + ".rq.>", d.prefix + ".sched.>"},
		Retention:         jetstream.InterestPolicy,
		Storage:           jetstream.FileStorage,
		Replicas:          d.replicas,
		Duplicates:        dedup,
		AllowMsgSchedules: true,
		AllowRollup:       true,
		Discard:           jetstream.DiscardOld,
	}, func(old, cfg *jetstream.StreamConfig) {
		if d.raw.DedupWindow == 0 {
			cfg.Duplicates = old.Duplicates
		}
	})
	if err != nil {
		return err
	}
	// The events stream's window, which a bus with default retention
	// keeps from the namespace.
	window := d.events.CachedInfo().Config.Duplicates
	d.ids, err = d.ensureStream(ctx, jetstream.StreamConfig{
		Name:        d.idsStream(),
		Description: "Ripple copies of events published with their own ids, for duplicate publishes, of namespace " + d.prefix,
		Subjects:    []string{d.prefix + ".id.>"},
		Retention:   jetstream.LimitsPolicy,
		Storage:     jetstream.FileStorage,
		Replicas:    d.replicas,
		MaxAge:      window + copyMargin,
		Duplicates:  time.Second,
	}, func(_, _ *jetstream.StreamConfig) {})
	if err != nil {
		return err
	}
	if d.ret.CompletedCount > 0 && d.ret.CompletedAge > 0 {
		d.done, err = d.ensureStream(ctx, jetstream.StreamConfig{
			Name:              d.doneStream(),
			Description:       "Ripple completed history of namespace " + d.prefix,
			Subjects:          []string{d.prefix + ".done.>"},
			Retention:         jetstream.LimitsPolicy,
			Storage:           d.history,
			Replicas:          d.replicas,
			MaxMsgsPerSubject: int64(d.ret.CompletedCount),
			MaxAge:            max(d.ret.CompletedAge, 100*time.Millisecond),
		}, func(old, cfg *jetstream.StreamConfig) {
			if d.raw.CompletedCount == 0 {
				cfg.MaxMsgsPerSubject = old.MaxMsgsPerSubject
			}
			if d.raw.CompletedAge == 0 {
				cfg.MaxAge = old.MaxAge
			}
			if !d.historySet {
				cfg.Storage = old.Storage
			}
		})
		if err != nil {
			return err
		}
	}
	if d.ret.DeadCount > 0 && d.ret.DeadAge > 0 {
		d.dead, err = d.ensureStream(ctx, jetstream.StreamConfig{
			Name:              d.deadStream(),
			Description:       "Ripple dead letters of namespace " + d.prefix,
			Subjects:          []string{d.prefix + ".dlq.>"},
			Retention:         jetstream.LimitsPolicy,
			Storage:           jetstream.FileStorage,
			Replicas:          d.replicas,
			MaxMsgsPerSubject: int64(d.ret.DeadCount),
			MaxAge:            max(d.ret.DeadAge, 100*time.Millisecond),
		}, func(old, cfg *jetstream.StreamConfig) {
			if d.raw.DeadCount == 0 {
				cfg.MaxMsgsPerSubject = old.MaxMsgsPerSubject
			}
			if d.raw.DeadAge == 0 {
				cfg.MaxAge = old.MaxAge
			}
		})
		if err != nil {
			return err
		}
	}
	if _, err := d.js.CreateOrUpdateConsumer(ctx, d.eventsStream(), jetstream.ConsumerConfig{
		Durable:       schedulerConsumer,
		Description:   "keeps Ripple's scheduled messages until they fire; never consumed",
		FilterSubject: d.prefix + ".sched.>",
		AckPolicy:     jetstream.AckExplicitPolicy,
		DeliverPolicy: jetstream.DeliverNewPolicy,
	}); err != nil {
		return d.consumerErr(schedulerConsumer, err)
	}
	d.claims, err = d.ensureBucket(ctx, jetstream.KeyValueConfig{
		Bucket:      d.claimsBucket(),
		Description: "Ripple idempotency claims of namespace " + d.prefix,
		TTL:         max(d.ret.DedupWindow, time.Second),
		Storage:     jetstream.FileStorage,
		Replicas:    d.replicas,
	}, d.raw.DedupWindow == 0)
	if err != nil {
		return err
	}
	d.state, err = d.ensureBucket(ctx, jetstream.KeyValueConfig{
		Bucket:      d.stateBucket(),
		Description: "Ripple counters and rate limits of namespace " + d.prefix,
		Storage:     jetstream.FileStorage,
		Replicas:    d.replicas,
	}, false)
	if err != nil {
		return err
	}
	return nil
}

// ensureStream creates a stream or brings an existing one to cfg. For an
// existing stream, keep copies into cfg what the bus did not ask for
// (retention left at its defaults), and the replicas unless the URL set
// them, so that a tool opening the namespace with defaults (ripple stats)
// does not change what the application set up.
func (d *Driver) ensureStream(ctx context.Context, cfg jetstream.StreamConfig, keep func(old, cfg *jetstream.StreamConfig)) (jetstream.Stream, error) {
	if old, err := d.js.Stream(ctx, cfg.Name); err == nil {
		oc := old.CachedInfo().Config
		if !d.replicasSet {
			cfg.Replicas = oc.Replicas
		}
		keep(&oc, &cfg)
	}
	if cfg.Duplicates == 0 && cfg.MaxAge > 0 {
		cfg.Duplicates = min(cfg.MaxAge, 2*time.Minute)
	}
	s, err := d.js.CreateOrUpdateStream(ctx, cfg)
	if err == nil {
		return s, nil
	}
	what := "retention " + cfg.Retention.String()
	return nil, fmt.Errorf("nats: stream %s exists with settings Ripple cannot use, or its subjects %v overlap another stream's (%w); Ripple needs it with %s, file storage and subjects %v: delete it (nats stream rm %s) if nothing else uses it, or give Ripple another prefix",
		cfg.Name, cfg.Subjects, err, what, cfg.Subjects, cfg.Name)
}

// ensureBucket creates a key-value bucket or updates an existing one,
// keeping its TTL when keepTTL and its replicas unless the URL set them.
func (d *Driver) ensureBucket(ctx context.Context, cfg jetstream.KeyValueConfig, keepTTL bool) (jetstream.KeyValue, error) {
	if kv, err := d.js.KeyValue(ctx, cfg.Bucket); err == nil {
		if st, err := kv.Status(ctx); err == nil {
			oc := st.Config()
			if !d.replicasSet {
				cfg.Replicas = oc.Replicas
			}
			if keepTTL {
				cfg.TTL = oc.TTL
			}
		}
	}
	kv, err := d.js.CreateOrUpdateKeyValue(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("nats: cannot create or update key-value bucket %s: %w; delete it if something else created it, or use another prefix", cfg.Bucket, err)
	}
	return kv, nil
}

// consumerErr explains a failure to create a consumer.
func (d *Driver) consumerErr(name string, err error) error {
	return fmt.Errorf("nats: cannot create or update consumer %s on stream %s: %w; if another program created a consumer of that name with other settings, delete it (nats consumer rm %s %s) or use another prefix",
		name, d.eventsStream(), err, d.eventsStream(), name)
}

// Name implements transport.Driver.
func (d *Driver) Name() string { return "nats" }

// Capabilities implements transport.Driver.
func (d *Driver) Capabilities() transport.Capabilities {
	return transport.Capabilities{
		Durable:         true,
		Delay:           true,
		Dedup:           true,
		SharedRateLimit: true,
		Ephemeral:       true,
	}
}

// Conn returns the driver's NATS connection, for tools and tests.
func (d *Driver) Conn() *nats.Conn { return d.nc }

// Close implements transport.Driver: it closes the subscriptions still
// open and drains the connection, so that acknowledgements already sent
// reach the server.
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
	ctx, cancel := context.WithTimeout(context.Background(), publishTimeout)
	defer cancel()
	err := d.flush(ctx)
	d.nc.Close()
	if err != nil {
		return fmt.Errorf("nats: completions not confirmed sent at Close (they are delivered again): %w", err)
	}
	return nil
}

// flush waits until the completions recorded in the background (history
// copies and acks) have reached the server.
func (d *Driver) flush(ctx context.Context) error {
	select {
	case <-d.js.PublishAsyncComplete():
	case <-ctx.Done():
		return ctx.Err()
	}
	if d.nc.IsClosed() {
		return nats.ErrConnectionClosed
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, publishTimeout)
		defer cancel()
	}
	return d.nc.FlushWithContext(ctx)
}

func (d *Driver) isClosed() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.closed
}

// token maps a handler name ([a-z0-9_.-]) to a name JetStream accepts in
// consumer names and subject tokens, reversibly: "_" becomes "_u" and "."
// becomes "_d", so distinct handler names never share a token.
func token(handler string) string {
	var b strings.Builder
	for i := 0; i < len(handler); i++ {
		switch c := handler[i]; c {
		case '_':
			b.WriteString("_u")
		case '.':
			b.WriteString("_d")
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}

// handlerOf reverses token.
func handlerOf(tok string) string {
	var b strings.Builder
	for i := 0; i < len(tok); i++ {
		if tok[i] == '_' && i+1 < len(tok) {
			i++
			if tok[i] == 'd' {
				b.WriteByte('.')
			} else {
				b.WriteByte('_')
			}
			continue
		}
		b.WriteByte(tok[i])
	}
	return b.String()
}

// consumerName is the durable consumer of a handler.
func consumerName(handler string) string { return "h-" + token(handler) }

// msgID is the Nats-Msg-Id of a message: its identity key, or a hash of
// it when the key holds bytes a header value cannot.
func msgID(m *transport.Message) string {
	k := transport.IdentityKey(m.Source(), m.ID)
	if strings.ContainsAny(k, "\r\n") || len(k) > 512 {
		sum := sha256.Sum256([]byte(k))
		return "sha256:" + hex.EncodeToString(sum[:])
	}
	return k
}

// encode builds the headers of a message.
func encode(m *transport.Message) (nats.Header, error) {
	env, err := json.Marshal(envelope{ID: m.ID, Type: m.Type, Time: m.Time, Key: m.Key, Attrs: m.Attrs})
	if err != nil {
		return nil, err
	}
	h := nats.Header{}
	h.Set(hdrEnvelope, string(env))
	return h, nil
}

// decode reads a message stored by encode.
func decode(h nats.Header, data []byte) (transport.Message, error) {
	var env envelope
	raw := h.Get(hdrEnvelope)
	if raw == "" {
		return transport.Message{}, fmt.Errorf("message has no %s header: not written by Ripple", hdrEnvelope)
	}
	if err := json.Unmarshal([]byte(raw), &env); err != nil {
		return transport.Message{}, fmt.Errorf("message has a damaged %s header: %v", hdrEnvelope, err)
	}
	return transport.Message{ID: env.ID, Type: env.Type, Time: env.Time, Key: env.Key, Attrs: env.Attrs, Data: data}, nil
}

// copyHeader returns the Ripple headers of h worth keeping on a copy.
func copyHeader(h nats.Header) nats.Header {
	out := nats.Header{}
	for _, k := range []string{hdrEnvelope, hdrPublished, hdrFirst, hdrBase, hdrDue} {
		if v := h.Get(k); v != "" {
			out.Set(k, v)
		}
	}
	return out
}

func formatTime(t time.Time) string { return t.UTC().Format(time.RFC3339Nano) }

func parseTime(s string) time.Time {
	t, _ := time.Parse(time.RFC3339Nano, s)
	return t
}
