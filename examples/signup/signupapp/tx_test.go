package signupapp

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/ripplehq/ripple"
	"github.com/ripplehq/ripple/transport/sqlite"
)

// On sqlite:// the user row and its event are one transaction of the bus's
// database: a signup stores both, a taken email stores neither.
func TestSignupOnSQLiteUsesOneTransaction(t *testing.T) {
	ctx := context.Background()
	tally := NewTally()
	bus, err := ripple.Open(ctx, "sqlite://"+filepath.Join(t.TempDir(), "signup.db"), ripple.WithHooks(tally),
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
	db, err := sqlite.DB(bus)
	if err != nil {
		t.Fatal(err)
	}
	count := func(q string) int {
		t.Helper()
		var n int
		if err := db.QueryRow(q).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	u, ev, err := app.Signup(ctx, "ada@example.com")
	if err != nil {
		t.Fatal(err)
	}
	if n := count(`SELECT count(*) FROM signup_users WHERE email = 'ada@example.com'`); n != 1 {
		t.Fatalf("user rows %d, want 1", n)
	}
	if n := count(`SELECT count(*) FROM events`); n != 1 {
		t.Fatalf("events %d, want 1", n)
	}
	wctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	if err := tally.Wait(wctx, Handlers(), []string{ev.ID}); err != nil {
		t.Fatal(err)
	}
	if got := app.Effects(u.ID); !slices.Equal(got, Handlers()) {
		t.Fatalf("effects %v", got)
	}
	if _, _, err := app.Signup(ctx, "ada@example.com"); !errors.Is(err, ErrEmailTaken) {
		t.Fatalf("second signup: %v, want ErrEmailTaken", err)
	}
	if n := count(`SELECT count(*) FROM events`); n != 1 {
		t.Fatalf("a refused signup published its event: %d events", n)
	}
	if app.Users() != 1 {
		t.Fatalf("Users() = %d", app.Users())
	}
	if got, ok := app.User(u.ID); !ok || got.Email != u.Email {
		t.Fatalf("User(%s) = %+v %v", u.ID, got, ok)
	}
}
