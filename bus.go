package ripple

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ripplehq/ripple/transport"
)

// DefaultURL is the transport Open uses for an empty URL: an embedded,
// durable SQLite file in the working directory.
const DefaultURL = "sqlite://ripple.db"

// modulePath is used in error messages that name an import to add.
const modulePath = "github.com/ripplehq/ripple"

// transportPackages maps URL schemes to the package that registers them.
var transportPackages = map[string]string{
	"sqlite": "transport/sqlite",
	"memory": "transport/memory",
	"redis":  "transport/redis",
	"rediss": "transport/redis",
	"nats":   "transport/nats",
	"tls":    "transport/nats",

	"postgres":   "transport/postgres",
	"postgresql": "transport/postgres",
}

// plannedSchemes are the URL schemes of transports Ripple does not have
// yet, so that their error says so instead of naming an import that does
// not exist.
var plannedSchemes = []string{"amqp", "amqps", "kafka"}

// Bus publishes events and runs handlers over one transport. Create it
// with Open (from a URL) or New (from a driver). A Bus is safe for
// concurrent use.
type Bus struct {
	driver transport.Driver
	caps   transport.Capabilities
	cfg    busConfig
	log    *slog.Logger

	publishHooks []PublishHook
	handleHooks  []HandleHook
	// middleware wraps every handler (Use); set before Start.
	middleware []Middleware

	// lifecycle serialises Start, On and Unsubscribe, which wait for the
	// transport; mu is held only briefly, so that Shutdown never waits
	// behind a transport call.
	lifecycle sync.Mutex
	mu        sync.Mutex
	handlers  map[string]*runner
	retiring  map[string]bool // names being unsubscribed
	// orphans counts handlers that Unsubscribe cut off and took off the
	// bus before they returned; Shutdown waits for them too.
	orphans sync.WaitGroup
	order   []string // registration order, for stable listings
	// values is the ctx given to Start, without its cancellation: handler
	// contexts carry its values.
	values   context.Context
	started  bool
	stopping bool // Shutdown began: no new handlers or starts
	// closed is set once the driver is closed: no publishes either. It is
	// atomic rather than under mu, as errors are wrapped (wrapDriverErr)
	// while mu is held.
	closed   atomic.Bool
	stopOnce sync.Once
	stopped  chan struct{}
	stopErr  error
	relay    *outboxRelay // see WithOutbox
	// drainOutcome says how Shutdown's wait for the handlers ended, so
	// that Run can tell which part outlasted ShutdownTimeout.
	drainOutcome atomic.Int32
}

// Values of Bus.drainOutcome.
const (
	drainPending int32 = iota // Shutdown has not finished waiting
	drainDone                 // every handler finished
	drainCutOff               // handlers were cut off when ctx ended
)

// Open connects to the transport named by url's scheme and returns a bus.
// An empty url means DefaultURL. The transport's package must be imported
// (for example `import _ "github.com/ripplehq/ripple/transport/sqlite"`,
// or transport/all for every one); otherwise Open fails with an error
// naming the import. A transport whose disk or memory is full, or whose
// stored data is damaged, fails Open with an error matching
// ErrStorageFull or ErrCorrupt.
func Open(ctx context.Context, url string, opts ...Option) (*Bus, error) {
	if url == "" {
		url = DefaultURL
	}
	scheme, err := transport.Scheme(url)
	if err != nil {
		return nil, fmt.Errorf("ripple: %w", err)
	}
	open, ok := transport.Lookup(scheme)
	if !ok {
		if pkg, known := transportPackages[scheme]; known {
			return nil, fmt.Errorf("ripple: %w %q: add `import _ \"%s/%s\"` (or %s/transport/all) to your program",
				ErrUnknownTransport, scheme, modulePath, pkg, modulePath)
		}
		if slices.Contains(plannedSchemes, scheme) {
			return nil, fmt.Errorf("ripple: %w %q: Ripple has no %s transport yet; use sqlite://, redis:// or memory:// (the same handlers move over by changing the URL once it exists)",
				ErrUnknownTransport, scheme, scheme)
		}
		return nil, fmt.Errorf("ripple: %w %q in %q: known schemes are %s", ErrUnknownTransport, scheme, redactURL(url), strings.Join(knownSchemes(), ", "))
	}
	cfg, err := buildConfig(opts)
	if err != nil {
		return nil, err
	}
	d, err := open(ctx, url, cfg.transportConfig())
	if err != nil {
		return nil, fmt.Errorf("ripple: open %s: %w", redactURL(url), err)
	}
	return newBus(d, cfg), nil
}

// New returns a bus over an already opened driver. Most programs use Open;
// New is for drivers built by hand and for tests. The retention options
// (KeepCompleted, KeepDead, DedupWindow) configure the transport when Open
// creates it, so New refuses them: pass them in the transport.Config the
// driver was opened with.
func New(d transport.Driver, opts ...Option) (*Bus, error) {
	if d == nil {
		return nil, invalidOption("New(nil driver)")
	}
	cfg, err := buildConfig(opts)
	if err != nil {
		return nil, err
	}
	if len(cfg.forTransport) > 0 {
		return nil, invalidOption("%s with New: retention is set when the transport is opened; pass it in the transport.Config of the driver given to New, or use Open", strings.Join(cfg.forTransport, ", "))
	}
	return newBus(d, cfg), nil
}

