// Package sidestore keeps, for a broker transport, the state its broker
// cannot keep: idempotency claims, publish deduplication records and
// shared rate-limit windows.
//
// Kafka and RabbitMQ have no atomic "take this id unless it is taken" and
// no sliding window shared by consumers. A broker transport opened with a
// store (the store= URL parameter of kafka:// and amqp://) opens a second
// transport that has them — sqlite://, redis:// or postgres:// — and keeps
// that state there, under the broker bus's namespace. Every process of the
// bus must name the same store; a store that only one process can see
// (memory://) is refused.
//
// Publish deduplication through a store works in three steps: the
// publisher claims the event's identity (source and id) in the store, sends
// the event to the broker, and marks the claim done once the broker has
// acknowledged it. A publish of an identity whose claim is done stores
// nothing and reports a duplicate; one whose claim another publisher holds
// waits for that publisher. A publisher that dies between the broker's
// acknowledgement and the mark leaves a claim that expires after its lease
// (ClaimLease): a resend after that stores the event a second time, which
// an Idempotent() handler then skips through its own claim.
package sidestore

import (
	"context"
	"fmt"
	"net/url"
	"time"

	"github.com/ripplehq/ripple/transport"
)

// ClaimLease is how long a publisher holds an event's identity while it
// sends the event to the broker. A publisher that crashes mid-send blocks
// a resend of the same identity for at most this long.
const ClaimLease = 30 * time.Second

// publishHandler is the claim namespace of publish deduplication. Handler
// names cannot start with '$', so it never meets a handler's claims.
const publishHandler = "$publish"

// Store is an open side store.
type Store struct {
	driver transport.Driver
	claims transport.Claimer
	rate   transport.RateLimiter // nil when the store keeps no windows
	prefix string
	owner  string
	param  string
}

// Open opens the store at rawURL for the transport named owner ("kafka"),
// which read it from its URL parameter param ("store"). The store's state
// is kept under namespace, so that several buses can share one store.
// cfg is the bus's configuration; its retention's DedupWindow is how long
// a done claim, and so a published identity, is remembered.
func Open(ctx context.Context, owner, param, rawURL, namespace string, cfg transport.Config) (*Store, error) {
	shown := Redact(rawURL)
	scheme, err := transport.Scheme(rawURL)
	if err != nil {
		// Not wrapped: the error would repeat the URL, password and all.
		return nil, fmt.Errorf("%s: %s=%s is not a transport URL; write a percent-encoded one, such as %s=redis%%3A%%2F%%2Fhost%%3A6379%%2F0",
			owner, param, shown, param)
	}
	switch scheme {
	case owner:
		return nil, fmt.Errorf("%s: %s=%s cannot be a %s:// URL: %s has no atomic claims; name a store that has them, such as sqlite:///var/lib/app/ripple-store.db, redis://host:6379/0 or postgres://host/app",
			owner, param, shown, owner, owner)
	case "memory":
		return nil, fmt.Errorf("%s: %s=%s keeps its state inside this process only, so other processes of the bus would not see it; name a shared store, such as sqlite:///var/lib/app/ripple-store.db, redis://host:6379/0 or postgres://host/app",
			owner, param, shown)
	}
	open, ok := transport.Lookup(scheme)
	if !ok {
		return nil, fmt.Errorf("%s: %s=%s: no transport is registered for %s://; import its package (for example _ \"github.com/ripplehq/ripple/transport/%s\", or transport/all)",
			owner, param, shown, scheme, scheme)
	}
	d, err := open(ctx, rawURL, cfg)
	if err != nil {
		return nil, fmt.Errorf("%s: opening the store %s=%s: %w", owner, param, shown, err)
	}
	c, ok := d.(transport.Claimer)
	if !ok {
		_ = d.Close()
		return nil, fmt.Errorf("%s: %s=%s: the %s transport keeps no idempotency claims; use one that does (sqlite, redis, postgres)",
			owner, param, shown, d.Name())
	}
	s := &Store{driver: d, claims: c, prefix: namespace + "/", owner: owner, param: param}
	if rl, ok := d.(transport.RateLimiter); ok && d.Capabilities().SharedRateLimit {
		s.rate = rl
	}
	return s, nil
}

// Redact returns rawURL with its password hidden, or a placeholder when
// it is not a URL with a scheme (where a password could hide anywhere).
func Redact(rawURL string) string {
	u, err := url.Parse(rawURL)
	if err != nil || u.Scheme == "" {
		return "(hidden: not a URL)"
	}
	return u.Redacted()
}

