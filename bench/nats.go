package bench

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	wmjs "github.com/ThreeDotsLabs/watermill-nats/v2/pkg/jetstream"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	_ "github.com/ripplehq/ripple/transport/nats"
)

// natsSystemNames lists the systems that need a NATS server, in report
// order.
var natsSystemNames = []string{
	"ripple-nats", "ripple-nats-history-memory", "watermill-nats", "nats-raw-publish-awaited", "nats-raw-publishasync-16",
}

// NATSURLFromEnv returns the NATS URL set in RIPPLE_BENCH_NATS_URL or,
// failing that, RIPPLE_TEST_NATS_URL (which the project's test script
// exports), or "".
func NATSURLFromEnv() string {
	if u := os.Getenv("RIPPLE_BENCH_NATS_URL"); u != "" {
		return u
	}
	return os.Getenv("RIPPLE_TEST_NATS_URL")
}

// NATSSystems returns the systems that talk to the NATS server (JetStream
// enabled) at url. Each instance works in streams of its own and deletes
// them when it closes. The server's sync_interval decides what a publish
// acknowledgement means; scripts/test runs it with sync_interval: always.
func NATSSystems(url string) []System {
	url = strings.TrimSuffix(url, "/")
	out := []System{
		RippleSystem("ripple-nats", "nats transport, default settings (server as given: scripts/test runs sync_interval: always)",
			func(string) string { return url + "/" + newNamespace() }),
		RippleSystem("ripple-nats-history-memory", "nats transport, ?history=memory: completed history in memory storage (a server restart forgets it)",
			func(string) string { return url + "/" + newNamespace() + "?history=memory" }),
		WatermillNATS(url),
		RawJetStream(url, false),
		RawJetStream(url, true),
	}
	for i := range out {
		out[i].Group = "nats"
	}
	out[0].Open = cleanupNATSAfter(out[0].Open, url)
	out[1].Open = cleanupNATSAfter(out[1].Open, url)
	return out
}

// cleanupNATSAfter wraps a Ripple system's Open so that closing the
// instance deletes its namespace's streams and buckets.
func cleanupNATSAfter(open func(context.Context, string, int, HandleFunc) (Instance, error), url string) func(context.Context, string, int, HandleFunc) (Instance, error) {
	return func(ctx context.Context, dir string, handlers int, h HandleFunc) (Instance, error) {
		inst, err := open(ctx, dir, handlers, h)
		if err != nil {
			return nil, err
		}
		return natsCleanup{inst, url}, nil
	}
}

type natsCleanup struct {
	Instance
	url string
}

func (c natsCleanup) Close() error {
	err := c.Instance.Close()
	ri, ok := c.Instance.(rippleInstance)
	if !ok {
		return err
	}
	prefix, _, _ := strings.Cut(ri.url[strings.LastIndex(ri.url, "/")+1:], "?")
	return errors.Join(err, deleteNATS(c.url, func(js jetstream.JetStream, ctx context.Context) error {
		var errs []error
		for _, s := range []string{"events", "done", "dlq"} {
			if e := js.DeleteStream(ctx, "ripple-"+prefix+"-"+s); e != nil && !errors.Is(e, jetstream.ErrStreamNotFound) {
				errs = append(errs, e)
			}
		}
		for _, b := range []string{"claims", "state"} {
			if e := js.DeleteKeyValue(ctx, "ripple-"+prefix+"-"+b); e != nil && !errors.Is(e, jetstream.ErrBucketNotFound) {
				errs = append(errs, e)
			}
		}
		return errors.Join(errs...)
	}))
}

// deleteNATS connects to url and runs del (or any other administration).
func deleteNATS(url string, del func(jetstream.JetStream, context.Context) error) error {
	nc, err := nats.Connect(url)
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return del(js, ctx)
}

