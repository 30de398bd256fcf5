package ripple

import (
	"log/slog"
	"math"
	"mime"
	"net/url"
	"strings"
	"time"

	"github.com/ripplehq/ripple/transport"
)

// Defaults. Each option's documentation repeats the default it replaces.
const (
	DefaultConcurrency     = 10
	DefaultMaxAttempts     = 5
	DefaultBackoffMin      = time.Second
	DefaultBackoffMax      = 5 * time.Minute
	DefaultTimeout         = time.Minute
	DefaultMaxEventSize    = 1 << 20
	DefaultShutdownTimeout = 10 * time.Second
	DefaultLease           = 30 * time.Second
)

// ---- Bus options ----

// Option configures a bus in Open or New.
type Option func(*busConfig) error

type busConfig struct {
	logger          *slog.Logger
	source          string
	maxEventSize    int
	shutdownTimeout time.Duration
	keepCompleted   keep
	keepDead        keep
	dedupWindow     time.Duration
	hooks           []any
	outbox          transport.Outbox // see WithOutbox
	// forTransport names the options given that configure the transport,
	// which only Open creates; New refuses them.
	forTransport []string
}

type keep struct {
	count int
	age   time.Duration
}

// WithLogger sets the logger for handler failures, panics and background
// errors. Default: slog.Default().
func WithLogger(l *slog.Logger) Option {
	return func(c *busConfig) error {
		if l == nil {
			return invalidOption("WithLogger(nil); pass slog.Default() or a discarding logger")
		}
		c.logger = l
		return nil
	}
}

// DefaultSource sets the CloudEvents source of events this bus publishes.
// Default: "ripple://" followed by the host name.
func DefaultSource(source string) Option {
	return func(c *busConfig) error {
		if source == "" {
			return invalidOption("DefaultSource(\"\"); a CloudEvents source must not be empty")
		}
		c.source = source
		return nil
	}
}

// MaxEventSize sets the largest event Publish accepts, in bytes: its
// payload and its id, type, key, attributes and headers together.
// Default: 1 MiB, which every transport can carry.
func MaxEventSize(n int) Option {
	return func(c *busConfig) error {
		if n <= 0 {
			return invalidOption("MaxEventSize(%d); the size limit must be positive", n)
		}
		c.maxEventSize = n
		return nil
	}
}

// ShutdownTimeout bounds how long Close waits for in-flight handlers.
// Default: 10 s. Shutdown(ctx) takes its bound from ctx instead.
func ShutdownTimeout(d time.Duration) Option {
	return func(c *busConfig) error {
		if d <= 0 {
			return invalidOption("ShutdownTimeout(%s); the timeout must be positive", d)
		}
		c.shutdownTimeout = d
		return nil
	}
}

// KeepCompleted bounds the history of completed deliveries each handler
// keeps, like BullMQ's removeOnComplete: at most count entries, none older
// than age. Zero for either means the default (1,000 and 24 h, the same on
// every transport); negative values keep nothing.
func KeepCompleted(count int, age time.Duration) Option {
	return func(c *busConfig) error {
		c.keepCompleted = keep{count, age}
		c.forTransport = append(c.forTransport, "KeepCompleted")
		return nil
	}
}

// KeepDead bounds each handler's dead-letter queue, like BullMQ's
// removeOnFail: at most count entries, none older than age. Zero means the
// default (10,000 and 7 days, the same on every transport).
func KeepDead(count int, age time.Duration) Option {
	return func(c *busConfig) error {
		c.keepDead = keep{count, age}
		c.forTransport = append(c.forTransport, "KeepDead")
		return nil
	}
}

// DedupWindow sets how long a published event id is remembered, so that
// publishing the same id again stores nothing. Default: 24 h.
func DedupWindow(d time.Duration) Option {
	return func(c *busConfig) error {
		if d < 0 {
			return invalidOption("DedupWindow(%s); the window must not be negative", d)
		}
		c.dedupWindow = d
		c.forTransport = append(c.forTransport, "DedupWindow")
		return nil
	}
}