func buildConfig(opts []Option) (busConfig, error) {
	cfg := busConfig{
		logger:          slog.Default(),
		maxEventSize:    DefaultMaxEventSize,
		shutdownTimeout: DefaultShutdownTimeout,
	}
	if host, err := os.Hostname(); err == nil && host != "" {
		cfg.source = "ripple://" + host
	} else {
		cfg.source = "ripple://localhost"
	}
	for _, o := range opts {
		if o == nil {
			return cfg, invalidOption("nil Option passed to Open")
		}
		if err := o(&cfg); err != nil {
			return cfg, err
		}
	}
	return cfg, nil
}

func (c busConfig) transportConfig() transport.Config {
	return transport.Config{
		Retention: transport.Retention{
			CompletedCount: c.keepCompleted.count,
			CompletedAge:   c.keepCompleted.age,
			DeadCount:      c.keepDead.count,
			DeadAge:        c.keepDead.age,
			DedupWindow:    c.dedupWindow,
		},
		MaxMessageSize: c.maxEventSize,
		Logger:         c.logger,
	}
}

func newBus(d transport.Driver, cfg busConfig) *Bus {
	b := &Bus{
		driver:   d,
		caps:     d.Capabilities(),
		cfg:      cfg,
		log:      cfg.logger,
		handlers: make(map[string]*runner),
		retiring: make(map[string]bool),
		stopped:  make(chan struct{}),
	}
	for _, h := range cfg.hooks {
		if ph, ok := h.(PublishHook); ok {
			b.publishHooks = append(b.publishHooks, ph)
		}
		if hh, ok := h.(HandleHook); ok {
			b.handleHooks = append(b.handleHooks, hh)
		}
	}
	b.startOutbox()
	return b
}

func knownSchemes() []string {
	seen := map[string]bool{}
	for _, s := range transport.Schemes() {
		seen[s] = true
	}
	for s := range transportPackages {
		seen[s] = true
	}
	out := make([]string, 0, len(seen))
	for s := range seen {
		out = append(out, s)
	}
	sort.Strings(out)
	return out
}

// redactURL hides a password in a URL so that errors and logs never carry
// credentials.
func redactURL(url string) string {
	scheme, rest, ok := strings.Cut(url, "://")
	if !ok {
		return url
	}
	// A file path carries no credentials, whatever its characters.
	if scheme == "sqlite" || strings.HasPrefix(rest, "/") {
		return url
	}
	// A password may hold an unescaped "/", "?" or "@", so the host cannot
	// be told from it by those: everything between the first ":" and the
	// last "@" is hidden. That hides too much of a URL whose query holds
	// an "@", which is better than too little.
	at := strings.LastIndex(rest, "@")
	if at < 0 || !strings.Contains(rest[:at], ":") {
		return url
	}
	userinfo := rest[:at]
	if user, _, hasPass := strings.Cut(userinfo, ":"); hasPass {
		userinfo = user + ":xxxxx"
	}
	return scheme + "://" + userinfo + rest[at:]
}

// TransportName is the name of the bus's transport, such as "sqlite".
func (b *Bus) TransportName() string { return b.driver.Name() }

// As sets target to the bus's native driver value when target is a
// pointer to a type the driver has (see each transport's documentation),
// and reports whether it did. It is the escape hatch to transport-specific
// features.
func (b *Bus) As(target any) bool {
	if a, ok := b.driver.(interface{ As(any) bool }); ok && a.As(target) {
		return true
	}
	if p, ok := target.(*transport.Driver); ok {
		*p = b.driver
		return true
	}
	return false
}

// Publish stores an event of the given type with data encoded as JSON
// (json.RawMessage is used as is; []byte is stored raw) and returns the
// stored event. When Publish returns nil the event is durable to the
// degree the transport documents. Inside a handler, pass the handler's ctx:
// the new event then carries the handled event's correlation id and has
// its id as causation id. A nil ctx, a nil payload and a payload that
// encodes to JSON null (such as a nil pointer) are refused with
// ErrInvalidOption.
//
// An event's identity is its source and id together (as in CloudEvents).
// When the transport still remembers an event with the same source and
// id (see WithID and DedupWindow), Publish stores nothing and returns the
// event that was kept, with its own time and data, marked Duplicate, and
// a nil error: retrying a publish whose reply was lost is safe.
//
// Errors from the transport match, with errors.Is, ErrClosed when the bus
// is shut down, ErrOutcomeUnknown when the connection failed after the
// event was sent (it may have been stored: publish it again with the same
// id, WithID(ev.ID), which is safe), ErrStorageFull when the transport's
// disk or memory is full (nothing was stored), and ErrCorrupt when its
// stored data is damaged.
func (b *Bus) Publish(ctx context.Context, eventType string, data any, opts ...PublishOption) (Event, error) {
	ev, err := b.publish(ctx, eventType, data, opts)
	if len(b.publishHooks) > 0 {
		hctx := hookContext(ctx)
		for _, h := range b.publishHooks {
			h.OnPublish(hctx, ev, err)
		}
	}
	return ev, err
}

// hookContext is the ctx passed to publish hooks: ctx, or Background when
// the caller passed nil (which Publish refuses).
func hookContext(ctx context.Context) context.Context {
	if ctx == nil {
		return context.Background()
	}
	return ctx
}

