// Package signupapp is the signup flow from the article Ripple answers,
// built twice: synchronously, with every side effect inline in the request,
// and event-driven, where the request writes the user, publishes
// user.signup.completed and returns while five independent handlers do the
// rest.
//
// The side effects are simulated with the article's latencies (user write
// 50 ms, welcome email 800 ms, Stripe customer 400 ms, default workspace
// 200 ms, Slack notification 300 ms, analytics 150 ms), and the simulated
// Stripe API fails transiently about one call in three. Synchronously that
// failure fails the signup; event-driven, the Stripe handler returns the
// error and Ripple retries it with backoff while the user is long signed up.
//
// The package is shared by the runnable example in examples/signup and by
// the `ripple demo` command. Timings scale by a factor, so tests and quick
// demos can run the same flow in milliseconds.
package signupapp

import (
	"context"
	"database/sql"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"math"
	"math/rand/v2"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/ripplehq/ripple"
	"github.com/ripplehq/ripple/transport/postgres"
	"github.com/ripplehq/ripple/transport/sqlite"
)

// EventSignupCompleted is the event the event-driven signup publishes.
const EventSignupCompleted = "user.signup.completed"

// The five handler names. Each is its own durable subscription, so every
// handler gets every signup.
const (
	HandlerWelcomeEmail   = "email.welcome"
	HandlerStripeCustomer = "billing.stripe-customer"
	HandlerWorkspace      = "workspace.create-default"
	HandlerSlack          = "slack.notify-sales"
	HandlerAnalytics      = "analytics.track-signup"
)

// Handlers lists the handler names in the order the synchronous version
// runs their side effects.
func Handlers() []string {
	return []string{HandlerWelcomeEmail, HandlerStripeCustomer, HandlerWorkspace, HandlerSlack, HandlerAnalytics}
}

// Timings are the simulated latencies of the signup's steps and the Stripe
// handler's retry backoff.
type Timings struct {
	DBWrite        time.Duration // writing the user row
	WelcomeEmail   time.Duration // sending the welcome email
	StripeCustomer time.Duration // creating the Stripe customer
	Workspace      time.Duration // creating the default workspace
	SlackNotify    time.Duration // notifying sales in Slack
	Analytics      time.Duration // tracking the signup in analytics
	// RetryMin and RetryMax bound the Stripe handler's exponential
	// backoff between attempts. RetryMin is raised to 1ms if smaller.
	RetryMin, RetryMax time.Duration
}

// ArticleTimings are the article's numbers: 50, 800, 400, 200, 300 and
// 150 ms, about 1.9 s in all. The Stripe retries back off from 250 ms up
// to 5 s, shorter than a production setting so that a demo with a few
// unlucky signups still finishes in seconds.
func ArticleTimings() Timings {
	return Timings{
		DBWrite:        50 * time.Millisecond,
		WelcomeEmail:   800 * time.Millisecond,
		StripeCustomer: 400 * time.Millisecond,
		Workspace:      200 * time.Millisecond,
		SlackNotify:    300 * time.Millisecond,
		Analytics:      150 * time.Millisecond,
		RetryMin:       250 * time.Millisecond,
		RetryMax:       5 * time.Second,
	}
}

// Scaled returns the timings multiplied by f: 1 keeps them, 0.01 makes the
// whole flow a hundred times faster.
func (t Timings) Scaled(f float64) Timings {
	s := func(d time.Duration) time.Duration { return time.Duration(math.Round(float64(d) * f)) }
	return Timings{
		DBWrite: s(t.DBWrite), WelcomeEmail: s(t.WelcomeEmail), StripeCustomer: s(t.StripeCustomer),
		Workspace: s(t.Workspace), SlackNotify: s(t.SlackNotify), Analytics: s(t.Analytics),
		RetryMin: s(t.RetryMin), RetryMax: s(t.RetryMax),
	}
}

// Sync is how long the synchronous signup takes when nothing fails: the
// write plus every side effect, one after another.
func (t Timings) Sync() time.Duration {
	return t.DBWrite + t.WelcomeEmail + t.StripeCustomer + t.Workspace + t.SlackNotify + t.Analytics
}