// WithHooks adds observers. A hook is any value implementing one or more
// of PublishHook and HandleHook; new hook interfaces can be added without
// breaking existing hooks.
func WithHooks(hooks ...any) Option {
	return func(c *busConfig) error {
		for _, h := range hooks {
			switch h.(type) {
			case PublishHook, HandleHook:
			default:
				return invalidOption("WithHooks: %T implements neither PublishHook nor HandleHook", h)
			}
		}
		c.hooks = append(c.hooks, hooks...)
		return nil
	}
}

// ---- Publish options ----

// PublishOption configures one Publish call.
type PublishOption func(*publishConfig) error

type publishConfig struct {
	id            string
	key           string
	delay         time.Duration
	at            time.Time
	eventTime     time.Time
	subject       string
	dataSchema    string
	priority      int
	setPriority   bool
	headers       map[string]string
	source        string
	version       int
	correlationID string
	causationID   string
	traceParent   string
	contentType   string
}

// WithKey sets the event's partition key. Handlers registered with
// Ordered handle events with the same key one at a time, in publish order.
func WithKey(key string) PublishOption {
	return func(c *publishConfig) error {
		if len(key) > MaxNameLength {
			return invalidOption("WithKey: key is %d bytes; the limit is %d", len(key), MaxNameLength)
		}
		c.key = key
		return nil
	}
}

// WithDelay delivers the event no sooner than d from now.
func WithDelay(d time.Duration) PublishOption {
	return func(c *publishConfig) error {
		if d < 0 {
			return invalidOption("WithDelay(%s); a delay must not be negative", d)
		}
		c.delay = d
		return nil
	}
}

// WithDeliverAt delivers the event no sooner than t. A time in the past
// delivers at once. It does not change the event's Time, which says when
// the event happened (see WithEventTime).
func WithDeliverAt(t time.Time) PublishOption {
	return func(c *publishConfig) error {
		if t.IsZero() {
			return invalidOption("WithDeliverAt(zero time); pass the time to deliver at")
		}
		c.at = t
		return nil
	}
}

// WithEventTime sets the event's Time, when it happened (CloudEvents
// "time"), such as the time a payment cleared when the event is published
// later. Default: the time of the Publish call. It does not delay delivery
// (see WithDeliverAt); HandleResult.Latency, and so the
// ripple_event_latency_seconds metric, run from this time.
func WithEventTime(t time.Time) PublishOption {
	return func(c *publishConfig) error {
		if t.IsZero() {
			return invalidOption("WithEventTime(zero time); pass when the event happened, or leave the option out for now")
		}
		c.eventTime = t
		return nil
	}
}

// WithSubject sets what the event is about within its source (CloudEvents
// "subject"), such as the id of the user or the path of the file it
// concerns, so that consumers can filter on it without decoding the data.
func WithSubject(subject string) PublishOption {
	return func(c *publishConfig) error {
		if subject == "" {
			return invalidOption("WithSubject(\"\"); a subject must not be empty; leave the option out for none")
		}
		c.subject = subject
		return nil
	}
}

// WithDataSchema sets the URI of the schema the payload adheres to
// (CloudEvents "dataschema"), such as
// "https://example.com/schemas/user-signup/v2.json". It must be an
// absolute URI.
func WithDataSchema(uri string) PublishOption {
	return func(c *publishConfig) error {
		u, err := url.Parse(uri)
		if uri == "" || err != nil || !u.IsAbs() {
			return invalidOption("WithDataSchema(%q); pass an absolute URI such as \"https://example.com/schemas/order-placed.json\"", uri)
		}
		c.dataSchema = uri
		return nil
	}
}

// WithPriority orders waiting events: a handler takes higher priorities
// first. Default 0; negative values sink below it.
func WithPriority(p int) PublishOption {
	return func(c *publishConfig) error {
		if p > math.MaxInt32 || p < math.MinInt32 {
			return invalidOption("WithPriority(%d); priority must fit in 32 bits", p)
		}
		c.priority = p
		c.setPriority = true
		return nil
	}
}

// WithID sets the event id. Publishing an id the transport still
// remembers (see DedupWindow) stores nothing, so a retried publish with the
// same id is safe.
func WithID(id string) PublishOption {
	return func(c *publishConfig) error {
		if id == "" || len(id) > MaxNameLength {
			return invalidOption("WithID(%q); an id must be 1 to %d bytes", id, MaxNameLength)
		}
		for _, r := range id {
			if r < 0x21 || r > 0x7e {
				return invalidOption("WithID(%q); an id may hold only printable ASCII without spaces", id)
			}
		}
		c.id = id
		return nil
	}
}