func (b *Bus) publish(ctx context.Context, eventType string, data any, opts []PublishOption) (Event, error) {
	ev, msg, err := b.prepare(ctx, eventType, data, opts)
	if err != nil {
		return ev, err
	}
	if err := b.driver.Publish(ctx, []*transport.Message{msg}); err != nil {
		return ev, b.wrapDriverErr("publish "+eventType, err)
	}
	return storedEvent(ev, msg), nil
}

// PublishTx publishes an event inside tx, the application's own database
// transaction, so that the event is stored if and only if tx commits: a
// crash between the application's write and its event can no longer lose
// the event. tx is a *sql.Tx (database/sql) or, on a pgx-based transport,
// a pgx.Tx.
//
// On sqlite:// and postgres:// the transaction writes the event itself, so
// tx must belong to the same database as the bus. Transports that cannot
// write through tx return an error matching ErrNotSupported. Options and
// the returned event are as for Publish; a duplicate (source, id) found
// only when tx commits cannot be reported. Handlers are not woken before
// tx commits. Publish hooks (and so observe's published counter) hear of
// the event when PublishTx returns, before tx commits: an event whose tx
// rolls back has been counted all the same.
func (b *Bus) PublishTx(ctx context.Context, tx any, eventType string, data any, opts ...PublishOption) (Event, error) {
	ev, err := b.publishTx(ctx, tx, eventType, data, opts)
	if len(b.publishHooks) > 0 {
		hctx := hookContext(ctx)
		for _, h := range b.publishHooks {
			h.OnPublish(hctx, ev, err)
		}
	}
	return ev, err
}

func (b *Bus) publishTx(ctx context.Context, tx any, eventType string, data any, opts []PublishOption) (Event, error) {
	if tx == nil {
		return Event{Type: eventType}, invalidOption("PublishTx: tx is nil; pass the *sql.Tx (or pgx.Tx) the event must commit with")
	}
	tp, ok := b.driver.(transport.TxPublisher)
	if !ok && b.cfg.outbox != nil {
		return b.publishOutbox(ctx, tx, eventType, data, opts)
	}
	if !ok {
		return Event{Type: eventType}, &NotSupportedError{Transport: b.driver.Name(), Option: "PublishTx",
			Hint: "use a transport that stores events in the application's database (sqlite://, postgres://), or give the bus an outbox with ripple.WithOutbox"}
	}
	ev, msg, err := b.prepare(ctx, eventType, data, opts)
	if err != nil {
		return ev, err
	}
	if err := tp.PublishTx(ctx, tx, []*transport.Message{msg}); err != nil {
		return ev, b.wrapDriverErr("publish "+eventType+" in a transaction", err)
	}
	return storedEvent(ev, msg), nil
}

// storedEvent is what Publish returns: ev, or, when the driver found the
// (source, id) already stored, the event it kept, marked Duplicate.
func storedEvent(ev Event, msg *transport.Message) Event {
	if msg.Duplicate == nil {
		return ev
	}
	kept := eventFromMessage(msg.Duplicate)
	kept.Duplicate = true
	return kept
}

// prepare validates a publish and builds its event and message.
func (b *Bus) prepare(ctx context.Context, eventType string, data any, opts []PublishOption) (Event, *transport.Message, error) {
	if ctx == nil {
		return Event{Type: eventType}, nil, invalidOption("Publish(nil ctx, %q); pass a context, such as context.Background() or the handler's ctx", eventType)
	}
	if b.isClosed() {
		return Event{Type: eventType}, nil, ErrClosed
	}
	if err := ValidateName(eventType); err != nil {
		return Event{Type: eventType}, nil, err
	}
	var pc publishConfig
	for _, o := range opts {
		if o == nil {
			return Event{Type: eventType}, nil, invalidOption("nil PublishOption")
		}
		if err := o(&pc); err != nil {
			return Event{Type: eventType}, nil, err
		}
	}
	body, contentType, err := encodeData(data)
	if err != nil {
		return Event{Type: eventType}, nil, err
	}
	if len(body) > b.cfg.maxEventSize {
		return Event{Type: eventType}, nil, fmt.Errorf("ripple: %w: %s payload is %d bytes, over the %d-byte limit; store large data elsewhere and publish a reference, or raise MaxEventSize",
			ErrTooLarge, eventType, len(body), b.cfg.maxEventSize)
	}
	if pc.contentType != "" {
		contentType = pc.contentType
	}
	now := time.Now()
	delay := pc.delay
	if !pc.at.IsZero() {
		delay = max(pc.at.Sub(now), 0)
	}
	if err := b.checkPublishCaps(&pc, delay); err != nil {
		return Event{Type: eventType}, nil, err
	}
	ev := Event{
		ID:              pc.id,
		Type:            eventType,
		Source:          pc.source,
		Subject:         pc.subject,
		Time:            now,
		DataContentType: contentType,
		DataSchema:      pc.dataSchema,
		DataVersion:     pc.version,
		CorrelationID:   pc.correlationID,
		CausationID:     pc.causationID,
		TraceParent:     pc.traceParent,
		Key:             pc.key,
		Priority:        pc.priority,
		Headers:         pc.headers,
		Data:            body,
	}
	if !pc.eventTime.IsZero() {
		ev.Time = pc.eventTime
	}
	generated := ev.ID == ""
	if generated {
		ev.ID = newID()
	}
	if ev.Source == "" {
		ev.Source = b.cfg.source
	}
	if id, correlationID, traceParent, ok := parentEvent(ctx); ok {
		if ev.CorrelationID == "" {
			ev.CorrelationID = correlationID
		}
		if ev.CausationID == "" {
			ev.CausationID = id
		}
		if ev.TraceParent == "" {
			ev.TraceParent = traceParent
		}
	}
	if ev.CorrelationID == "" {
		ev.CorrelationID = ev.ID
	}
	if n := ev.size(); n > b.cfg.maxEventSize {
		return Event{Type: eventType}, nil, fmt.Errorf("ripple: %w: %s event is %d bytes with its headers and attributes (payload %d), over the %d-byte limit; keep headers small and publish a reference to large data, or raise MaxEventSize",
			ErrTooLarge, eventType, n, len(ev.Data), b.cfg.maxEventSize)
	}
	msg := ev.toMessage(delay)
	msg.IDGenerated = generated
	return ev, msg, nil
}

