package signupapp

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"io"
	"log/slog"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ripplehq/ripple"
	"github.com/ripplehq/ripple/transport/postgres"
)

// On postgres:// the user row and its event are one transaction of the
// application's database: a signup stores both, a taken email stores
// neither.
func TestSignupOnPostgresUsesOneTransaction(t *testing.T) {
	base := os.Getenv("RIPPLE_TEST_POSTGRES_URL")
	if base == "" {
		if os.Getenv("RIPPLE_TEST_REQUIRE_SERVERS") == "1" {
			t.Fatal("RIPPLE_TEST_POSTGRES_URL is not set; scripts/test starts a PostgreSQL server")
		}
		t.Skip("no PostgreSQL server: set RIPPLE_TEST_POSTGRES_URL (scripts/test starts one)")
	}
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	run := hex.EncodeToString(b)
	schema := "signup_" + run
	sep := "?"
	if strings.Contains(base, "?") {
		sep = "&"
	}
	ctx := context.Background()
	tally := NewTally()
	bus, err := ripple.Open(ctx, base+sep+"schema="+schema, ripple.WithHooks(tally),
		ripple.WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil))))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = bus.Close() })
	cfg := DefaultConfig()
	cfg.Timings, cfg.StripeFailureRate = fast, 0
	app, err := New(bus, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := bus.Start(ctx); err != nil {
		t.Fatal(err)
	}
	pool, err := postgres.Pool(bus)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_, _ = pool.Exec(context.Background(), `DROP SCHEMA IF EXISTS `+schema+` CASCADE`)
	})
	count := func(q string, args ...any) int {
		t.Helper()
		var n int
		if err := pool.QueryRow(ctx, q, args...).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	email := "ada-" + run + "@example.com"
	u, ev, err := app.Signup(ctx, email)
	if err != nil {
		t.Fatal(err)
	}
	if n := count(`SELECT count(*) FROM `+schema+`.signup_users WHERE email = $1`, email); n != 1 {
		t.Fatalf("user rows %d, want 1", n)
	}
	events := `SELECT count(*) FROM ` + schema + `.events`
	if n := count(events); n != 1 {
		t.Fatalf("events %d, want 1", n)
	}
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := tally.Wait(wctx, Handlers(), []string{ev.ID}); err != nil {
		t.Fatal(err)
	}
	if got := app.Effects(u.ID); !slices.Equal(got, Handlers()) {
		t.Fatalf("effects %v", got)
	}
	if _, _, err := app.Signup(ctx, email); !errors.Is(err, ErrEmailTaken) {
		t.Fatalf("second signup: %v, want ErrEmailTaken", err)
	}
	if n := count(events); n != 1 {
		t.Fatalf("a refused signup published its event: %d events", n)
	}
}