// WithHeader sets an extension attribute. Names follow CloudEvents:
// lowercase a-z and 0-9, at most 20 characters, not a reserved attribute.
func WithHeader(name, value string) PublishOption {
	return func(c *publishConfig) error {
		if err := validateHeaderName(name); err != nil {
			return err
		}
		if c.headers == nil {
			c.headers = make(map[string]string)
		}
		c.headers[name] = value
		return nil
	}
}

var reservedAttrs = map[string]bool{
	"id": true, "type": true, "source": true, "time": true, "specversion": true,
	"datacontenttype": true, "dataschema": true, "subject": true, "data": true,
	"data_base64": true, attrDataVersion: true, attrCorrelationID: true,
	attrCausationID: true, "partitionkey": true, attrTraceParent: true,
}

// attrOptions names the option that sets each reserved attribute a
// publisher may set.
var attrOptions = map[string]string{
	"id": "WithID", "source": "WithSource", "time": "WithEventTime",
	"datacontenttype": "WithContentType", "dataschema": "WithDataSchema",
	"subject": "WithSubject", "data": "the payload argument of Publish",
	"data_base64": "a []byte payload", attrDataVersion: "WithVersion",
	attrCorrelationID: "WithCorrelationID", attrCausationID: "WithCausationID",
	"partitionkey": "WithKey", attrTraceParent: "WithTraceParent",
	"type": "the type argument of Publish",
}

func validateHeaderName(name string) error {
	if name == "" || len(name) > 20 {
		return invalidOption("WithHeader(%q); a header name is 1 to 20 characters", name)
	}
	for _, r := range name {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9') {
			return invalidOption("WithHeader(%q); a header name may hold only a-z and 0-9 (CloudEvents extension naming)", name)
		}
	}
	if reservedAttrs[name] || name == attrSpecVersion {
		if opt, ok := attrOptions[name]; ok {
			return invalidOption("WithHeader(%q); %q is a CloudEvents attribute with its own option: use %s", name, name, opt)
		}
		return invalidOption("WithHeader(%q); %q is a reserved CloudEvents attribute that Ripple sets itself", name, name)
	}
	return nil
}

// WithSource sets the CloudEvents source of this event, overriding the
// bus's DefaultSource.
func WithSource(source string) PublishOption {
	return func(c *publishConfig) error {
		if source == "" {
			return invalidOption("WithSource(\"\"); a source must not be empty")
		}
		c.source = source
		return nil
	}
}

// WithVersion sets the payload's schema version (extension
// "dataversion"), so handlers can decode old and new shapes.
func WithVersion(v int) PublishOption {
	return func(c *publishConfig) error {
		if v < 0 {
			return invalidOption("WithVersion(%d); a version must not be negative", v)
		}
		c.version = v
		return nil
	}
}

// WithCorrelationID sets the correlation id. Inside a handler it defaults
// to the handled event's correlation id; elsewhere to the event's own id.
func WithCorrelationID(id string) PublishOption {
	return func(c *publishConfig) error {
		if id == "" {
			return invalidOption("WithCorrelationID(\"\"); pass a non-empty id")
		}
		c.correlationID = id
		return nil
	}
}

// WithCausationID sets the causation id. Inside a handler it defaults to
// the handled event's id.
func WithCausationID(id string) PublishOption {
	return func(c *publishConfig) error {
		if id == "" {
			return invalidOption("WithCausationID(\"\"); pass a non-empty id")
		}
		c.causationID = id
		return nil
	}
}

// WithTraceParent sets the W3C trace context of the event (CloudEvents
// extension "traceparent"), such as the one of the request that publishes
// it: "00-" + 32 hex digits of trace id + "-" + 16 of parent id + "-" + 2
// of flags. Inside a handler it defaults to the handled event's.
func WithTraceParent(tp string) PublishOption {
	return func(c *publishConfig) error {
		if !validTraceParent(tp) {
			return invalidOption("WithTraceParent(%q); pass a W3C traceparent such as \"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\"", tp)
		}
		c.traceParent = tp
		return nil
	}
}

