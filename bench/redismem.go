package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/ripplehq/ripple"
)

// RedisMemory is what Ripple's redis transport keeps in Redis per event,
// from the server's INFO memory used_memory before and after.
type RedisMemory struct {
	// Events is how many events were published.
	Events int
	// WaitingPerEvent is bytes per event while all of them wait for their
	// handler (a subscribed handler that is not running): the stream
	// entry. Events published without an id of their own need no dedup
	// record.
	WaitingPerEvent float64
	// HandledPerEvent is bytes per event once the handler has handled them
	// all and retention has run with its defaults: about 1,000 completed
	// entries stay in the stream.
	HandledPerEvent float64
	// StreamLen is the handler stream's length after retention.
	StreamLen int64
	// Keys is how many keys the namespace holds after retention.
	Keys int
}

// MeasureRippleRedisMemory publishes n events through Ripple's redis
// transport at url, under a fresh prefix that it deletes afterwards, to one
// subscribed handler with the default retention, and reports Redis's memory
// per event while they wait and after they are handled. The server should
// be otherwise idle: used_memory counts everything in it.
func MeasureRippleRedisMemory(ctx context.Context, url string, n int) (RedisMemory, error) {
	prefix := newNamespace()
	u := withQuery(url, "prefix", prefix)
	c, err := newRedisClient(ctx, url, 0)
	if err != nil {
		return RedisMemory{}, err
	}
	defer c.Close()
	defer func() {
		dctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_ = deleteKeys(dctx, c, prefix+":*")
	}()
	quiet := ripple.WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil)))
	const handler = "bench-counter-1"
	var handled atomic.Int64
	count := func(context.Context, ripple.Event) error { handled.Add(1); return nil }

	// Subscribe the handler, then stop it, so that the events wait.
	sub, err := ripple.Open(ctx, u, quiet)
	if err != nil {
		return RedisMemory{}, err
	}
	err = sub.On(EventType, handler, count, ripple.Concurrency(HandlerConcurrency))
	if err == nil {
		err = sub.Start(ctx)
	}
	if err = errors.Join(err, sub.Close()); err != nil {
		return RedisMemory{}, err
	}

	before, err := usedMemory(ctx, c)
	if err != nil {
		return RedisMemory{}, err
	}
	pub, err := ripple.Open(ctx, u, quiet)
	if err != nil {
		return RedisMemory{}, err
	}
	var (
		next    atomic.Int64
		wg      sync.WaitGroup
		errOnce sync.Once
		pubErr  error
	)
	now := time.Now()
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := next.Add(1) - 1; i < int64(n); i = next.Add(1) - 1 {
				if _, err := pub.Publish(ctx, EventType, json.RawMessage(NewPayload(i, now))); err != nil {
					errOnce.Do(func() { pubErr = err })
					return
				}
			}
		}()
	}
	wg.Wait()
	if err := errors.Join(pubErr, pub.Close()); err != nil {
		return RedisMemory{}, err
	}
	waiting, err := usedMemory(ctx, c)
	if err != nil {
		return RedisMemory{}, err
	}

	bus, err := ripple.Open(ctx, u, quiet)
	if err != nil {
		return RedisMemory{}, err
	}
	defer bus.Close()
	if err := bus.On(EventType, handler, count, ripple.Concurrency(HandlerConcurrency)); err != nil {
		return RedisMemory{}, err
	}
	if err := bus.Start(ctx); err != nil {
		return RedisMemory{}, err
	}
	deadline := time.Now().Add(2 * time.Minute)
	for handled.Load() < int64(n) {
		if time.Now().After(deadline) {
			return RedisMemory{}, fmt.Errorf("handled %d of %d events in 2 minutes", handled.Load(), n)
		}
		time.Sleep(20 * time.Millisecond)
	}
	// A receiving subscription applies retention every 2 s; wait until the
	// stream has been trimmed to about its retained count.
	stream := prefix + ":s:" + handler
	var streamLen int64
	for range 50 {
		time.Sleep(200 * time.Millisecond)
		if streamLen, err = c.XLen(ctx, stream).Result(); err != nil {
			return RedisMemory{}, err
		}
		if streamLen <= 1100 {
			break
		}
	}
	done, err := usedMemory(ctx, c)
	if err != nil {
		return RedisMemory{}, err
	}
	keys := 0
	iter := c.Scan(ctx, 0, prefix+":*", 1000).Iterator()
	for iter.Next(ctx) {
		keys++
	}
	if err := iter.Err(); err != nil {
		return RedisMemory{}, err
	}
	return RedisMemory{
		Events:          n,
		WaitingPerEvent: float64(waiting-before) / float64(n),
		HandledPerEvent: float64(done-before) / float64(n),
		StreamLen:       streamLen,
		Keys:            keys,
	}, nil
}

func usedMemory(ctx context.Context, c *goredis.Client) (int64, error) {
	info, err := c.Info(ctx, "memory").Result()
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "used_memory:"); ok {
			return strconv.ParseInt(v, 10, 64)
		}
	}
	return 0, errors.New("INFO memory has no used_memory line")
}

// WriteRedisMemory writes a RedisMemory as a short markdown list.
func WriteRedisMemory(w io.Writer, m RedisMemory) {
	fmt.Fprintf(w, "- %s events waiting for their handler: %.0f bytes of Redis memory per event (its stream entry)\n", count(float64(m.Events)), m.WaitingPerEvent)
	fmt.Fprintf(w, "- after the handler handled them, with the default retention: %.0f bytes per published event; the stream keeps %d entries and the namespace %d keys (events with Ripple-generated ids need no dedup record)\n", m.HandledPerEvent, m.StreamLen, m.Keys)
}
