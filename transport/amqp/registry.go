package amqp

import (
	"context"
	"fmt"
	"time"

	"github.com/ripplehq/ripple/transport"

	amqp "github.com/rabbitmq/amqp091-go"
)

// The handler registry: a durable classic queue NAMESPACE.handlers with
// one persistent message per durable handler (its name as message id, its
// pattern as body), so that a process that subscribed nothing (ripple
// stats) can list the namespace's handlers. It is read with basic.get and
// every message is given back; a record missed while another process
// reads at the same moment only leads to a duplicate record, which
// listing folds.

func (d *Driver) registryName() string { return d.ns + ".handlers" }

// handlersFromRegistry returns name -> pattern of every registered
// handler (the latest record of a name wins).
func (d *Driver) handlersFromRegistry(ctx context.Context) (map[string]registered, error) {
	q := d.registryName()
	if err := d.declareOnce(ctx, q, nil, true, false); err != nil {
		return nil, err
	}
	out := map[string]registered{}
	err := d.admin(ctx, func(ch *amqp.Channel) error {
		before, err := ch.QueueDeclarePassive(q, true, false, false, false, nil)
		if err != nil {
			return err
		}
		var last uint64
		for {
			m, ok, err := ch.Get(q, false)
			if err != nil {
				return err
			}
			if !ok {
				break
			}
			last = m.DeliveryTag
			out[m.MessageId] = registered{pattern: string(m.Body), ephemeral: m.Type == ephemeralEntry}
		}
		if last == 0 {
			return nil
		}
		if err := ch.Nack(last, true, true); err != nil {
			return err
		}
		// Wait until the queue shows them again, so the next reader sees
		// them.
		deadline := time.Now().Add(2 * time.Second)
		for time.Now().Before(deadline) {
			st, err := ch.QueueDeclarePassive(q, true, false, false, false, nil)
			if err != nil || st.Messages >= before.Messages {
				return err
			}
			time.Sleep(2 * time.Millisecond)
		}
		return nil
	})
	return out, err
}

// register records a durable handler in the registry unless it is there
// with the same pattern.
func (d *Driver) register(ctx context.Context, name, pattern string, ephemeral bool) error {
	hs, err := d.handlersFromRegistry(ctx)
	if err != nil {
		return err
	}
	if r, ok := hs[name]; ok && r == (registered{pattern: pattern, ephemeral: ephemeral}) {
		return nil
	}
	kind := ""
	if ephemeral {
		kind = ephemeralEntry
	}
	return d.pub.send(ctx, []outgoing{{key: d.registryName(), msg: amqp.Publishing{
		MessageId: name, Body: []byte(pattern), Type: kind, DeliveryMode: amqp.Persistent, Timestamp: time.Now(),
	}}})
}

// registered is a handler as the registry records it.
type registered struct {
	pattern string
	// ephemeral entries are listed by Stats only while their queue
	// exists: a process killed while tailing leaves its entry behind,
	// and the broker expires the queue.
	ephemeral bool
}

// ephemeralEntry is the message type of an ephemeral handler's entry.
const ephemeralEntry = "ephemeral"

// unregister removes a handler's records from the registry.
func (d *Driver) unregister(ctx context.Context, name string) error {
	q := d.registryName()
	if err := d.declareOnce(ctx, q, nil, true, false); err != nil {
		return err
	}
	return d.admin(ctx, func(ch *amqp.Channel) error {
		for {
			m, ok, err := ch.Get(q, false)
			if err != nil || !ok {
				return err
			}
			if m.MessageId == name {
				if err := m.Ack(false); err != nil {
					return err
				}
			}
		}
	})
}

// refuseKindClash refuses an ephemeral subscription under a durable
// handler's name and the converse: one would delete or expire the other's
// queue.
func (d *Driver) refuseKindClash(ctx context.Context, spec transport.SubscriptionSpec) error {
	hs, err := d.handlersFromRegistry(ctx)
	if err != nil {
		return err
	}
	r, ok := hs[spec.Name]
	switch {
	case !ok || r.ephemeral == spec.Ephemeral:
		return nil
	case spec.Ephemeral:
		return fmt.Errorf("amqp: handler %q is durable; it cannot be subscribed as an ephemeral one: give the ephemeral subscription a name of its own", spec.Name)
	}
	if _, exists, err := d.passiveCount(ctx, d.queueName(spec.Name)); err != nil || !exists {
		// The ephemeral queue expired with its process: the name is free.
		return err
	}
	return fmt.Errorf("amqp: handler %q is an ephemeral subscription of a running process; a durable handler needs a name of its own", spec.Name)
}
