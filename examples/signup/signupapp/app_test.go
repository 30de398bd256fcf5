package signupapp

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ripplehq/ripple"
	_ "github.com/ripplehq/ripple/transport/memory"
)

// fast are the article's timings a thousand times faster.
var fast = ArticleTimings().Scaled(0.001)

func newApp(t *testing.T, cfg Config) (*App, *ripple.Bus, *Tally) {
	t.Helper()
	tally := NewTally()
	bus, err := ripple.Open(context.Background(), "memory://", ripple.WithHooks(tally),
		ripple.WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil))))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = bus.Close() })
	app, err := New(bus, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := bus.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	return app, bus, tally
}

func TestEventDrivenSignupReachesEveryHandler(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Timings = fast
	cfg.Seed = 7
	app, _, tally := newApp(t, cfg)
	ctx := context.Background()

	const n = 20
	var ids, events []string
	for i := range n {
		u, ev, err := app.Signup(ctx, strings.Repeat("x", i+1)+"@example.com")
		if err != nil {
			t.Fatal(err)
		}
		if ev.Type != EventSignupCompleted || ev.Key != u.ID {
			t.Fatalf("published %s with key %q, want %s keyed by the user id %s", ev.Type, ev.Key, EventSignupCompleted, u.ID)
		}
		ids = append(ids, u.ID)
		events = append(events, ev.ID)
	}
	wctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	if err := tally.Wait(wctx, Handlers(), events); err != nil {
		t.Fatal(err)
	}
	for _, id := range ids {
		if got := app.Effects(id); !slices.Equal(got, Handlers()) {
			t.Errorf("user %s: effects %v, want all of %v", id, got, Handlers())
		}
	}
	for _, h := range Handlers() {
		c := tally.Count(h, events...)
		if c != tally.Count(h) {
			t.Errorf("%s: counts over this run's events %+v differ from the counts over all %+v", h, c, tally.Count(h))
		}
		if c.Completed != n || c.Dead != 0 {
			t.Errorf("%s: %+v, want %d completed and none dead", h, c, n)
		}
		if h != HandlerStripeCustomer && c.Retried != 0 {
			t.Errorf("%s retried %d times; only Stripe fails", h, c.Retried)
		}
	}
	// Failures depend only on seed, email and attempt, so the retries are
	// exactly the failed first attempts plus the failed later ones.
	wantRetries := 0
	for i := range n {
		for attempt := 1; StripeFails(cfg.Seed, strings.Repeat("x", i+1)+"@example.com", attempt, cfg.StripeFailureRate); attempt++ {
			wantRetries++
		}
	}
	if wantRetries == 0 {
		t.Fatal("seed 7 fails no Stripe call for these emails; pick another seed")
	}
	if c := tally.Count(HandlerStripeCustomer); c.Retried != wantRetries {
		t.Errorf("Stripe handler retried %d times, want %d: %+v", c.Retried, wantRetries, c)
	}
}

