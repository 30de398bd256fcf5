package bench

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	_ "github.com/ripplehq/ripple/transport/kafka"
)

// kafkaCluster is the Kafka the kafka systems use: RIPPLE_BENCH_KAFKA_URL
// (kafka://HOST:PORT,...) when set, else an in-process kfake cluster of
// three brokers started on first use. kfake is a protocol fake with no
// disk and no replication, so the kafka rows compare clients, not brokers.
var kafkaCluster struct {
	once    sync.Once
	brokers string
	err     error
}

func kafkaBrokers() (string, error) {
	kafkaCluster.once.Do(func() {
		if u := os.Getenv("RIPPLE_BENCH_KAFKA_URL"); u != "" {
			kafkaCluster.brokers = strings.SplitN(strings.TrimPrefix(u, "kafka://"), "?", 2)[0]
			return
		}
		c, err := kfake.NewCluster(kfake.NumBrokers(3))
		if err != nil {
			kafkaCluster.err = err
			return
		}
		kafkaCluster.brokers = strings.Join(c.ListenAddrs(), ",")
	})
	return kafkaCluster.brokers, kafkaCluster.err
}

// KafkaSystems are Ripple's kafka transport and franz-go's raw produce,
// awaited and asynchronous with at most 16 records in flight.
func KafkaSystems() []System {
	rk := RippleSystem("ripple-kafka", "kafka transport (franz-go, acks=all, idempotent producer) on an in-process kfake cluster of 3 brokers",
		func(string) string {
			b, err := kafkaBrokers()
			if err != nil {
				return "kafka://unavailable:1"
			}
			return "kafka://" + b + "?namespace=" + newNamespace()
		})
	rk.Group = "kafka"
	return []System{rk, rawKafka(false), rawKafka(true), WatermillKafka()}
}

// rawKafka is franz-go producing the payload to one topic and nothing
// else. Awaited, each Publish waits for its acknowledgement (acks=all).
// Async, Publish returns once the record is handed to the client, with
// at most 16 unacknowledged; errors surface at Close. It has no consumer.
func rawKafka(async bool) System {
	name, notes := "kafka-raw-awaited", "franz-go ProduceSync per publish, acks=all, on kfake"
	if async {
		name, notes = "kafka-raw-async16", "franz-go Produce with a callback, at most 16 records in flight, acks=all, on kfake; Publish does not wait for the ack"
	}
	return System{
		Name:  name,
		Group: "kafka",
		Notes: notes,
		Open: func(ctx context.Context, _ string, _ int, _ HandleFunc) (Instance, error) {
			b, err := kafkaBrokers()
			if err != nil {
				return nil, err
			}
			cl, err := kgo.NewClient(kgo.SeedBrokers(strings.Split(b, ",")...), kgo.ProducerLinger(0), kgo.RequiredAcks(kgo.AllISRAcks()))
			if err != nil {
				return nil, err
			}
			topic := newNamespace() + ".raw"
			if _, err := kadm.NewClient(cl).CreateTopic(ctx, 4, -1, nil, topic); err != nil {
				cl.Close()
				return nil, err
			}
			r := &rawKafkaInstance{cl: cl, topic: topic}
			if async {
				r.sem = make(chan struct{}, 16)
			}
			return r, nil
		},
	}
}

type rawKafkaInstance struct {
	cl    *kgo.Client
	topic string
	sem   chan struct{} // nil when awaited
	mu    sync.Mutex
	err   error
}

func (r *rawKafkaInstance) Publish(ctx context.Context, payload []byte) error {
	rec := &kgo.Record{Topic: r.topic, Value: payload}
	if r.sem == nil {
		return r.cl.ProduceSync(ctx, rec).FirstErr()
	}
	select {
	case r.sem <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	r.cl.Produce(ctx, rec, func(_ *kgo.Record, err error) {
		<-r.sem
		if err != nil {
			r.mu.Lock()
			r.err = errors.Join(r.err, err)
			r.mu.Unlock()
		}
	})
	return nil
}

func (r *rawKafkaInstance) Close() error {
	err := r.cl.Flush(context.Background())
	r.cl.Close()
	r.mu.Lock()
	defer r.mu.Unlock()
	return errors.Join(err, r.err)
}

// checkKafka evaluates the Kafka targets of ripple-kafka against franz-go's
// raw produce and Watermill's Kafka Pub/Sub of the same run (all on the
// same kfake cluster, so they compare clients).
func checkKafka(find func(string, Scenario) (Measurement, bool)) []Verdict {
	v := verdicts{find: find}
	v.ratio("Kafka: one awaiting publisher ≥ 0.8× raw awaited produce",
		"ripple-kafka", Pub1, "kafka-raw-awaited", Pub1, 0.8)
	v.ratio("Kafka: end-to-end, one awaiting publisher ≥ 0.8× raw awaited produce",
		"ripple-kafka", E2E1, "kafka-raw-awaited", Pub1, 0.8)
	v.ratio("Kafka: 16 publishers ≥ 0.5× raw produce with 16 in flight",
		"ripple-kafka", Pub16, "kafka-raw-async16", Pub16, 0.5)
	for _, sc := range []Scenario{E2E1, E2E16} {
		v.ratio(fmt.Sprintf("Kafka: end-to-end (%s) ≥ 2× watermill-kafka", sc), "ripple-kafka", sc, "watermill-kafka", sc, 2)
	}
	return v.out
}
