package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/ripplehq/ripple"
	"github.com/ripplehq/ripple/outbox"
)

func relayEnv(t *testing.T, name string) string {
	v := os.Getenv(name)
	if v == "" {
		if os.Getenv("RIPPLE_TEST_REQUIRE_SERVERS") == "1" {
			t.Fatalf("%s is not set but RIPPLE_TEST_REQUIRE_SERVERS=1", name)
		}
		t.Skipf("set %s to run the relay command test", name)
	}
	return v
}

func TestRelayCommand(t *testing.T) {
	pg := relayEnv(t, "RIPPLE_TEST_POSTGRES_URL")
	rd := relayEnv(t, "RIPPLE_TEST_REDIS_URL")
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	schema := "cli_ob_" + hex.EncodeToString(b)
	rd += "?prefix=cli." + hex.EncodeToString(b)
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, pg)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	defer func() { _, _ = pool.Exec(context.Background(), "DROP SCHEMA IF EXISTS "+schema+" CASCADE") }()

	// A publisher whose relay runs elsewhere, and a consumer.
	ob, err := outbox.NewPostgres(pool, outbox.WithSchema(schema), outbox.RelayElsewhere())
	if err != nil {
		t.Fatal(err)
	}
	pub, err := ripple.Open(ctx, rd, ripple.WithOutbox(ob))
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	var got atomic.Int32
	if err := pub.On("cli.relay.done", "cli.sink", func(context.Context, ripple.Event) error { got.Add(1); return nil }); err != nil {
		t.Fatal(err)
	}
	if err := pub.Start(ctx); err != nil {
		t.Fatal(err)
	}
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pub.PublishTx(ctx, tx, "cli.relay.done", 1); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}

	rctx, cancel := context.WithCancel(ctx)
	var stdout, stderr bytes.Buffer
	done := make(chan int)
	go func() {
		done <- run(rctx, []string{"relay", "--from", pg, "--schema", schema, "--url", rd}, nil, &stdout, &stderr)
	}()
	deadline := time.Now().Add(30 * time.Second)
	for got.Load() == 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	cancel()
	if code := <-done; code != 0 {
		t.Fatalf("ripple relay exited %d: %s", code, stderr.String())
	}
	if got.Load() != 1 {
		t.Fatalf("the relayed event was handled %d times; want once (stderr: %s)", got.Load(), stderr.String())
	}
	if !strings.Contains(stderr.String(), "relaying the outbox") {
		t.Errorf("stderr does not say what is relayed: %s", stderr.String())
	}

	// --from is required and must be PostgreSQL.
	var e bytes.Buffer
	if code := run(ctx, []string{"relay", "--url", rd}, nil, &stdout, &e); code == 0 || !strings.Contains(e.String(), "--from is required") {
		t.Errorf("relay without --from: exit %d, %s", code, e.String())
	}
}