func TestStripeDownDeadLetters(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Timings = fast
	cfg.StripeFailureRate = 1
	cfg.StripeMaxAttempts = 2
	app, bus, tally := newApp(t, cfg)
	ctx := context.Background()

	u, ev, err := app.Signup(ctx, "ada@example.com")
	if err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := tally.Wait(wctx, Handlers(), []string{ev.ID}); err != nil {
		t.Fatal(err)
	}
	if c := tally.Count(HandlerStripeCustomer); c.Completed != 0 || c.Retried != 1 || c.Dead != 1 {
		t.Fatalf("Stripe handler: %+v, want 1 retry then dead", c)
	}
	want := []string{HandlerWelcomeEmail, HandlerWorkspace, HandlerSlack, HandlerAnalytics}
	if got := app.Effects(u.ID); !slices.Equal(got, want) {
		t.Fatalf("effects %v, want every one but Stripe: %v", got, want)
	}
	dead, err := bus.DeadLetters(ctx, HandlerStripeCustomer, 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(dead) != 1 || !strings.Contains(dead[0].Error, "503") {
		t.Fatalf("dead letters %+v, want the signup with Stripe's 503", dead)
	}
}

func TestSyncSignup(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Timings = ArticleTimings().Scaled(0.01)
	cfg.StripeFailureRate = 0
	app, _, _ := newApp(t, cfg)
	ctx := context.Background()

	start := time.Now()
	u, err := app.SignupSync(ctx, "ada@example.com")
	if err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d < cfg.Timings.Sync() {
		t.Errorf("sync signup took %s, less than the %s its steps take in sequence", d, cfg.Timings.Sync())
	}
	if got := app.Effects(u.ID); !slices.Equal(got, Handlers()) {
		t.Errorf("effects %v, want all", got)
	}

	down := DefaultConfig()
	down.Timings = fast
	down.StripeFailureRate = 1
	app, _, _ = newApp(t, down)
	u, err = app.SignupSync(ctx, "bob@example.com")
	var se *StripeError
	if !errors.As(err, &se) {
		t.Fatalf("sync signup with Stripe down: err = %v, want a StripeError", err)
	}
	if got := app.Effects(u.ID); !slices.Equal(got, []string{HandlerWelcomeEmail}) {
		t.Errorf("effects %v: the email goes out before Stripe fails, nothing after", got)
	}
}

func TestConfigValidation(t *testing.T) {
	bus, err := ripple.Open(context.Background(), "memory://")
	if err != nil {
		t.Fatal(err)
	}
	defer bus.Close()
	for name, tc := range map[string]struct {
		mod  func(*Config)
		want string
	}{
		"negative": {func(c *Config) { c.Timings.SlackNotify = -1 }, "Timings.SlackNotify"},
		"rate":     {func(c *Config) { c.StripeFailureRate = 1.5 }, "probability"},
		"attempts": {func(c *Config) { c.StripeMaxAttempts = 0 }, "at least 1"},
		"retry":    {func(c *Config) { c.Timings.RetryMax = c.Timings.RetryMin / 2 }, "below RetryMin"},
	} {
		cfg := DefaultConfig()
		tc.mod(&cfg)
		if _, err := New(bus, cfg); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: New error = %v, want one mentioning %q", name, err, tc.want)
		}
	}
	if _, err := New(nil, DefaultConfig()); err == nil {
		t.Error("New(nil bus) succeeded")
	}
}

func TestTimings(t *testing.T) {
	a := ArticleTimings()
	if a.Sync() != 1900*time.Millisecond {
		t.Errorf("article sync time = %s, want the article's ~1900ms", a.Sync())
	}
	s := a.Scaled(0.5)
	if s.WelcomeEmail != 400*time.Millisecond || s.RetryMin != 125*time.Millisecond || s.Sync() != 950*time.Millisecond {
		t.Errorf("Scaled(0.5) = %+v", s)
	}
	if a.Of(HandlerStripeCustomer) != 400*time.Millisecond || a.Of("nope") != 0 {
		t.Error("Of returns the wrong latency")
	}
}

