package bench

import (
	"context"
	"fmt"
	"os"
	"sync"

	amqp "github.com/rabbitmq/amqp091-go"

	_ "github.com/ripplehq/ripple/transport/amqp"
)

// amqpSystemNames lists the systems that need a RabbitMQ broker, in
// report order.
var amqpSystemNames = []string{
	"ripple-amqp", "ripple-amqp-classic", "watermill-amqp", "amqp-raw-confirm-awaited", "amqp-raw-confirm-pipelined",
}

// AMQPURLFromEnv returns the broker URL set in RIPPLE_BENCH_AMQP_URL or,
// failing that, RIPPLE_TEST_AMQP_URL (which the project's test script
// exports), or "".
func AMQPURLFromEnv() string {
	if u := os.Getenv("RIPPLE_BENCH_AMQP_URL"); u != "" {
		return u
	}
	return os.Getenv("RIPPLE_TEST_AMQP_URL")
}

// AMQPSystems returns the systems that talk to the RabbitMQ broker at url:
// Ripple's amqp transport, Watermill's AMQP Pub/Sub, and amqp091's
// ceilings for a durable publish (persistent message, quorum queue,
// publisher confirm). Each instance
// uses its own namespace or queue and deletes its queues when it closes.
func AMQPSystems(url string) []System {
	var (
		mu   sync.Mutex
		last string
	)
	r := RippleSystem("ripple-amqp", "amqp transport, quorum queues, confirms",
		func(string) string {
			ns := newNamespace()
			mu.Lock()
			last = ns
			mu.Unlock()
			return withQuery(url, "namespace", ns)
		})
	r.Group = "amqp"
	open := r.Open
	r.Open = func(ctx context.Context, dir string, handlers int, h HandleFunc) (Instance, error) {
		inst, err := open(ctx, dir, handlers, h)
		if err != nil {
			return nil, err
		}
		mu.Lock()
		ns := last
		mu.Unlock()
		return amqpCleanup{inst, url, ns, handlers}, nil
	}
	c := RippleSystem("ripple-amqp-classic", "amqp transport, classic handler queues (queue_type=classic), confirms",
		func(string) string {
			ns := newNamespace()
			mu.Lock()
			last = ns
			mu.Unlock()
			return withQuery(withQuery(url, "namespace", ns), "queue_type", "classic")
		})
	c.Group = "amqp"
	copen := c.Open
	c.Open = func(ctx context.Context, dir string, handlers int, h HandleFunc) (Instance, error) {
		inst, err := copen(ctx, dir, handlers, h)
		if err != nil {
			return nil, err
		}
		mu.Lock()
		ns := last
		mu.Unlock()
		return amqpCleanup{inst, url, ns, handlers}, nil
	}
	return []System{r, c, WatermillAMQP(url), RawAMQPConfirm(url, false), RawAMQPConfirm(url, true)}
}

// amqpCleanup deletes a ripple-amqp instance's queues when it closes, so
// runs do not accumulate quorum queues on the broker.
type amqpCleanup struct {
	Instance
	url, ns  string
	handlers int
}

func (a amqpCleanup) Close() error {
	err := a.Instance.Close()
	c, derr := amqp.Dial(a.url)
	if derr != nil {
		return err
	}
	defer c.Close()
	ch, derr := c.Channel()
	if derr != nil {
		return err
	}
	for i := range a.handlers {
		h := fmt.Sprintf("bench-counter-%d", i+1)
		for _, q := range []string{".h.", ".dead.", ".done.", ".failed.", ".paused."} {
			_, _ = ch.QueueDelete(a.ns+q+h, false, false, false)
		}
	}
	_, _ = ch.QueueDelete(a.ns+".handlers", false, false, false)
	_ = ch.ExchangeDelete(a.ns+".events", false, false)
	return err
}

// RawAMQPConfirm is RabbitMQ's ceiling for a durable publish with
// amqp091: a persistent message to one quorum queue on a confirm
// channel. Awaited, each Publish waits for its own confirm before the
// next is sent (one publisher's ceiling). Pipelined, concurrent Publish
// calls share the channel, so up to 16 confirms are in flight, each
// Publish still returning only once its own confirm arrived. It has no
// consumer, so it runs the publish scenarios only.
func RawAMQPConfirm(url string, pipelined bool) System {
	name, notes := "amqp-raw-confirm-awaited", "amqp091, persistent publish to a quorum queue, one confirm awaited at a time"
	if pipelined {
		name, notes = "amqp-raw-confirm-pipelined", "amqp091, persistent publishes to a quorum queue, concurrent publishers' confirms in flight together"
	}
	return System{
		Name:  name,
		Group: "amqp",
		Notes: notes,
		Open: func(ctx context.Context, _ string, _ int, _ HandleFunc) (Instance, error) {
			c, err := amqp.Dial(url)
			if err != nil {
				return nil, err
			}
			ch, err := c.Channel()
			if err != nil {
				c.Close()
				return nil, err
			}
			if err := ch.Confirm(false); err != nil {
				c.Close()
				return nil, err
			}
			q := newNamespace() + ".raw"
			if _, err := ch.QueueDeclare(q, true, false, false, false, amqp.Table{"x-queue-type": "quorum"}); err != nil {
				c.Close()
				return nil, err
			}
			return &rawAMQP{c: c, ch: ch, q: q, pipelined: pipelined}, nil
		},
	}
}

type rawAMQP struct {
	c         *amqp.Connection
	ch        *amqp.Channel
	q         string
	pipelined bool
	mu        sync.Mutex // serializes basic.publish (and, awaited, the wait)
}

func (r *rawAMQP) Publish(ctx context.Context, payload []byte) error {
	r.mu.Lock()
	dc, err := r.ch.PublishWithDeferredConfirmWithContext(ctx, "", r.q, false, false,
		amqp.Publishing{DeliveryMode: amqp.Persistent, ContentType: "application/json", Body: payload})
	if err != nil {
		r.mu.Unlock()
		return err
	}
	if r.pipelined {
		r.mu.Unlock()
	} else {
		defer r.mu.Unlock()
	}
	ok, err := dc.WaitContext(ctx)
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("amqp-raw: the broker nacked a publish")
	}
	return nil
}

func (r *rawAMQP) Close() error {
	_, _ = r.ch.QueueDelete(r.q, false, false, false)
	return r.c.Close()
}
