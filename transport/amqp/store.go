package amqp

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/ripplehq/ripple/transport"
	"github.com/ripplehq/ripple/transport/sidestore"
)

// storeParam reads the store= or store_env= URL parameter: the URL of the
// side store that keeps what RabbitMQ cannot (publish deduplication,
// idempotency claims, shared rate-limit windows).
func storeParam(k, v string) (string, error) {
	if k == "store_env" {
		name := v
		if v = os.Getenv(name); v == "" {
			return "", fmt.Errorf("amqp: URL parameter store_env=%s names an environment variable that is empty or unset; set it to the store's URL (such as sqlite:///var/lib/app/ripple-store.db or redis://host:6379/0)", name)
		}
	}
	if v == "" {
		return "", errors.New("amqp: URL parameter store= is empty; give a percent-encoded store URL, such as store=redis%3A%2F%2Fhost%3A6379%2F0, or leave it out")
	}
	if !strings.Contains(v, "://") {
		return "", fmt.Errorf("amqp: URL parameter %s: %s is not a transport URL; percent-encode one, such as store=redis%%3A%%2F%%2Fhost%%3A6379%%2F0", k, sidestore.Redact(v))
	}
	return v, nil
}

// StoreDriver is the amqp transport opened with a store= URL parameter:
// the Driver, with publish deduplication (Capabilities.Dedup), idempotency
// claims (transport.Claimer) and, when the store keeps them, shared rate
// limits (transport.RateLimiter) kept in that store.
type StoreDriver struct {
	*Driver
}

var (
	_ transport.Claimer     = (*StoreDriver)(nil)
	_ transport.RateLimiter = (*StoreDriver)(nil)
	_ transport.Pauser      = (*StoreDriver)(nil)
)

// Claim implements transport.Claimer: the claim is taken in the store,
// under the bus's namespace.
func (s *StoreDriver) Claim(ctx context.Context, handler, eventID string, lease time.Duration) (transport.ClaimResult, error) {
	return s.store.Claim(ctx, handler, eventID, lease)
}

// Finish implements transport.Claimer.
func (s *StoreDriver) Finish(ctx context.Context, handler, eventID string, success bool) error {
	return s.store.Finish(ctx, handler, eventID, success)
}

// Reserve implements transport.RateLimiter with the store's sliding
// window. Capabilities declares SharedRateLimit only when the store keeps
// windows; otherwise Reserve fails and the core never calls it.
func (s *StoreDriver) Reserve(ctx context.Context, handler string, n int, per time.Duration) (time.Duration, error) {
	return s.store.Reserve(ctx, handler, n, per)
}

// Store names the store's transport ("sqlite", "redis", "postgres").
func (s *StoreDriver) Store() string { return s.store.Name() }
