package amqp

import (
	"net/url"
	"path/filepath"
	"testing"

	"github.com/ripplehq/ripple/transport/transporttest"

	_ "github.com/ripplehq/ripple/transport/redis"  // store of TestStoreRedis
	_ "github.com/ripplehq/ripple/transport/sqlite" // store of TestConformanceStore
)

// TestConformance runs the suite on quorum handler queues (the default).
func TestConformance(t *testing.T) {
	transporttest.Run(t, transporttest.Harness{
		NewURL: func(t testing.TB) string { return namespaceURL(t) },
	})
}

// TestConformanceClassic runs it on classic handler queues.
func TestConformanceClassic(t *testing.T) {
	transporttest.Run(t, transporttest.Harness{
		NewURL: func(t testing.TB) string { return namespaceURL(t) + "&queue_type=classic" },
	})
}

// TestConformanceStore runs it with a SQLite store (store=): publish
// deduplication, idempotency claims and the shared rate limit.
func TestConformanceStore(t *testing.T) {
	transporttest.Run(t, transporttest.Harness{
		NewURL: func(t testing.TB) string { return storeURL(t) },
		// RabbitMQ cannot read a message back by id, so a duplicate is
		// reported as the message resent (see package sidestore).
		DuplicateIsResent: true,
	})
}

// storeURL is a fresh namespace with a fresh SQLite store.
func storeURL(t testing.TB) string {
	return namespaceURL(t) + "&store=" + url.QueryEscape("sqlite://"+filepath.Join(t.TempDir(), "store.db"))
}