func (b *Bus) checkPublishCaps(pc *publishConfig, delay time.Duration) error {
	name := b.driver.Name()
	switch {
	case pc.setPriority && pc.priority != 0 && !b.caps.Priority:
		return &NotSupportedError{Transport: name, Option: "WithPriority", Hint: "publish urgent events under their own type and give that handler more concurrency"}
	case delay > 0 && !b.caps.Delay:
		return &NotSupportedError{Transport: name, Option: "WithDelay/WithDeliverAt"}
	case pc.id != "" && !b.caps.Dedup:
		return &NotSupportedError{Transport: name, Option: "WithID (publish deduplication)", Hint: b.advice("WithID", "use Idempotent() on handlers to absorb duplicates")}
	}
	return nil
}

// advice is the driver's advice on getting option (see
// transport.Advisor), else otherwise.
func (b *Bus) advice(option, otherwise string) string {
	if a, ok := b.driver.(transport.Advisor); ok {
		if s := a.Advice(option); s != "" {
			return s
		}
	}
	return otherwise
}

// wrapDriverErr maps a driver's closed error to ErrClosed and adds context.
func (b *Bus) wrapDriverErr(op string, err error) error {
	if b.isClosed() && !errors.Is(err, ErrClosed) {
		return fmt.Errorf("ripple: %s: %w (%v)", op, ErrClosed, err)
	}
	return fmt.Errorf("ripple: %s on %s: %w", op, b.driver.Name(), err)
}

func (b *Bus) isClosed() bool { return b.closed.Load() }

// HandlerFunc handles one event. Returning nil acknowledges it; returning
// an error retries it with backoff, or dead-letters it when the error is
// Permanent or the attempts are used up. Handlers never acknowledge by
// hand. ctx carries the values of the ctx the bus was started with (Start
// or Run); it is cancelled when the attempt's Timeout passes or the bus
// stops hard, and a handler should return promptly then.
type HandlerFunc func(ctx context.Context, e Event) error

