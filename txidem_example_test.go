package ripple_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/ripplehq/ripple"
	"github.com/ripplehq/ripple/transport/sqlite"
)

// A handler that writes to its own database, publishes a follow-up event
// and marks the event done in one transaction has exactly-once effects:
// a redelivery (here the first attempt fails after its commit, as a crash
// before the bus acknowledged it would) finds the event done and is
// skipped; a duplicate delivery already running gets ErrAlreadyDone from
// CompleteTx and rolls back.
func ExampleBus_CompleteTx() {
	ctx := context.Background()
	dir, err := os.MkdirTemp("", "ripple-example")
	if err != nil {
		panic(err)
	}
	defer os.RemoveAll(dir)
	bus, err := ripple.Open(ctx, "sqlite://"+filepath.Join(dir, "app.db"))
	if err != nil {
		panic(err)
	}
	defer bus.Close()
	db, err := sqlite.DB(bus) // the application's tables live in the bus's database
	if err != nil {
		panic(err)
	}
	if _, err := db.ExecContext(ctx, `CREATE TABLE charges (order_id TEXT NOT NULL)`); err != nil {
		panic(err)
	}

	attempts := 0
	err = bus.On("order.placed", "billing.charge", func(ctx context.Context, e ripple.Event) error {
		attempts++
		tx, err := db.BeginTx(ctx, nil)
		if err != nil {
			return err
		}
		defer tx.Rollback()
		if err := bus.CompleteTx(ctx, tx); errors.Is(err, ripple.ErrAlreadyDone) {
			fmt.Println(e.ID, "already done: rolled back")
			return nil
		} else if err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO charges (order_id) VALUES (?)`, e.ID); err != nil {
			return err
		}
		if _, err := bus.PublishTx(ctx, tx, "payment.captured", e.ID); err != nil {
			return err
		}
		if err := tx.Commit(); err != nil {
			return err
		}
		fmt.Println("charged", e.ID)
		if attempts == 1 {
			return errors.New("lost before the acknowledgement") // the event is delivered again
		}
		return nil
	}, ripple.Backoff(10*time.Millisecond, 10*time.Millisecond))
	if err != nil {
		panic(err)
	}
	if err := bus.Start(ctx); err != nil {
		panic(err)
	}
	if _, err := bus.Publish(ctx, "order.placed", map[string]int{"cents": 1250}, ripple.WithID("o-1")); err != nil {
		panic(err)
	}
	wctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if err := bus.WaitIdle(wctx); err != nil {
		panic(err)
	}
	var n int
	if err := db.QueryRowContext(ctx, `SELECT count(*) FROM charges`).Scan(&n); err != nil {
		panic(err)
	}
	fmt.Println("charges:", n)
	// Output:
	// charged o-1
	// charges: 1
}
