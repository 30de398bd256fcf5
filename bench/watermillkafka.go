package bench

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill"
	wmkafka "github.com/ThreeDotsLabs/watermill-kafka/v3/pkg/kafka"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

// watermillKafkaNotes says how WatermillKafka is configured, for the report.
const watermillKafkaNotes = "watermill-kafka v3 (Sarama) sync publisher, acks=all, idempotent producer; " +
	"one consumer group per handler reading a 4-partition topic from its start, ack after counting, on kfake"

// WatermillKafka is Watermill's Kafka Pub/Sub (watermill-kafka v3, on
// Sarama) against the same cluster as ripple-kafka. The publisher is
// watermill's sync publisher (each Publish waits for the acknowledgement)
// with the settings ripple-kafka uses: acks=all and the idempotent
// producer. The topic has 4 partitions, like ripple-kafka's event topic;
// each handler is one consumer group (a watermill Subscriber), which
// hands out one message per partition at a time and takes the next after
// the ack, so a handler runs at most 4 at once. The groups read the
// topic from its start, so that nothing published while they join is
// missed. Sarama speaks watermill's default protocol version (Kafka
// 1.0.0): at 2.8.0 or 3.6.0 its consumer group fails against kfake with
// "kafka: error decoding packet: invalid byteslice length".
func WatermillKafka() System {
	return System{
		Name:     "watermill-kafka",
		Group:    "kafka",
		Consumes: true,
		Notes:    watermillKafkaNotes,
		Open: func(ctx context.Context, _ string, handlers int, h HandleFunc) (Instance, error) {
			b, err := kafkaBrokers()
			if err != nil {
				return nil, err
			}
			brokers := strings.Split(b, ",")
			topic := newNamespace() + ".wm"
			cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
			if err != nil {
				return nil, err
			}
			_, err = kadm.NewClient(cl).CreateTopic(ctx, 4, -1, nil, topic)
			cl.Close()
			if err != nil {
				return nil, err
			}
			w := &watermillPeer{topic: topic}
			pcfg := wmkafka.DefaultSaramaSyncPublisherConfig()
			pcfg.Producer.RequiredAcks = sarama.WaitForAll
			pcfg.Producer.Idempotent = true
			pcfg.Net.MaxOpenRequests = 1
			pub, err := wmkafka.NewPublisher(wmkafka.PublisherConfig{
				Brokers: brokers, Marshaler: wmkafka.DefaultMarshaler{}, OverwriteSaramaConfig: pcfg,
			}, wmKafkaLog)
			if err != nil {
				return nil, err
			}
			w.pub = pub
			for i := range handlers {
				scfg := wmkafka.DefaultSaramaSubscriberConfig()
				scfg.Consumer.Offsets.Initial = sarama.OffsetOldest
				sub, err := wmkafka.NewSubscriber(wmkafka.SubscriberConfig{
					Brokers: brokers, Unmarshaler: wmkafka.DefaultMarshaler{}, OverwriteSaramaConfig: scfg,
					ConsumerGroup: fmt.Sprintf("%s.counter-%d", topic, i+1),
				}, wmKafkaLog)
				if err != nil {
					return nil, errors.Join(err, w.Close())
				}
				if err := w.read(sub, 1, h); err != nil {
					return nil, errors.Join(err, w.Close())
				}
			}
			return w, nil
		},
	}
}

// wmKafkaLog is the logger of the watermill-kafka clients.
var wmKafkaLog watermill.LoggerAdapter = watermill.NopLogger{}