// validTraceParent reports whether tp has the W3C traceparent form:
// version, trace id, parent id and flags in lowercase hex, the ids not all
// zero.
func validTraceParent(tp string) bool {
	parts := strings.Split(tp, "-")
	if len(parts) < 4 || len(parts[0]) != 2 || parts[0] == "ff" || len(parts[1]) != 32 || len(parts[2]) != 16 || len(parts[3]) != 2 {
		return false
	}
	if parts[0] == "00" && len(parts) != 4 {
		return false
	}
	for _, p := range parts[:4] {
		for _, r := range p {
			if !('0' <= r && r <= '9' || 'a' <= r && r <= 'f') {
				return false
			}
		}
	}
	return strings.Trim(parts[1], "0") != "" && strings.Trim(parts[2], "0") != ""
}

// WithContentType sets the media type of the payload (CloudEvents
// "datacontenttype"), such as "text/plain" for a []byte payload or
// "application/vnd.acme.order+json" for a JSON one. Default:
// "application/octet-stream" for []byte, "application/json" otherwise.
func WithContentType(mediaType string) PublishOption {
	return func(c *publishConfig) error {
		if _, _, err := mime.ParseMediaType(mediaType); err != nil || !strings.Contains(mediaType, "/") {
			return invalidOption("WithContentType(%q); pass a media type (RFC 2046) such as \"text/plain\" or \"application/vnd.acme.order+json\"", mediaType)
		}
		c.contentType = mediaType
		return nil
	}
}

// ---- Handler options ----

// HandlerOption configures a handler registered with On.
type HandlerOption func(*handlerConfig) error

type handlerConfig struct {
	concurrency int
	rateN       int
	ratePer     time.Duration
	maxAttempts int
	backoffMin  time.Duration
	backoffMax  time.Duration
	timeout     time.Duration
	idempotent  bool
	ordered     bool
	lease       time.Duration
	middleware  []Middleware
	ephemeral   bool
	from        time.Time
}

func defaultHandlerConfig() handlerConfig {
	return handlerConfig{
		concurrency: DefaultConcurrency,
		maxAttempts: DefaultMaxAttempts,
		backoffMin:  DefaultBackoffMin,
		backoffMax:  DefaultBackoffMax,
		timeout:     DefaultTimeout,
		lease:       DefaultLease,
	}
}

// Concurrency sets how many events this handler runs at once in this
// process. Default: 10. Processes running the same handler add up.
//
// A handler's outcome is recorded in the background, batched with the
// handler's other outcomes, so a slot is free for the next event as soon
// as the handler returns. Outcomes waiting to be recorded are bounded (n,
// at least 16 and at most 256): when the transport falls that far behind,
// handlers wait for it with their slots taken, so no more events are
// leased. An Ordered handler keeps the slot until its outcome is recorded.
func Concurrency(n int) HandlerOption {
	return func(c *handlerConfig) error {
		if n < 1 {
			return invalidOption("Concurrency(%d); a handler needs at least 1", n)
		}
		c.concurrency = n
		return nil
	}
}

// RateLimit starts at most n events in any window of length per: counted
// by the times handlers start, no interval of length per holds more than
// n starts (a sliding window, not a token bucket, which would let 2n start
// within one period). Up to n may start at once after an idle period.
// Default: no limit. On transports that declare a shared rate limit
// (transport.Capabilities.SharedRateLimit) it holds across every process
// running the handler; on others it holds per process, so that k
// processes running the handler start up to k×n per window.
func RateLimit(n int, per time.Duration) HandlerOption {
	return func(c *handlerConfig) error {
		if n < 1 || per <= 0 {
			return invalidOption("RateLimit(%d, %s); both the count and the period must be positive", n, per)
		}
		c.rateN, c.ratePer = n, per
		return nil
	}
}

// MaxAttempts sets how many times an event is tried before it moves to
// the dead-letter queue. Default: 5. MaxAttempts(1) never retries a
// failure. A delivery whose lease ran out without a result (its process
// crashed or hung) counts as an attempt, with one delivery more allowed,
// so that one crash never costs an event its run: an event that kills
// its process every time is dead-lettered, without running again, after
// n+1 such deliveries.
func MaxAttempts(n int) HandlerOption {
	return func(c *handlerConfig) error {
		if n < 1 {
			return invalidOption("MaxAttempts(%d); at least 1 attempt is needed", n)
		}
		c.maxAttempts = n
		return nil
	}
}

