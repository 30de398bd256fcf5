package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/ripplehq/ripple"
	"github.com/ripplehq/ripple/outbox"
)

// TxOverhead is what PublishTx adds to an application transaction that
// inserts one user row: the same sequential loop of transactions timed
// without and with a bus.PublishTx in each.
type TxOverhead struct {
	// Plain is BEGIN, one INSERT of a user row, COMMIT.
	Plain Measurement
	// WithPublish is the same transaction with bus.PublishTx of one event
	// on a postgres:// bus (one handler subscribed and running) before the
	// COMMIT.
	WithPublish Measurement
	// Queued is WithPublish with the handler subscribed but not running,
	// so its events wait: the transaction's own cost, without the
	// handler's lease and settle commits competing for the same server.
	Queued Measurement
}

// AddedQueued is Added for the Queued loop.
func (o TxOverhead) AddedQueued() float64 {
	if o.Queued.PerSec == 0 {
		return 0
	}
	return o.Plain.PerSec/o.Queued.PerSec - 1
}

// Added returns how much longer a transaction with PublishTx takes, as a
// fraction of the plain one (0.2 = 20% more).
func (o TxOverhead) Added() float64 {
	if o.WithPublish.PerSec == 0 {
		return 0
	}
	return o.Plain.PerSec/o.WithPublish.PerSec - 1
}

// MeasureTxOverhead runs n sequential transactions with PublishTx while the
// bus's handler is stopped, n while it runs, and 2n plain ones alternating
// with them in halves, so that a slower machine phase hurts each alike, on
// the PostgreSQL server at url.
func MeasureTxOverhead(ctx context.Context, url string, n int) (TxOverhead, error) {
	var out TxOverhead
	pool, err := newPGPool(ctx, url, 4)
	if err != nil {
		return out, err
	}
	defer pool.Close()
	schema := newSchema()
	defer dropSchema(url, schema)
	if _, err := pool.Exec(ctx, "CREATE SCHEMA "+schema+"; CREATE TABLE "+schema+".users (id bigserial PRIMARY KEY, email text NOT NULL, created_at timestamptz NOT NULL DEFAULT now())"); err != nil {
		return out, err
	}
	busURL := withQuery(url, "schema", newSchema())
	_, busSchema, _ := cutLast(busURL, "schema=")
	defer dropSchema(url, busSchema)
	bus, err := ripple.Open(ctx, busURL, ripple.WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil))))
	if err != nil {
		return out, err
	}
	defer bus.Close()
	if err := bus.On(EventType, "bench-counter-1", func(context.Context, ripple.Event) error { return nil }, ripple.Concurrency(HandlerConcurrency)); err != nil {
		return out, err
	}
	insert := "INSERT INTO " + schema + ".users (email) VALUES ($1)"
	payload := json.RawMessage(NewPayload(1, time.Now()))
	one := func(i int, publish bool) error {
		return pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, insert, fmt.Sprintf("user%d@example.com", i)); err != nil {
				return err
			}
			if publish {
				_, err := bus.PublishTx(ctx, tx, EventType, payload)
				return err
			}
			return nil
		})
	}
	// Warm both paths up.
	for i := range 100 {
		if err := one(i, i%2 == 0); err != nil {
			return out, err
		}
	}
	// Plain and queued alternate while the handler is stopped, then plain
	// and publish while it runs; the plain loops of both phases count.
	var plain, queued, running time.Duration
	half := n / 2
	seq := 100
	loop := func(publish bool) (time.Duration, error) {
		start := time.Now()
		for range half {
			seq++
			if err := one(seq, publish); err != nil {
				return 0, err
			}
		}
		return time.Since(start), nil
	}
	for phase := range 2 {
		if phase == 1 {
			if err := bus.Start(ctx); err != nil {
				return out, err
			}
		}
		for range 2 {
			p, err := loop(false)
			if err != nil {
				return out, err
			}
			w, err := loop(true)
			if err != nil {
				return out, err
			}
			plain += p
			if phase == 0 {
				queued += w
			} else {
				running += w
			}
		}
	}
	mk := func(d time.Duration, events int) Measurement {
		return Measurement{Events: int64(events), Elapsed: d, PerSec: float64(events) / d.Seconds()}
	}
	out.Plain, out.Queued, out.WithPublish = mk(plain, 4*half), mk(queued, 2*half), mk(running, 2*half)
	return out, nil
}