// On registers fn under a durable handler name for events matching
// pattern ("user.signup.completed", "user.*", "order.>"). Every handler
// name gets every matching event (fan-out); processes that register the
// same name share its events (competing consumers). On may be called
// before or after Start. The durable subscription is created when the bus
// starts (or by On on a started bus); events published before a handler's
// subscription first existed are not delivered to it, so start handlers
// before their first events are published. It fails for an invalid pattern or name, a name
// already registered on this bus, an invalid option, or an option the
// transport cannot honour (matching ErrNotSupported).
func (b *Bus) On(pattern, name string, fn HandlerFunc, opts ...HandlerOption) error {
	if err := ValidatePattern(pattern); err != nil {
		return err
	}
	if err := ValidateHandlerName(name); err != nil {
		return err
	}
	if fn == nil {
		return invalidOption("On(%q, %q): handler func is nil", pattern, name)
	}
	cfg := defaultHandlerConfig()
	for _, o := range opts {
		if o == nil {
			return invalidOption("nil HandlerOption for handler %q", name)
		}
		if err := o(&cfg); err != nil {
			return fmt.Errorf("handler %q: %w", name, err)
		}
	}
	if cfg.ordered && !b.caps.Ordered {
		return &NotSupportedError{Transport: b.driver.Name(), Option: "Ordered", Hint: "use Concurrency(1) for a handler that must see events one at a time"}
	}
	if cfg.idempotent {
		if _, ok := b.driver.(transport.Claimer); !ok {
			return &NotSupportedError{Transport: b.driver.Name(), Option: "Idempotent", Hint: b.advice("Idempotent", "")}
		}
	}
	if cfg.ephemeral && !b.caps.Ephemeral {
		return &NotSupportedError{Transport: b.driver.Name(), Option: "Ephemeral", Hint: "use a durable handler and Unsubscribe it when done"}
	}
	if !cfg.from.IsZero() && !b.caps.StartFrom {
		return &NotSupportedError{Transport: b.driver.Name(), Option: "StartFrom/FromBeginning", Hint: "this transport keeps no history a new handler can start from"}
	}
	r := newRunner(b, pattern, name, fn, cfg)

	b.lifecycle.Lock()
	defer b.lifecycle.Unlock()
	b.mu.Lock()
	stopping, started, retiring := b.stopping, b.started, b.retiring[name]
	old, dup := b.handlers[name]
	b.mu.Unlock()
	switch {
	case stopping:
		return ErrClosed
	case dup:
		return fmt.Errorf("ripple: %w: %q is already registered for %q on this bus; give each handler its own name", ErrDuplicateHandler, name, old.pattern)
	case retiring:
		return fmt.Errorf("ripple: %w: %q is being unsubscribed; register it again once Unsubscribe has returned", ErrDuplicateHandler, name)
	}
	if started {
		// Subscribed outside mu, so that a Shutdown meanwhile is not
		// held up by the transport; run only under it, below.
		if err := r.subscribe(context.Background()); err != nil {
			return err
		}
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.stopping {
		r.closeUnrun()
		return ErrClosed
	}
	if started {
		r.run(b.values)
	}
	b.handlers[name] = r
	b.order = append(b.order, name)
	return nil
}

// Start subscribes every registered handler and starts running them in
// the background; it returns once the subscriptions exist. ctx bounds only
// that setup, and its values (a logger, a tenant, a tracing provider) are
// carried by every handler's ctx, including handlers registered later;
// its cancellation does not reach handlers. Stop the bus with Shutdown or
// Close.
func (b *Bus) Start(ctx context.Context) error {
	b.lifecycle.Lock()
	defer b.lifecycle.Unlock()
	b.mu.Lock()
	stopping, started := b.stopping, b.started
	runners := make([]*runner, len(b.order))
	for i, name := range b.order {
		runners[i] = b.handlers[name]
	}
	b.mu.Unlock()
	switch {
	case stopping:
		return ErrClosed
	case started:
		return nil
	}
	// Every subscription is created first, outside mu, so that a Shutdown
	// meanwhile is not held up by the transport; nothing runs until all
	// exist, and then only if Shutdown has not begun.
	for i, r := range runners {
		if err := r.subscribe(ctx); err != nil {
			for _, r := range runners[:i] {
				r.closeUnrun()
			}
			return err
		}
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.stopping {
		for _, r := range runners {
			r.closeUnrun()
		}
		return ErrClosed
	}
	b.values = context.WithoutCancel(ctx)
	for _, r := range runners {
		r.run(b.values)
	}
	b.started = true
	return nil
}

// Run starts the bus (if Start has not) and blocks until ctx is done, then
// shuts down gracefully within ShutdownTimeout. Handlers' contexts carry
// ctx's values, as with Start. It returns nil after a
// clean stop. When ShutdownTimeout runs out, the error wraps
// context.DeadlineExceeded and says what outlasted it: handlers, which
// were then cut off, or the transport's close.
func (b *Bus) Run(ctx context.Context) error {
	if err := b.Start(ctx); err != nil {
		return err
	}
	select {
	case <-ctx.Done():
	case <-b.stopped:
		return b.stopErr
	}
	sctx, cancel := context.WithTimeout(context.Background(), b.cfg.shutdownTimeout)
	defer cancel()
	err := b.Shutdown(sctx)
	if errors.Is(err, context.DeadlineExceeded) {
		switch b.drainOutcome.Load() {
		case drainCutOff:
			return fmt.Errorf("ripple: handlers still running after ShutdownTimeout %s were cancelled and their events handed back for redelivery: %w", b.cfg.shutdownTimeout, err)
		case drainDone:
			return fmt.Errorf("ripple: every handler finished, but closing the %s transport took longer than ShutdownTimeout %s; it goes on in the background: %w", b.driver.Name(), b.cfg.shutdownTimeout, err)
		}
		return fmt.Errorf("ripple: shutdown did not finish within ShutdownTimeout %s: %w", b.cfg.shutdownTimeout, err)
	}
	return err
}

// Shutdown stops taking new events, waits for running handlers to finish,
// and closes the transport. If ctx ends first, handlers' contexts are
// cancelled, their events are released for redelivery without using an
// attempt, and Shutdown returns ctx.Err().
//
// Shutdown returns at most a second after ctx ends even if the transport
// stops answering: it waits that long for the events to be handed back,
// and releasing them, closing the subscriptions and closing the transport
// otherwise go on in the background, and Stopped is closed once they are
// done. A Start, or an On on a started
// bus, still waiting for the transport to create a subscription returns
// ErrClosed once it has, and stops what it started. Publish fails with
// ErrClosed from the moment the first call returns.
//
// It is safe to call more than once; later calls wait for the first to
// finish, or for their own ctx to end. As it waits for running handlers, a
// handler must not call Shutdown or Close itself, which would wait for it
// until ctx ends: start them on another goroutine.
func (b *Bus) Shutdown(ctx context.Context) error {
	var runners []*runner
	first := false
	b.stopOnce.Do(func() {
		first = true
		b.mu.Lock()
		b.stopping = true
		// Before Start has finished no runner is Shutdown's to stop: a
		// Start under way stops its own once it sees stopping.
		if b.started {
			runners = make([]*runner, 0, len(b.handlers))
			for _, name := range b.order {
				runners = append(runners, b.handlers[name])
			}
		}
		b.mu.Unlock()
	})
	if first {
		b.stop(ctx, runners)
	}
	select {
	case <-b.stopped:
		return b.stopErr
	case <-ctx.Done():
	}
	if first {
		// The transport may still be closing in the background, but the
		// caller is told the bus is shut down.
		b.closed.Store(true)
		// A responsive transport takes the cut-off handlers' events back
		// within moments; waiting for that spares a program that exits
		// now the wait for their leases.
		t := time.NewTimer(closeGrace)
		select {
		case <-b.stopped:
		case <-t.C:
		}
		t.Stop()
	}
	return ctx.Err()
}

// closeGrace is how long a Shutdown whose ctx has ended still waits for
// the transport to take back the events of the handlers it cut off.
const closeGrace = time.Second

// stop waits within ctx for the runners to drain and, if ctx ends first,
// cuts off the handlers still running. Neither makes a transport call, so
// stop returns soon after ctx ends; the transport calls, which a server
// that stops answering can hold up, run in the background (closeAll).
func (b *Bus) stop(ctx context.Context, runners []*runner) {
	for _, r := range runners {
		r.stopReceiving()
	}
	// Handlers that are still draining may publish follow-up events, so
	// publishing stays open until the driver closes or Shutdown gives up.
	err := drainAll(ctx, runners)
	if err == nil {
		// Handlers Unsubscribe gave up waiting for, and cut off.
		orphans := make(chan struct{})
		go func() {
			b.orphans.Wait()
			close(orphans)
		}()
		select {
		case <-orphans:
		case <-ctx.Done():
			err = ctx.Err()
		}
	}
	var pending [][]transport.Settlement
	if err == nil {
		b.drainOutcome.Store(drainDone)
	} else {
		b.drainOutcome.Store(drainCutOff)
		// Out of time: cancel handlers and take their events back.
		pending = make([][]transport.Settlement, len(runners))
		for i, r := range runners {
			if r.sub != nil {
				pending[i] = r.cutOff()
			}
		}
	}
	go b.closeAll(runners, pending, err)
}

// retire stops r, a running handler that Unsubscribe takes off the bus:
// it waits for r to drain until ctx ends and closes it, or else cuts it
// off, and Shutdown waits for it to return. A Shutdown that began
// meanwhile has taken r over instead.
func (b *Bus) retire(ctx context.Context, handler string, r *runner) error {
	r.stopReceiving()
	var drainErr error
	select {
	case <-r.drained():
	case <-ctx.Done():
		drainErr = ctx.Err()
	}
	b.mu.Lock()
	if b.stopping {
		b.mu.Unlock()
		return fmt.Errorf("ripple: unsubscribe %q: %w", handler, ErrClosed)
	}
	b.remove(handler)
	if drainErr != nil {
		b.orphans.Add(1)
	}
	b.mu.Unlock()
	if drainErr != nil {
		r.abort()
		go func() {
			<-r.drained()
			b.orphans.Done()
		}()
		return fmt.Errorf("ripple: unsubscribe %q: handler still running: %w", handler, drainErr)
	}
	if err := r.close(); err != nil {
		b.log.Warn("ripple: closing the subscription failed", "handler", handler, "err", err)
	}
	return nil
}

// remove takes handler off the bus. b.mu must be held.
func (b *Bus) remove(handler string) {
	delete(b.handlers, handler)
	b.order = slices.DeleteFunc(b.order, func(name string) bool { return name == handler })
}

// drainAll waits for every runner's loop and handlers to finish, and
// returns ctx.Err() if ctx ends first.
func drainAll(ctx context.Context, runners []*runner) error {
	for _, r := range runners {
		if r.sub == nil {
			continue
		}
		select {
		case <-r.drained():
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// closeAll settles the releases of cut-off runners (pending is nil when
// every runner drained), closes the subscriptions and then the driver, and
// closes b.stopped with err or the first close error. The subscriptions
// are closed side by side, so that a transport that stops answering costs
// one close's wait rather than one per handler.
func (b *Bus) closeAll(runners []*runner, pending [][]transport.Settlement, err error) {
	errs := make([]error, len(runners))
	var wg sync.WaitGroup
	for i, r := range runners {
		if r.sub == nil {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if pending != nil {
				r.closeAborted(pending[i])
			} else {
				errs[i] = r.close()
			}
		}()
	}
	wg.Wait()
	for _, cerr := range errs {
		if cerr != nil && err == nil {
			err = cerr
		}
	}
	if pending != nil {
		// Cut-off handlers that heed their cancelled ctx return within
		// moments and record their outcome on their idempotency claims;
		// the driver stays open for that, or the claims would hold their
		// events back until they expire.
		waitDrained(runners, closeGrace)
	}
	b.closed.Store(true)
	b.stopOutbox()
	if cerr := b.driver.Close(); cerr != nil && err == nil {
		err = fmt.Errorf("ripple: close %s: %w", b.driver.Name(), cerr)
	}
	b.stopErr = err
	close(b.stopped)
}

// waitDrained waits up to limit for every runner's handlers to return.
func waitDrained(runners []*runner, limit time.Duration) {
	t := time.NewTimer(limit)
	defer t.Stop()
	for _, r := range runners {
		select {
		case <-r.drained():
		case <-t.C:
			return
		}
	}
}

// Close is Shutdown bounded by ShutdownTimeout (default 10 s), for defer.
func (b *Bus) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), b.cfg.shutdownTimeout)
	defer cancel()
	return b.Shutdown(ctx)
}

// Stopped is closed once the bus has shut down and its transport is
// closed, which can be after a Shutdown whose ctx ended first returned.
func (b *Bus) Stopped() <-chan struct{} { return b.stopped }

// Handlers lists the handler names registered on this bus.
func (b *Bus) Handlers() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]string(nil), b.order...)
}