// Of returns the simulated latency of the named handler's side effect.
func (t Timings) Of(handler string) time.Duration {
	switch handler {
	case HandlerWelcomeEmail:
		return t.WelcomeEmail
	case HandlerStripeCustomer:
		return t.StripeCustomer
	case HandlerWorkspace:
		return t.Workspace
	case HandlerSlack:
		return t.SlackNotify
	case HandlerAnalytics:
		return t.Analytics
	}
	return 0
}

// Config configures an App. Start from DefaultConfig.
type Config struct {
	Timings Timings
	// StripeFailureRate is the probability, from 0 to 1, that one call to
	// the simulated Stripe API fails.
	StripeFailureRate float64
	// StripeMaxAttempts is how many times the Stripe handler tries a signup
	// before dead-lettering it. With a failure rate of 1/3 and 10 attempts,
	// a signup dead-letters about once in 59,000.
	StripeMaxAttempts int
	// Seed decides which Stripe calls fail: whether a call fails depends
	// only on the seed, the user's email and the attempt number, so a run
	// with the same seed and emails fails the same calls however they
	// interleave. 0 picks a random seed (App.Seed reports it).
	Seed uint64
}

// DefaultConfig is the article's flow: ArticleTimings, Stripe failing one
// call in three, 10 attempts for the Stripe handler, a random seed.
func DefaultConfig() Config {
	return Config{Timings: ArticleTimings(), StripeFailureRate: 1.0 / 3, StripeMaxAttempts: 10}
}

func (c Config) validate() error {
	t := c.Timings
	for _, d := range []struct {
		name string
		v    time.Duration
	}{
		{"DBWrite", t.DBWrite}, {"WelcomeEmail", t.WelcomeEmail}, {"StripeCustomer", t.StripeCustomer},
		{"Workspace", t.Workspace}, {"SlackNotify", t.SlackNotify}, {"Analytics", t.Analytics},
		{"RetryMin", t.RetryMin}, {"RetryMax", t.RetryMax},
	} {
		if d.v < 0 {
			return fmt.Errorf("signupapp: Timings.%s is %s; timings must not be negative", d.name, d.v)
		}
	}
	if t.RetryMax < t.RetryMin {
		return fmt.Errorf("signupapp: Timings.RetryMax (%s) is below RetryMin (%s)", t.RetryMax, t.RetryMin)
	}
	if !(c.StripeFailureRate >= 0 && c.StripeFailureRate <= 1) {
		return fmt.Errorf("signupapp: StripeFailureRate is %v; it is a probability from 0 to 1", c.StripeFailureRate)
	}
	if c.StripeMaxAttempts < 1 {
		return fmt.Errorf("signupapp: StripeMaxAttempts is %d; the Stripe handler needs at least 1 attempt", c.StripeMaxAttempts)
	}
	return nil
}

// User is a signed-up user.
type User struct {
	ID        string    `json:"id"`
	Email     string    `json:"email"`
	CreatedAt time.Time `json:"created_at"`
}

// Signup is the payload of user.signup.completed.
type Signup struct {
	UserID string `json:"user_id"`
	Email  string `json:"email"`
}

// Errors the signup returns for bad requests.
var (
	ErrInvalidEmail = errors.New("invalid email")
	ErrEmailTaken   = errors.New("email already signed up")
)

// StripeError is the simulated Stripe API's transient failure.
type StripeError struct{ UserID string }

func (e *StripeError) Error() string {
	return "stripe: 503 Service Unavailable creating customer for user " + e.UserID + " (simulated transient failure)"
}

// App is the signup application: a user table and the five side effects,
// with handlers registered on a bus. It is safe for concurrent use.
//
// On a sqlite:// bus the user table lives in the bus's own database file,
// and on a postgres:// bus beside Ripple's tables in the bus's schema (so
// a fresh schema is a fresh app, as a fresh file is); there Signup writes
// the user row and its event in one transaction (PublishTx): both are
// stored or neither is, whatever crashes. On other transports the users are kept in memory and
// the write and the publish are two steps.
type App struct {
	bus  *ripple.Bus
	cfg  Config
	seed uint64
	// db is the bus's database on sqlite:// and postgres://, nil elsewhere.
	db *sql.DB
	// usersTable is the user table's name in db, and insertSQL inserts
	// a row into it in db's dialect.
	usersTable, insertSQL string

	mu      sync.Mutex
	users   map[string]User            // by email
	byID    map[string]User            // by id
	effects map[string]map[string]bool // handler -> user id -> done
}