// Backoff sets the wait before retries: min after the first failure,
// doubling each time up to max. Each wait is then moved by up to 20%
// either way (so between 0.8×min and 1.2×max), so that many failing events
// do not retry in lock-step. Default: 1 s to 5 min.
func Backoff(min, max time.Duration) HandlerOption {
	return func(c *handlerConfig) error {
		if min <= 0 || max < min {
			return invalidOption("Backoff(%s, %s); need 0 < min <= max", min, max)
		}
		c.backoffMin, c.backoffMax = min, max
		return nil
	}
}

// Timeout bounds one attempt: the handler's ctx is cancelled after d
// (ctx.Deadline is exact; Done closes within a twentieth of d, at most a
// second, after it). A handler that ignores its ctx is abandoned 2 s
// after that, its attempt counted as failed and its concurrency slot
// freed.
// Default: 1 min.
func Timeout(d time.Duration) HandlerOption {
	return func(c *handlerConfig) error {
		if d <= 0 {
			return invalidOption("Timeout(%s); the timeout must be positive", d)
		}
		c.timeout = d
		return nil
	}
}

// Idempotent makes the handler run to success at most once per event (its
// source and id), even when the transport delivers an event twice: an
// attempt first claims (handler, event source and id) atomically, and a
// completed claim skips the handler.
// A claim is held for twice the time after which an attempt that ignores
// its cancelled ctx is abandoned (Timeout plus 2 s); until then a retry
// waits for it, and the abandoned attempt's late outcome still counts: a
// success completes the event, a failure lets the retry run at once. A
// completed claim is kept for the dedup window (DedupWindow, 24 h by
// default), like publish dedup: an id delivered again after that, such as
// one published again, runs again.
func Idempotent() HandlerOption {
	return func(c *handlerConfig) error {
		c.idempotent = true
		return nil
	}
}

// Ordered handles events with the same key (WithKey) one at a time in
// publish order. A failing event holds back only its own key; events
// without a key are not ordered.
func Ordered() HandlerOption {
	return func(c *handlerConfig) error {
		c.ordered = true
		return nil
	}
}

// Lease sets how long an event handed to this process stays reserved for
// it. While the handler runs the lease is renewed every third of d; if the
// process dies, the event is delivered again once the lease runs out, so
// d bounds the redelivery delay after a crash. Default: 30 s.
func Lease(d time.Duration) HandlerOption {
	return func(c *handlerConfig) error {
		if d < 10*time.Millisecond {
			return invalidOption("Lease(%s); a lease must be at least 10ms", d)
		}
		c.lease = d
		return nil
	}
}

// Ephemeral makes the handler's subscription last only while this bus
// runs it: the transport deletes it, with everything queued for it, when
// the bus stops, and reaps it when the process dies without stopping, so
// it leaves nothing durable behind (`ripple tail` uses it). It sees only
// events published while it exists. Transports that cannot give it
// refuse it with ErrNotSupported. Do not give an ephemeral handler the
// name of a durable one.
func Ephemeral() HandlerOption {
	return func(c *handlerConfig) error {
		c.ephemeral = true
		return nil
	}
}

// StartFrom makes a handler whose subscription does not exist yet start
// from the transport's retained history: every retained event matching
// its pattern published at or after t is delivered to it, then every
// event published afterwards (for example a projection building its read
// model). A handler that has subscribed before keeps its position, and
// history is bounded by the transport's retention (see DedupWindow).
// Default: a new handler gets only the events published after it
// subscribed. Transports without history refuse it with ErrNotSupported.
func StartFrom(t time.Time) HandlerOption {
	return func(c *handlerConfig) error {
		if t.IsZero() {
			return invalidOption("StartFrom(zero time); pass the time to start from, or use FromBeginning()")
		}
		c.from = t
		return nil
	}
}

// FromBeginning is StartFrom the oldest retained event.
func FromBeginning() HandlerOption {
	return func(c *handlerConfig) error {
		c.from = transport.Beginning
		return nil
	}
}