// MeasureOutboxRelay measures the outbox relay: n events are written to a
// PostgreSQL outbox (outbox.NewPostgres) with PublishTx on a redis:// bus
// that does not relay, 100 per transaction; then a bus with
// ripple.WithOutbox starts on the same outbox and the time until the outbox
// is empty gives the relay's rate to Redis. The bus's Redis keys and the
// outbox schema are removed afterwards.
func MeasureOutboxRelay(ctx context.Context, pgURL, redisURL string, n int) (Measurement, error) {
	pool, err := newPGPool(ctx, pgURL, 8)
	if err != nil {
		return Measurement{}, err
	}
	defer pool.Close()
	schema := newSchema()
	defer dropSchema(pgURL, schema)
	rURL := withQuery(redisURL, "prefix", newNamespace())
	defer func() {
		cctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if cl, err := newRedisClient(cctx, redisURL, 0); err == nil {
			_ = deleteKeys(cctx, cl, prefixOf(rURL)+":*")
			_ = cl.Close()
		}
	}()
	quiet := ripple.WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil)))

	// Fill the outbox without relaying.
	fillBox, err := outbox.NewPostgres(pool, outbox.WithSchema(schema), outbox.RelayElsewhere())
	if err != nil {
		return Measurement{}, err
	}
	filler, err := ripple.Open(ctx, rURL, ripple.WithOutbox(fillBox), quiet)
	if err != nil {
		return Measurement{}, err
	}
	payload := json.RawMessage(NewPayload(1, time.Now()))
	for done := 0; done < n; {
		k := min(100, n-done)
		err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
			for range k {
				if _, err := filler.PublishTx(ctx, tx, EventType, payload); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			_ = filler.Close()
			return Measurement{}, err
		}
		done += k
	}
	if err := filler.Close(); err != nil {
		return Measurement{}, err
	}
	if p, err := fillBox.Pending(ctx); err != nil || p != int64(n) {
		return Measurement{}, fmt.Errorf("outbox holds %d events after filling %d (err %v)", p, n, err)
	}

	// Relay.
	box, err := outbox.NewPostgres(pool, outbox.WithSchema(schema))
	if err != nil {
		return Measurement{}, err
	}
	start := time.Now()
	relay, err := ripple.Open(ctx, rURL, ripple.WithOutbox(box), quiet)
	if err != nil {
		return Measurement{}, err
	}
	defer relay.Close()
	if err := relay.Start(ctx); err != nil {
		return Measurement{}, err
	}
	deadline := time.Now().Add(2 * time.Minute)
	for {
		p, err := box.Pending(ctx)
		if err != nil {
			return Measurement{}, err
		}
		if p == 0 {
			break
		}
		if time.Now().After(deadline) {
			return Measurement{}, fmt.Errorf("outbox relay: %d of %d events still pending after 2 minutes", p, n)
		}
		time.Sleep(2 * time.Millisecond)
	}
	d := time.Since(start)
	return Measurement{Events: int64(n), Elapsed: d, PerSec: float64(n) / d.Seconds()}, nil
}

// PostgresExtras holds the PostgreSQL measurements that are not systems.
type PostgresExtras struct {
	Tx       TxOverhead
	TxErr    error
	Relay    Measurement
	RelayErr error
	// RelayRan is false when no Redis server was given.
	RelayRan bool
}

// WritePostgresExtras writes the PublishTx overhead and the relay rate.
func WritePostgresExtras(w io.Writer, x PostgresExtras) {
	if x.TxErr != nil {
		fmt.Fprintf(w, "- PublishTx overhead: error: %v\n", x.TxErr)
	} else {
		fmt.Fprintf(w, "- PublishTx overhead (sequential transactions, one user-row INSERT each): without PublishTx %s tx/s (%.2f ms each); with PublishTx, the handler stopped so its events wait, %s tx/s (%.2f ms each): +%.0f%%; with PublishTx and the handler running, %s tx/s (%.2f ms each): +%.0f%%\n",
			count(x.Tx.Plain.PerSec), 1000/x.Tx.Plain.PerSec,
			count(x.Tx.Queued.PerSec), 1000/x.Tx.Queued.PerSec, 100*x.Tx.AddedQueued(),
			count(x.Tx.WithPublish.PerSec), 1000/x.Tx.WithPublish.PerSec, 100*x.Tx.Added())
	}
	switch {
	case !x.RelayRan:
		fmt.Fprintln(w, "- outbox relay to Redis: not measured (no Redis server given)")
	case x.RelayErr != nil:
		fmt.Fprintf(w, "- outbox relay to Redis: error: %v\n", x.RelayErr)
	default:
		fmt.Fprintf(w, "- outbox relay to Redis (postgres outbox, ripple.WithOutbox on redis://): %d events in %v = %s events/s\n",
			x.Relay.Events, x.Relay.Elapsed.Round(time.Millisecond), count(x.Relay.PerSec))
	}
}

// CheckPostgresExtras evaluates the PublishTx and relay targets.
func CheckPostgresExtras(x PostgresExtras) []Verdict {
	var out []Verdict
	if x.TxErr == nil && x.Tx.WithPublish.PerSec > 0 && x.Tx.Queued.PerSec > 0 {
		out = append(out, Verdict{
			Target: "Postgres: PublishTx adds ≤ 20% to a transaction that inserts one user row (handler stopped: the transaction's own cost)",
			Measured: fmt.Sprintf("%.2f ms → %.2f ms per tx: +%.0f%%",
				1000/x.Tx.Plain.PerSec, 1000/x.Tx.Queued.PerSec, 100*x.Tx.AddedQueued()),
			Pass: x.Tx.AddedQueued() <= 0.2,
		}, Verdict{
			Target: "Postgres: the same, with the handler running on the same server",
			Measured: fmt.Sprintf("%.2f ms → %.2f ms per tx: +%.0f%%",
				1000/x.Tx.Plain.PerSec, 1000/x.Tx.WithPublish.PerSec, 100*x.Tx.Added()),
			Pass: x.Tx.Added() <= 0.2,
		})
	}
	if x.RelayRan && x.RelayErr == nil {
		out = append(out, Verdict{
			Target:   "Postgres: outbox relay to redis moves ≥ 20,000 events/s",
			Measured: fmt.Sprintf("%s events/s", count(x.Relay.PerSec)),
			Pass:     x.Relay.PerSec >= 20_000,
		})
	}
	return out
}