// New validates cfg and registers the five handlers on bus. Start the bus
// (bus.Start or bus.Run) for the event-driven side effects to run.
func New(bus *ripple.Bus, cfg Config) (*App, error) {
	if bus == nil {
		return nil, errors.New("signupapp: New needs a bus; open one with ripple.Open")
	}
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	seed := cfg.Seed
	if seed == 0 {
		seed = rand.Uint64() | 1
	}
	a := &App{
		bus:     bus,
		cfg:     cfg,
		seed:    seed,
		users:   make(map[string]User),
		byID:    make(map[string]User),
		effects: make(map[string]map[string]bool),
	}
	switch bus.TransportName() {
	case "sqlite":
		db, err := sqlite.DB(bus)
		if err != nil {
			return nil, fmt.Errorf("signupapp: %w", err)
		}
		a.db, a.usersTable = db, "signup_users"
		a.insertSQL = fmt.Sprintf(insertUserSQLite, a.usersTable)
	case "postgres":
		pool, err := postgres.Pool(bus)
		if err != nil {
			return nil, fmt.Errorf("signupapp: %w", err)
		}
		schema, err := postgres.Schema(bus)
		if err != nil {
			return nil, fmt.Errorf("signupapp: %w", err)
		}
		a.db, a.usersTable = stdlib.OpenDBFromPool(pool), pgx.Identifier{schema, "signup_users"}.Sanitize()
		a.insertSQL = fmt.Sprintf(insertUserPostgres, a.usersTable)
	}
	if a.db != nil {
		if _, err := a.db.ExecContext(context.Background(), fmt.Sprintf(usersDDL, a.usersTable)); err != nil {
			return nil, fmt.Errorf("signupapp: creating the user table: %w", err)
		}
	}
	retryMin := max(cfg.Timings.RetryMin, time.Millisecond)
	retryMax := max(cfg.Timings.RetryMax, retryMin)
	regs := []struct {
		name string
		opts []ripple.HandlerOption
	}{
		{HandlerWelcomeEmail, []ripple.HandlerOption{ripple.Concurrency(10)}},
		// The article keeps Stripe at low concurrency for its rate limits.
		{HandlerStripeCustomer, []ripple.HandlerOption{ripple.Concurrency(3),
			ripple.MaxAttempts(cfg.StripeMaxAttempts), ripple.Backoff(retryMin, retryMax)}},
		{HandlerWorkspace, []ripple.HandlerOption{ripple.Concurrency(10)}},
		{HandlerSlack, []ripple.HandlerOption{ripple.Concurrency(5)}},
		{HandlerAnalytics, []ripple.HandlerOption{ripple.Concurrency(10)}},
	}
	for _, r := range regs {
		effect := a.effect(r.name)
		err := ripple.Handle(bus, EventSignupCompleted, r.name, func(ctx context.Context, s Signup, e ripple.Event) error {
			return effect(ctx, s, e.Attempt)
		}, r.opts...)
		if err != nil {
			return nil, fmt.Errorf("signupapp: register %s: %w", r.name, err)
		}
	}
	return a, nil
}

// Config returns the configuration the app runs with.
func (a *App) Config() Config { return a.cfg }

// Seed returns the seed of the simulated Stripe failures.
func (a *App) Seed() uint64 { return a.seed }

// usersDDL is the user table in the bus's database (sqlite:// and
// postgres://).
const usersDDL = `CREATE TABLE IF NOT EXISTS %s (
	id TEXT PRIMARY KEY,
	email TEXT NOT NULL UNIQUE,
	created_at BIGINT NOT NULL)`