// HandlerStats are one handler's counts as the transport keeps them.
type HandlerStats struct {
	Handler   string `json:"handler"`
	Pattern   string `json:"pattern"`
	Waiting   int64  `json:"waiting"`
	Active    int64  `json:"active"`
	Delayed   int64  `json:"delayed"`
	Completed int64  `json:"completed"`
	// Failed counts failed attempts: across retained history on sqlite
	// and memory, since the handler subscribed on Redis.
	Failed int64 `json:"failed"`
	Dead   int64 `json:"dead"`
	// OldestWaiting is the age of the oldest event waiting to be handled.
	OldestWaiting time.Duration `json:"oldest_waiting_ns"`
	// Paused reports that the handler is paused (Bus.Pause).
	Paused bool `json:"paused"`
}

// Stats returns per-handler counts for every handler the transport knows,
// including handlers registered by other processes. The slice is empty,
// never nil, when there are none.
func (b *Bus) Stats(ctx context.Context) ([]HandlerStats, error) {
	in, ok := b.driver.(transport.Inspector)
	if !ok {
		return nil, &NotSupportedError{Transport: b.driver.Name(), Option: "Stats"}
	}
	ts, err := in.Stats(ctx)
	if err != nil {
		return nil, b.wrapDriverErr("stats", err)
	}
	out := make([]HandlerStats, len(ts))
	for i, s := range ts {
		out[i] = HandlerStats(s)
	}
	return out, nil
}