func TestHTTP(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Timings = fast
	cfg.StripeFailureRate = 0
	app, _, tally := newApp(t, cfg)
	srv := httptest.NewServer(app.Handler())
	defer srv.Close()

	post := func(path, body string) (int, map[string]any) {
		t.Helper()
		resp, err := http.Post(srv.URL+path, "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var m map[string]any
		if err := json.NewDecoder(resp.Body).Decode(&m); err != nil {
			t.Fatal(err)
		}
		return resp.StatusCode, m
	}
	code, m := post("/signup", `{"email":"ada@example.com"}`)
	if code != http.StatusCreated || m["event_id"] == "" {
		t.Fatalf("signup: %d %v", code, m)
	}
	id := m["user"].(map[string]any)["id"].(string)
	eventID := m["event_id"].(string)
	if code, m := post("/signup", `{"email":"ADA@example.com"}`); code != http.StatusConflict {
		t.Errorf("duplicate email: %d %v, want 409", code, m)
	}
	if code, m := post("/signup-sync", `{"email":"nope"}`); code != http.StatusBadRequest || !strings.Contains(m["error"].(string), "invalid email") {
		t.Errorf("bad email: %d %v, want 400", code, m)
	}
	if code, m := post("/signup", `{"email":`); code != http.StatusBadRequest || !strings.Contains(m["error"].(string), "must be JSON") {
		t.Errorf("bad body: %d %v, want 400", code, m)
	}
	if code, m := post("/signup-sync", `{"email":"bob@example.com"}`); code != http.StatusCreated || len(m["effects"].([]any)) != 5 {
		t.Errorf("sync signup: %d %v, want 201 with all five effects", code, m)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := tally.Wait(ctx, Handlers(), []string{eventID}); err != nil {
		t.Fatal(err)
	}
	resp, err := http.Get(srv.URL + "/users/" + id)
	if err != nil {
		t.Fatal(err)
	}
	var got SignupResponse
	if err := json.NewDecoder(resp.Body).Decode(&got); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if got.User.Email != "ada@example.com" || !slices.Equal(got.Effects, Handlers()) {
		t.Errorf("GET /users/%s = %+v", id, got)
	}
	if resp, err := http.Get(srv.URL + "/users/unknown"); err != nil || resp.StatusCode != http.StatusNotFound {
		t.Errorf("unknown user: %v %v, want 404", resp.StatusCode, err)
	}
	if resp, err := http.Get(srv.URL + "/signup"); err != nil || resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("GET /signup: %v %v, want 405", resp.StatusCode, err)
	}
}

// TestLoad checks what a load run does, not how fast: every signup of
// both versions succeeds and every event-driven one reaches all five
// handlers. How much sooner the event-driven signup answers is measured
// by BenchmarkSignup, since a busy machine moves any timing.
func TestLoad(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Timings = ArticleTimings().Scaled(0.005)
	cfg.StripeFailureRate = 0
	app, _, tally := newApp(t, cfg)
	srv := httptest.NewServer(app.Handler())
	defer srv.Close()
	ctx := context.Background()

	sync, err := Load{BaseURL: srv.URL, Path: "/signup-sync", Signups: 12, Clients: 4, EmailPrefix: "sync"}.Run(ctx)
	if err != nil {
		t.Fatal(err)
	}
	evented, err := Load{BaseURL: srv.URL, Path: "/signup", Signups: 12, Clients: 4, EmailPrefix: "evented"}.Run(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range []LoadResult{sync, evented} {
		if r.Failed != 0 || len(r.Durations) != 12 || len(r.UserIDs) != 12 {
			t.Fatalf("%s: %d failed (%s), %d durations, %d users", r.Path, r.Failed, r.FirstFailure, len(r.Durations), len(r.UserIDs))
		}
	}
	if len(sync.EventIDs) != 0 || len(evented.EventIDs) != 12 {
		t.Errorf("event ids: sync %d, evented %d; want 0 and 12", len(sync.EventIDs), len(evented.EventIDs))
	}
	// A lower bound only: the synchronous signup runs every step in turn,
	// which a busy machine can only make slower.
	if p50 := sync.Percentile(0.5); p50 < cfg.Timings.Sync() {
		t.Errorf("sync p50 %s below the %s of its steps", p50, cfg.Timings.Sync())
	}

	// Every event-driven signup reaches all five handlers.
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := tally.Wait(wctx, Handlers(), evented.EventIDs); err != nil {
		t.Fatal(err)
	}
	for _, id := range append(slices.Clone(sync.UserIDs), evented.UserIDs...) {
		if got := app.Effects(id); !slices.Equal(got, Handlers()) {
			t.Errorf("user %s: effects %v, want all of %v", id, got, Handlers())
		}
	}
	for _, h := range Handlers() {
		if c := tally.Count(h, evented.EventIDs...); c.Completed != 12 || c.Dead != 0 {
			t.Errorf("%s: %+v, want 12 completed and none dead", h, c)
		}
	}

	// The same emails again all conflict and count as failures.
	again, err := Load{BaseURL: srv.URL, Path: "/signup", Signups: 3, Clients: 2, EmailPrefix: "evented"}.Run(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if again.Failed != 3 || !strings.HasPrefix(again.FirstFailure, "409") {
		t.Errorf("repeated emails: %d failed, first %q; want 3 conflicts", again.Failed, again.FirstFailure)
	}
	if _, err := (Load{BaseURL: "localhost:1", Path: "/signup", Signups: 1, Clients: 1, EmailPrefix: "x"}).Run(ctx); err == nil {
		t.Error("Load accepted a base URL without a scheme")
	}
}

// BenchmarkSignup measures the article's claim: the event-driven signup
// answers in about the time of its user write, the synchronous one in the
// time of every step. It reports the p50 response time of each and their
// ratio (sync_over_evented), at the article's latencies scaled by 0.005.
func BenchmarkSignup(b *testing.B) {
	cfg := DefaultConfig()
	cfg.Timings = ArticleTimings().Scaled(0.005)
	cfg.StripeFailureRate = 0
	tally := NewTally()
	bus, err := ripple.Open(context.Background(), "memory://", ripple.WithHooks(tally),
		ripple.WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil))))
	if err != nil {
		b.Fatal(err)
	}
	defer bus.Close()
	app, err := New(bus, cfg)
	if err != nil {
		b.Fatal(err)
	}
	if err := bus.Start(context.Background()); err != nil {
		b.Fatal(err)
	}
	srv := httptest.NewServer(app.Handler())
	defer srv.Close()
	ctx := context.Background()
	var syncP50, evP50 time.Duration
	run := 0
	for b.Loop() {
		run++
		s, err := Load{BaseURL: srv.URL, Path: "/signup-sync", Signups: 12, Clients: 4, EmailPrefix: fmt.Sprintf("sync%d", run)}.Run(ctx)
		if err != nil || s.Failed != 0 {
			b.Fatal(err, s.FirstFailure)
		}
		e, err := Load{BaseURL: srv.URL, Path: "/signup", Signups: 12, Clients: 4, EmailPrefix: fmt.Sprintf("evented%d", run)}.Run(ctx)
		if err != nil || e.Failed != 0 {
			b.Fatal(err, e.FirstFailure)
		}
		syncP50 += s.Percentile(0.5)
		evP50 += e.Percentile(0.5)
	}
	b.ReportMetric(float64(syncP50)/float64(run)/1e6, "sync_p50_ms")
	b.ReportMetric(float64(evP50)/float64(run)/1e6, "evented_p50_ms")
	b.ReportMetric(float64(syncP50)/float64(evP50), "sync_over_evented")
}