// The user insert in each database's placeholder style.
const (
	insertUserSQLite   = `INSERT INTO %s (id, email, created_at) VALUES (?, ?, ?)`
	insertUserPostgres = `INSERT INTO %s (id, email, created_at) VALUES ($1, $2, $3)`
)

// Signup is the event-driven signup: it writes the user, publishes
// user.signup.completed keyed by the user id, and returns. The handlers do
// the rest in the background.
//
// On sqlite:// and postgres:// the user row and the event are written by
// one transaction (bus.PublishTx), so a crash can never leave a user without its event or
// an event without its user. On other transports they are two steps, as
// in the article, and a crash between them would lose the event.
func (a *App) Signup(ctx context.Context, email string) (User, ripple.Event, error) {
	if a.db != nil {
		return a.signupTx(ctx, email)
	}
	u, err := a.createUser(ctx, email)
	if err != nil {
		return User{}, ripple.Event{}, err
	}
	ev, err := a.bus.Publish(ctx, EventSignupCompleted, Signup{UserID: u.ID, Email: u.Email}, ripple.WithKey(u.ID))
	if err != nil {
		return u, ev, fmt.Errorf("user %s was created but its signup event was not published: %w", u.ID, err)
	}
	return u, ev, nil
}

// signupTx writes the user row and publishes its event in one
// transaction of the bus's database.
func (a *App) signupTx(ctx context.Context, email string) (User, ripple.Event, error) {
	u, err := a.newUser(ctx, email)
	if err != nil {
		return User{}, ripple.Event{}, err
	}
	tx, err := a.db.BeginTx(ctx, nil)
	if err != nil {
		return User{}, ripple.Event{}, err
	}
	defer tx.Rollback() // a no-op once committed
	if err := a.insertUser(ctx, tx, u); err != nil {
		return User{}, ripple.Event{}, err
	}
	ev, err := a.bus.PublishTx(ctx, tx, EventSignupCompleted, Signup{UserID: u.ID, Email: u.Email}, ripple.WithKey(u.ID))
	if err != nil {
		return User{}, ev, fmt.Errorf("signup of %s not stored: %w", u.Email, err)
	}
	if err := tx.Commit(); err != nil {
		return User{}, ev, fmt.Errorf("signup of %s not stored: %w", u.Email, err)
	}
	a.remember(u)
	return u, ev, nil
}

func (a *App) insertUser(ctx context.Context, tx *sql.Tx, u User) error {
	_, err := tx.ExecContext(ctx, a.insertSQL, u.ID, u.Email, u.CreatedAt.UnixNano())
	// SQLite says UNIQUE, PostgreSQL SQLSTATE 23505 (unique_violation).
	if err != nil && (strings.Contains(err.Error(), "UNIQUE") || strings.Contains(err.Error(), "23505")) {
		return fmt.Errorf("%w: %s", ErrEmailTaken, u.Email)
	}
	return err
}

// SignupSync is the synchronous signup: it writes the user and runs every
// side effect inline, as the article's first listing does. The caller
// waits for all of them, and a Stripe failure fails the whole signup (the
// user row and the welcome email stay behind).
func (a *App) SignupSync(ctx context.Context, email string) (User, error) {
	u, err := a.createUser(ctx, email)
	if err != nil {
		return User{}, err
	}
	s := Signup{UserID: u.ID, Email: u.Email}
	for _, h := range Handlers() {
		if err := a.effect(h)(ctx, s, 1); err != nil {
			return u, fmt.Errorf("signup of %s failed at %s: %w", u.Email, h, err)
		}
	}
	return u, nil
}

// newUser validates email, takes the simulated write latency and returns
// the user to store.
func (a *App) newUser(ctx context.Context, email string) (User, error) {
	email = strings.TrimSpace(strings.ToLower(email))
	if at := strings.IndexByte(email, '@'); at < 1 || at == len(email)-1 || strings.ContainsAny(email, " \t\r\n") {
		return User{}, fmt.Errorf("%w %q: want an address like ada@example.com", ErrInvalidEmail, email)
	}
	if err := sleep(ctx, a.cfg.Timings.DBWrite); err != nil {
		return User{}, err
	}
	return User{ID: uuid.NewString(), Email: email, CreatedAt: time.Now().UTC()}, nil
}