// DeadLetter is an event in a handler's dead-letter queue.
type DeadLetter struct {
	Event    Event     `json:"event"`
	Handler  string    `json:"handler"`
	Attempts int       `json:"attempts"`
	Error    string    `json:"error"`
	First    time.Time `json:"first_attempt"`
	DeadAt   time.Time `json:"dead_at"`
}

func (b *Bus) dlq() (transport.DeadLetterQueue, error) {
	q, ok := b.driver.(transport.DeadLetterQueue)
	if !ok {
		return nil, &NotSupportedError{Transport: b.driver.Name(), Option: "dead-letter administration"}
	}
	return q, nil
}

// DeadLetters lists up to limit events in the handler's dead-letter queue,
// oldest first, as an empty slice (never nil) when there are none. limit
// <= 0 means 100.
func (b *Bus) DeadLetters(ctx context.Context, handler string, limit int) ([]DeadLetter, error) {
	q, err := b.dlq()
	if err != nil {
		return nil, err
	}
	if limit <= 0 {
		limit = 100
	}
	ds, err := q.DeadLetters(ctx, handler, limit)
	if err != nil {
		return nil, b.adminErr("list dead letters of", handler, err)
	}
	out := make([]DeadLetter, len(ds))
	for i := range ds {
		out[i] = DeadLetter{
			Event:    eventFromMessage(&ds[i].Message),
			Handler:  ds[i].Handler,
			Attempts: ds[i].Attempts,
			Error:    ds[i].Error,
			First:    ds[i].FirstAttempt,
			DeadAt:   ds[i].DeadAt,
		}
	}
	return out, nil
}

// RequeueDead moves the named dead letters of the handler back to its
// queue with a fresh attempt budget, and returns how many moved (ids not
// in the queue are skipped). At least one id is required, so that a
// forgotten id list never moves the whole queue; RequeueAllDead moves
// every one.
func (b *Bus) RequeueDead(ctx context.Context, handler string, ids ...string) (int, error) {
	if len(ids) == 0 {
		return 0, invalidOption("RequeueDead(%q) with no ids; name the dead letters to requeue, or call RequeueAllDead to requeue every one", handler)
	}
	return b.requeueDead(ctx, handler, ids)
}

// RequeueAllDead moves every dead letter of the handler back to its queue
// with a fresh attempt budget, and returns how many moved.
func (b *Bus) RequeueAllDead(ctx context.Context, handler string) (int, error) {
	return b.requeueDead(ctx, handler, nil)
}

func (b *Bus) requeueDead(ctx context.Context, handler string, ids []string) (int, error) {
	q, err := b.dlq()
	if err != nil {
		return 0, err
	}
	n, err := q.Requeue(ctx, handler, ids)
	if err != nil {
		return n, b.adminErr("requeue dead letters of", handler, err)
	}
	return n, nil
}

// PurgeDead deletes the named dead letters of the handler for good and
// returns how many were deleted (ids not in the queue are skipped). At
// least one id is required, so that a forgotten id list never wipes the
// queue; PurgeAllDead deletes every one.
func (b *Bus) PurgeDead(ctx context.Context, handler string, ids ...string) (int, error) {
	if len(ids) == 0 {
		return 0, invalidOption("PurgeDead(%q) with no ids; name the dead letters to delete, or call PurgeAllDead to delete every one", handler)
	}
	return b.purgeDead(ctx, handler, ids)
}

// PurgeAllDead deletes every dead letter of the handler for good and
// returns how many were deleted.
func (b *Bus) PurgeAllDead(ctx context.Context, handler string) (int, error) {
	return b.purgeDead(ctx, handler, nil)
}

func (b *Bus) purgeDead(ctx context.Context, handler string, ids []string) (int, error) {
	q, err := b.dlq()
	if err != nil {
		return 0, err
	}
	n, err := q.Purge(ctx, handler, ids)
	if err != nil {
		return n, b.adminErr("purge dead letters of", handler, err)
	}
	return n, nil
}