// Advice is what a broker transport opened without a store advises when
// the core refuses option (see transport.Advisor): publish deduplication
// and idempotency claims need a store. Other options get none.
func Advice(option string) string {
	switch option {
	case "WithID", "Idempotent":
		return "name a store in the URL (store=, a percent-encoded sqlite://, redis:// or postgres:// URL) that keeps publish deduplication and idempotency claims for the broker"
	}
	return ""
}

// Name is the store's transport name ("sqlite").
func (s *Store) Name() string { return s.driver.Name() }

// Claim takes handler's idempotency claim on eventID in the store.
func (s *Store) Claim(ctx context.Context, handler, eventID string, lease time.Duration) (transport.ClaimResult, error) {
	r, err := s.claims.Claim(ctx, s.prefix+handler, eventID, lease)
	if err != nil {
		return r, s.wrap(err)
	}
	return r, nil
}

// Finish marks handler's claim on eventID done, or drops it.
func (s *Store) Finish(ctx context.Context, handler, eventID string, success bool) error {
	return s.wrap(s.claims.Finish(ctx, s.prefix+handler, eventID, success))
}

// SharedRateLimit reports whether the store keeps shared rate-limit
// windows, so that Reserve works.
func (s *Store) SharedRateLimit() bool { return s.rate != nil }

// Reserve takes a slot of handler's shared rate limit (see
// transport.RateLimiter). It fails when the store keeps no windows: a
// transport declares SharedRateLimit only when SharedRateLimit is true.
func (s *Store) Reserve(ctx context.Context, handler string, n int, per time.Duration) (time.Duration, error) {
	if s.rate == nil {
		return 0, fmt.Errorf("%s: the store %s= (%s) keeps no shared rate limits", s.owner, s.param, s.driver.Name())
	}
	wait, err := s.rate.Reserve(ctx, s.prefix+handler, n, per)
	return wait, s.wrap(err)
}

// Send publishes msgs through send, the broker's own publish, with
// deduplication of every message whose id the publisher chose (a
// generated id is unique, so it costs the store nothing). send receives
// the messages still to be stored, in their order; it must return nil only
// when the broker has acknowledged all of them. A message found already
// published gets Duplicate set to a copy of itself: the broker's copy is
// not readable by id, so the duplicate is the message as resent.
func (s *Store) Send(ctx context.Context, msgs []*transport.Message, send func(context.Context, []*transport.Message) error) error {
	explicit := false
	for _, m := range msgs {
		if !m.IDGenerated {
			explicit = true
			break
		}
	}
	if !explicit {
		return send(ctx, msgs)
	}
	out := make([]*transport.Message, 0, len(msgs))
	var claimed []string
	release := func() {
		// A failed send leaves nothing published: drop the claims so
		// that a retry may send again. Detached from ctx, which may be
		// the reason the send failed.
		bg, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		for _, k := range claimed {
			_ = s.claims.Finish(bg, s.prefix+publishHandler, k, false)
		}
	}
	for _, m := range msgs {
		if m.IDGenerated {
			out = append(out, m)
			continue
		}
		key := transport.IdentityKey(m.Source(), m.ID)
		r, err := s.claimIdentity(ctx, key)
		if err != nil {
			release()
			return err
		}
		if r == transport.Done {
			dup := *m
			dup.Duplicate = nil
			m.Duplicate = &dup
			continue
		}
		claimed = append(claimed, key)
		out = append(out, m)
	}
	if len(out) == 0 {
		return nil
	}
	if err := send(ctx, out); err != nil {
		release()
		return err
	}
	// The broker holds the messages now: a mark that fails only lets the
	// claim expire, after which a resend would be stored again.
	bg, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	for _, k := range claimed {
		_ = s.claims.Finish(bg, s.prefix+publishHandler, k, true)
	}
	return nil
}

// claimIdentity claims key for publishing, waiting while another
// publisher holds it.
func (s *Store) claimIdentity(ctx context.Context, key string) (transport.ClaimResult, error) {
	wait := 5 * time.Millisecond
	for {
		r, err := s.claims.Claim(ctx, s.prefix+publishHandler, key, ClaimLease)
		if err != nil {
			return r, fmt.Errorf("%s: publish deduplication in the store %s= (%s): %w", s.owner, s.param, s.driver.Name(), err)
		}
		if r != transport.Busy {
			return r, nil
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return r, fmt.Errorf("%s: event %s is being published by another publisher, which holds its identity in the store %s= (for at most %s if it died): %w",
				s.owner, key, s.param, ClaimLease, context.Cause(ctx))
		case <-t.C:
		}
		wait = min(wait*2, 200*time.Millisecond)
	}
}

func (s *Store) wrap(err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("%s: store %s= (%s): %w", s.owner, s.param, s.driver.Name(), err)
}

// Close closes the store.
func (s *Store) Close() error {
	return s.driver.Close()
}
