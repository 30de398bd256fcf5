// Command quickstart is the README's quickstart as a program, kept
// identical to the README's code by TestREADMEQuickstart: it opens
// sqlite://app.db in the working directory, registers two handlers,
// publishes one signup and waits until the handlers are done.
//
//	go run ./examples/quickstart
package main

// Imports of the code around the README's.
import (
	"maps"
	"slices"
	"sync"
)

// README quickstart: begin
import (
	"context"
	"log"
	"time"

	"github.com/ripplehq/ripple"
	_ "github.com/ripplehq/ripple/transport/sqlite" // registers sqlite://
)

type UserSignup struct {
	ID    string `json:"id"`
	Email string `json:"email"`
}

func run(ctx context.Context, id, email string) error {
	bus, err := ripple.Open(ctx, "sqlite://app.db")
	if err != nil {
		return err
	}
	defer bus.Close() // bounded graceful stop; bus.Shutdown(ctx) drains until ctx ends

	// Every handler name is its own durable subscription: every handler gets every event
	// (fan-out), and processes running the same handler name share its work.
	err = bus.On("user.signup.completed", "email.welcome", sendWelcome,
		ripple.Concurrency(10), ripple.RateLimit(10, time.Second),
		ripple.MaxAttempts(5), ripple.Backoff(time.Second, time.Minute),
		ripple.Timeout(30*time.Second), ripple.Idempotent())
	if err != nil {
		return err // a bad name or option, or one the transport cannot honour
	}
	// Handle registers a handler that receives the payload decoded into a Go type.
	err = ripple.Handle(bus, "user.signup.completed", "crm.sync",
		func(ctx context.Context, s UserSignup, e ripple.Event) error {
			return crm.Upsert(ctx, s.ID, s.Email)
		})
	if err != nil {
		return err
	}
	if err := bus.Start(ctx); err != nil { // creates the subscriptions; handlers run in the background
		return err
	}

	ev, err := bus.Publish(ctx, "user.signup.completed", UserSignup{ID: id, Email: email},
		ripple.WithKey(id))
	if err != nil {
		return err
	}
	log.Printf("published %s", ev.ID)

	// A script or a test can wait for the handlers, then look at what they gave up on.
	if err := bus.WaitIdle(ctx); err != nil {
		return err
	}
	dead, err := bus.DeadLetters(ctx, "email.welcome", 100)
	if err != nil {
		return err
	}
	for _, d := range dead {
		log.Printf("dead letter %s after %d attempts: %s", d.Event.ID, d.Attempts, d.Error)
	}
	return nil
}

func sendWelcome(ctx context.Context, e ripple.Event) error {
	var s UserSignup
	if err := e.Decode(&s); err != nil {
		return ripple.Permanent(err) // no retry: straight to the dead-letter queue
	}
	return mailer.Send(ctx, s.Email) // an error retries with backoff and jitter
}

// README quickstart: end

// The services the quickstart calls, here recording what they were
// asked to do.
var (
	mailer = &fakeMailer{}
	crm    = &fakeCRM{}
)

type fakeMailer struct {
	mu   sync.Mutex
	sent []string
}

// Send records a welcome email.
func (m *fakeMailer) Send(_ context.Context, email string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.sent = append(m.sent, email)
	return nil
}

func (m *fakeMailer) emails() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.sent)
}

type fakeCRM struct {
	mu       sync.Mutex
	upserted map[string]string
}

// Upsert records a contact.
func (c *fakeCRM) Upsert(_ context.Context, id, email string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.upserted == nil {
		c.upserted = map[string]string{}
	}
	c.upserted[id] = email
	return nil
}

func (c *fakeCRM) contacts() map[string]string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return maps.Clone(c.upserted)
}

func main() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := run(ctx, "u-42", "ada@example.com"); err != nil {
		log.Fatal(err)
	}
	log.Printf("welcome emails sent to %v; CRM contacts %v", mailer.emails(), crm.contacts())
}