// createUser stores a new user: in the bus's database on sqlite:// and
// postgres://, in memory elsewhere.
func (a *App) createUser(ctx context.Context, email string) (User, error) {
	u, err := a.newUser(ctx, email)
	if err != nil {
		return User{}, err
	}
	if a.db != nil {
		tx, err := a.db.BeginTx(ctx, nil)
		if err != nil {
			return User{}, err
		}
		defer tx.Rollback()
		if err := a.insertUser(ctx, tx, u); err != nil {
			return User{}, err
		}
		if err := tx.Commit(); err != nil {
			return User{}, err
		}
		a.remember(u)
		return u, nil
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if _, taken := a.users[u.Email]; taken {
		return User{}, fmt.Errorf("%w: %s", ErrEmailTaken, u.Email)
	}
	a.users[u.Email] = u
	a.byID[u.ID] = u
	return u, nil
}

// remember records a user stored in the database in the in-memory index.
func (a *App) remember(u User) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.users[u.Email] = u
	a.byID[u.ID] = u
}

// User returns the user with the given id.
func (a *App) User(id string) (User, bool) {
	a.mu.Lock()
	u, ok := a.byID[id]
	a.mu.Unlock()
	if ok || a.db == nil {
		return u, ok
	}
	var at int64
	err := a.db.QueryRow(`SELECT id, email, created_at FROM signup_users WHERE id = ?`, id).Scan(&u.ID, &u.Email, &at)
	if err != nil {
		return User{}, false
	}
	u.CreatedAt = time.Unix(0, at).UTC()
	return u, true
}

// Effects lists the handler names whose side effect has been done for the
// user, in Handlers order.
func (a *App) Effects(userID string) []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []string
	for _, h := range Handlers() {
		if a.effects[h][userID] {
			out = append(out, h)
		}
	}
	return out
}

// Users returns how many users have signed up.
func (a *App) Users() int {
	if a.db != nil {
		var n int
		if err := a.db.QueryRow(`SELECT count(*) FROM signup_users`).Scan(&n); err == nil {
			return n
		}
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.users)
}

// effect returns the simulated side effect of the named handler: it takes
// the handler's latency and records that it was done for the user. The
// record is a set, so a redelivered event does not count twice.
func (a *App) effect(handler string) func(ctx context.Context, s Signup, attempt int) error {
	return func(ctx context.Context, s Signup, attempt int) error {
		if err := sleep(ctx, a.cfg.Timings.Of(handler)); err != nil {
			return err
		}
		if handler == HandlerStripeCustomer && a.stripeFails(s.Email, attempt) {
			return &StripeError{UserID: s.UserID}
		}
		a.mu.Lock()
		defer a.mu.Unlock()
		done := a.effects[handler]
		if done == nil {
			done = make(map[string]bool)
			a.effects[handler] = done
		}
		done[s.UserID] = true
		return nil
	}
}

// stripeFails decides whether the attempt's Stripe call fails, as a
// uniform draw from a hash of the seed, the email and the attempt.
func (a *App) stripeFails(email string, attempt int) bool {
	return StripeFails(a.seed, email, attempt, a.cfg.StripeFailureRate)
}

// StripeFails reports whether the simulated Stripe call for email on the
// given attempt fails, for an app with this seed and failure rate. Tests and
// demos use it to pick seeds.
func StripeFails(seed uint64, email string, attempt int, rate float64) bool {
	h := fnv.New64a()
	var b [16]byte
	binary.LittleEndian.PutUint64(b[:8], seed)
	binary.LittleEndian.PutUint64(b[8:], uint64(attempt))
	h.Write(b[:])
	h.Write([]byte(email))
	// Mix the FNV state so that nearby seeds give unrelated draws.
	x := h.Sum64()
	x ^= x >> 33
	x *= 0xff51afd7ed558ccd
	x ^= x >> 33
	return float64(x>>11)/(1<<53) < rate
}

func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// sortedKeys returns m's keys in order.
func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
