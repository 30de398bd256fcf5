package ripple

import (
	"context"
	"sync"

	"github.com/ripplehq/ripple/transport"
)

// WithOutbox makes PublishTx work on transports that do not live in the
// application's database (redis://, and the broker transports): the event
// is written to o, an outbox table in the application's database, with the
// application's transaction, and a relay that runs while the bus is open
// moves committed events to the transport, in order per key, each under
// its own id so the transport's publish deduplication absorbs a relay
// repeated after a crash. Use package github.com/ripplehq/ripple/outbox:
//
//	ob, _ := outbox.NewPostgres(pool)
//	bus, err := ripple.Open(ctx, "redis://localhost:6379/0", ripple.WithOutbox(ob))
//	...
//	tx, _ := pool.Begin(ctx)
//	// the application's writes with tx
//	bus.PublishTx(ctx, tx, "user.signup.completed", signup)
//	tx.Commit(ctx)
//
// On transports that write the event with the transaction themselves
// (sqlite://, postgres://) PublishTx keeps doing so, and the relay only
// drains what an earlier configuration left in the outbox. Teams that
// prefer to run the relay apart use `ripple relay` and give their buses an
// outbox made with outbox.RelayElsewhere(), which publishes without
// relaying.
// An event published through the outbox is not reported as a duplicate
// (Event.Duplicate) even if its id was already stored.
func WithOutbox(o transport.Outbox) Option {
	return func(c *busConfig) error {
		if o == nil {
			return invalidOption("WithOutbox(nil); pass an outbox such as outbox.NewPostgres(pool)")
		}
		c.outbox = o
		return nil
	}
}

// outboxRelay is the relay a bus runs for its outbox.
type outboxRelay struct {
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// startOutbox starts the relay of the bus's outbox, if it has one.
func (b *Bus) startOutbox() {
	if b.cfg.outbox == nil {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &outboxRelay{cancel: cancel}
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		if err := b.cfg.outbox.Relay(ctx, b.driver); err != nil {
			b.log.Error("ripple: the outbox relay stopped; events published with PublishTx stay in the outbox until a relay runs", "err", err)
		}
	}()
	b.relay = r
}

// stopOutbox stops the relay and waits for it; a batch it was moving stays
// in the outbox or was acknowledged, never half of either.
func (b *Bus) stopOutbox() {
	if b.relay == nil {
		return
	}
	b.relay.cancel()
	b.relay.wg.Wait()
}

// publishOutbox is PublishTx through the outbox.
func (b *Bus) publishOutbox(ctx context.Context, tx any, eventType string, data any, opts []PublishOption) (Event, error) {
	ev, msg, err := b.prepare(ctx, eventType, data, opts)
	if err != nil {
		return ev, err
	}
	if err := b.cfg.outbox.Put(ctx, tx, []*transport.Message{msg}); err != nil {
		return ev, b.wrapDriverErr("publish "+eventType+" to the outbox", err)
	}
	return ev, nil
}