// Replay delivers again to the handler every retained event matching its
// pattern that was published at or after since and that the handler has
// finished: completed, or dead-lettered (the event leaves the dead-letter
// queue, as with RequeueDead). It returns how many were scheduled. An
// event the handler has not finished (waiting, delayed, retrying or
// running) is left as it is. Transports without history return
// ErrNotSupported.
func (b *Bus) Replay(ctx context.Context, handler string, since time.Time) (int, error) {
	r, ok := b.driver.(transport.Replayer)
	if !ok {
		return 0, &NotSupportedError{Transport: b.driver.Name(), Option: "Replay", Hint: "this transport keeps no history"}
	}
	n, err := r.Replay(ctx, handler, since)
	if err != nil {
		return n, b.adminErr("replay", handler, err)
	}
	return n, nil
}

// Pause stops the handler from taking new events, in every process that
// runs it where the transport shares the pause (see its documentation),
// until Resume: its events keep being stored for it and wait, attempts
// already running finish and settle as usual, and nothing is lost. Use it
// during a downstream outage instead of stopping the whole bus. On this
// bus the handler stops receiving at once; other processes follow within
// about a second. Pausing a paused handler does nothing; an unknown
// handler is an error matching ErrUnknownHandler. Stats reports Paused.
// The pause is kept by the transport, so it outlives this bus. Transports
// that cannot pause return ErrNotSupported.
func (b *Bus) Pause(ctx context.Context, handler string) error {
	p, err := b.pauser()
	if err != nil {
		return err
	}
	if err := p.Pause(ctx, handler); err != nil {
		return b.adminErr("pause", handler, err)
	}
	b.mu.Lock()
	r := b.handlers[handler]
	b.mu.Unlock()
	if r != nil {
		r.interrupt() // does nothing before the runner runs
	}
	return nil
}

// Resume lets a paused handler take events again, in every process that
// runs it; what was published meanwhile is delivered. Resuming a handler
// that is not paused does nothing; an unknown handler is an error matching
// ErrUnknownHandler.
func (b *Bus) Resume(ctx context.Context, handler string) error {
	p, err := b.pauser()
	if err != nil {
		return err
	}
	if err := p.Resume(ctx, handler); err != nil {
		return b.adminErr("resume", handler, err)
	}
	return nil
}

func (b *Bus) pauser() (transport.Pauser, error) {
	p, ok := b.driver.(transport.Pauser)
	if !ok {
		return nil, &NotSupportedError{Transport: b.driver.Name(), Option: "Pause/Resume", Hint: "stop the processes running the handler, or Shutdown the bus"}
	}
	return p, nil
}

func (b *Bus) adminErr(op, handler string, err error) error {
	if errors.Is(err, transport.ErrNotFound) {
		return fmt.Errorf("ripple: %s %q: %w: no handler of that name has subscribed on this %s transport", op, handler, ErrUnknownHandler, b.driver.Name())
	}
	return b.wrapDriverErr(op+" "+handler, err)
}

// Unsubscribe deletes a handler's durable subscription, with every event
// still queued for it and its dead letters, so the transport stops keeping
// events for it. If the handler runs on this bus it is stopped first,
// waiting for its running attempts until ctx ends; if ctx ends first they
// are cancelled and their events handed back, and Shutdown still waits for
// them. Use it when a handler is retired for good; a handler registered
// again later starts empty. A handler must not unsubscribe itself, which
// would wait for it: call Unsubscribe on another goroutine.
func (b *Bus) Unsubscribe(ctx context.Context, handler string) error {
	u, ok := b.driver.(transport.Unsubscriber)
	if !ok {
		return &NotSupportedError{Transport: b.driver.Name(), Option: "Unsubscribe"}
	}
	if ev := eventFromContext(ctx); ev != nil && ev.Handler == handler {
		return fmt.Errorf("ripple: unsubscribe %q from its own handler: it would wait for itself to finish; call it on another goroutine (go bus.Unsubscribe(context.Background(), %q))", handler, handler)
	}
	// The name is held in retiring until the subscription is deleted, so
	// that an On of the same name cannot subscribe under the deletion. The
	// drain is waited for outside lifecycle, as the handler itself may call
	// On; the runner stays on the bus meanwhile, so that a Shutdown that
	// begins takes it over (drains or cuts it off, and closes it).
	b.lifecycle.Lock()
	b.mu.Lock()
	if b.retiring[handler] {
		b.mu.Unlock()
		b.lifecycle.Unlock()
		return fmt.Errorf("ripple: unsubscribe %q: already being unsubscribed", handler)
	}
	r := b.handlers[handler]
	ran := r != nil && r.sub != nil
	if r != nil && !ran {
		// Never started: it leaves the bus now, before a Start can take
		// it up.
		b.remove(handler)
	}
	b.retiring[handler] = true
	b.mu.Unlock()
	b.lifecycle.Unlock()
	defer func() {
		b.mu.Lock()
		delete(b.retiring, handler)
		b.mu.Unlock()
	}()
	if ran {
		if err := b.retire(ctx, handler, r); err != nil {
			return err
		}
	}
	if err := u.Unsubscribe(ctx, handler); err != nil {
		if r != nil && (!ran || r.cfg.ephemeral) && errors.Is(err, transport.ErrNotFound) {
			// Registered here but never started: nothing was subscribed;
			// or ephemeral: closing it deleted it.
			return nil
		}
		return b.adminErr("unsubscribe", handler, err)
	}
	return nil
}