func TestTallyWaitReportsShortfall(t *testing.T) {
	tally := NewTally()
	tally.OnHandle(ripple.HandleResult{Handler: "a.b", Event: ripple.Event{ID: "e1"}, Outcome: ripple.OutcomeRetry})
	tally.OnHandle(ripple.HandleResult{Handler: "a.b", Event: ripple.Event{ID: "e1"}, Outcome: ripple.OutcomeSuccess})
	tally.OnHandle(ripple.HandleResult{Handler: "a.b", Event: ripple.Event{ID: "e1"}, Outcome: ripple.OutcomeSuccess})
	tally.OnHandle(ripple.HandleResult{Handler: "a.b", Event: ripple.Event{ID: "e2"}, Outcome: ripple.OutcomeDead})
	if c := tally.Count("a.b"); c != (HandlerCount{Handler: "a.b", Completed: 1, Retried: 1, Dead: 1}) {
		t.Errorf("count %+v: a redelivered success counts once", c)
	}
	if err := tally.Wait(context.Background(), []string{"a.b"}, []string{"e1", "e2"}); err != nil {
		t.Errorf("Wait with every event finished: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	err := tally.Wait(ctx, []string{"a.b", "c.d"}, []string{"e1", "e3"})
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "a.b 1/2, c.d 0/2") {
		t.Errorf("Wait error = %v, want the shortfall of both handlers", err)
	}
}

func TestStripeFails(t *testing.T) {
	failed := 0
	const draws = 30000
	for i := range draws {
		email := strings.Repeat("y", i%50+1) + "@example.com"
		if StripeFails(uint64(i/50+1), email, 1, 1.0/3) {
			failed++
		}
	}
	if rate := float64(failed) / draws; rate < 0.31 || rate > 0.356 {
		t.Errorf("failure rate %.3f over %d draws, want about 1/3", rate, draws)
	}
	if StripeFails(1, "a@example.com", 1, 0) || !StripeFails(1, "a@example.com", 1, 1) {
		t.Error("rates 0 and 1 must never and always fail")
	}
	// The answer depends on the attempt: some email must fail on one
	// attempt and succeed on another, or retries could never succeed.
	differs := false
	for i := range 20 {
		email := strings.Repeat("z", i+1) + "@example.com"
		if StripeFails(9, email, 1, 0.5) != StripeFails(9, email, 2, 0.5) {
			differs = true
		}
	}
	if !differs {
		t.Error("20 emails got the same answer on attempts 1 and 2")
	}
}

func TestPercentile(t *testing.T) {
	r := LoadResult{}
	if r.Percentile(0.5) != 0 {
		t.Error("empty result has a percentile")
	}
	for i := 1; i <= 100; i++ {
		r.Durations = append(r.Durations, time.Duration(i)*time.Millisecond)
	}
	if r.Percentile(0.5) != 50*time.Millisecond || r.Percentile(0.99) != 99*time.Millisecond || r.Percentile(1) != 100*time.Millisecond {
		t.Errorf("percentiles: p50 %s p99 %s p100 %s", r.Percentile(0.5), r.Percentile(0.99), r.Percentile(1))
	}
}