// RawJetStream is JetStream's ceiling for a publish: the payload published
// to a file-storage stream with no consumer, nothing else. Awaited, each
// Publish is one jetstream.Publish waiting for its PubAck. Async, each
// Publish is one PublishAsync awaited through its future, so 16
// publishers keep 16 in flight on one connection. It has no consumer, so
// it runs the publish scenarios only.
func RawJetStream(url string, async bool) System {
	name, notes := "nats-raw-publish-awaited", "nats.go jetstream.Publish, one awaited PubAck per publish, file storage"
	if async {
		name, notes = "nats-raw-publishasync-16", "nats.go jetstream.PublishAsync, each publish awaits its own future (16 in flight with 16 publishers)"
	}
	return System{
		Name:  name,
		Notes: notes,
		Open: func(ctx context.Context, _ string, _ int, _ HandleFunc) (Instance, error) {
			nc, err := nats.Connect(url)
			if err != nil {
				return nil, err
			}
			js, err := jetstream.New(nc)
			if err != nil {
				nc.Close()
				return nil, err
			}
			stream := newNamespace() + "-raw"
			if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: stream, Subjects: []string{stream}, Storage: jetstream.FileStorage}); err != nil {
				nc.Close()
				return nil, err
			}
			return &rawJetStream{nc: nc, js: js, stream: stream, async: async}, nil
		},
	}
}

type rawJetStream struct {
	nc     *nats.Conn
	js     jetstream.JetStream
	stream string
	async  bool
}

func (r *rawJetStream) Publish(ctx context.Context, payload []byte) error {
	if !r.async {
		_, err := r.js.Publish(ctx, r.stream, payload)
		return err
	}
	f, err := r.js.PublishAsync(r.stream, payload)
	if err != nil {
		return err
	}
	select {
	case <-f.Ok():
		return nil
	case err := <-f.Err():
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (r *rawJetStream) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := r.js.DeleteStream(ctx, r.stream)
	r.nc.Close()
	return err
}

// WatermillNATS is Watermill's NATS JetStream Pub/Sub (watermill-nats v2,
// package jetstream): one stream per topic (file storage), one awaited
// publish per message, and per handler a durable consumer shared by 10
// subscribers (its concurrency), each acking after counting.
func WatermillNATS(url string) System {
	return System{
		Name:     "watermill-nats",
		Consumes: true,
		Notes:    "watermill-nats v2 jetstream, one awaited publish per message; 10 subscribers per durable consumer, ack after counting",
		Open: func(ctx context.Context, _ string, handlers int, h HandleFunc) (Instance, error) {
			topic := newNamespace() + "-wm"
			w := &watermillPeer{topic: topic, cleanup: func() error {
				return deleteNATS(url, func(js jetstream.JetStream, ctx context.Context) error {
					if err := js.DeleteStream(ctx, topic); err != nil && !errors.Is(err, jetstream.ErrStreamNotFound) {
						return err
					}
					return nil
				})
			}}
			// The stream watermill-nats's default configurator describes
			// (name and subject = topic, file storage); its grouped
			// consumers expect it to exist.
			err := deleteNATS(url, func(js jetstream.JetStream, ctx context.Context) error {
				_, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: topic, Subjects: []string{topic}, Storage: jetstream.FileStorage})
				return err
			})
			if err != nil {
				return nil, err
			}
			pub, err := wmjs.NewPublisher(wmjs.PublisherConfig{URL: url, Logger: watermill.NopLogger{}})
			if err != nil {
				return nil, err
			}
			w.pub = pub
			for i := range handlers {
				for range HandlerConcurrency {
					sub, err := wmjs.NewSubscriber(wmjs.SubscriberConfig{
						URL:                 url,
						Logger:              watermill.NopLogger{},
						ResourceInitializer: wmjs.GroupedConsumer(fmt.Sprintf("bench-counter-%d", i+1)),
					})
					if err != nil {
						return nil, errors.Join(err, w.Close())
					}
					if err := w.read(sub, 1, h); err != nil {
						return nil, errors.Join(err, w.Close())
					}
				}
			}
			return w, nil
		},
	}
}
