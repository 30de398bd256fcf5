package amqp

import (
	"context"
	"time"

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
func (d *Driver) handlersFromRegistry(ctx context.Context) (map[string]string, error) {
	q := d.registryName()
	if err := d.declareOnce(ctx, q, nil, true, false); err != nil {
		return nil, err
	}
	out := map[string]string{}
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
			out[m.MessageId] = string(m.Body)
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
func (d *Driver) register(ctx context.Context, name, pattern string) error {
	hs, err := d.handlersFromRegistry(ctx)
	if err != nil {
		return err
	}
	if p, ok := hs[name]; ok && p == pattern {
		return nil
	}
	return d.pub.send(ctx, []outgoing{{key: d.registryName(), msg: amqp.Publishing{
		MessageId: name, Body: []byte(pattern), DeliveryMode: amqp.Persistent, Timestamp: time.Now(),
	}}})
}

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
