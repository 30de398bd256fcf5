package amqp

import (
	"testing"

	"github.com/ripplehq/ripple/transport/transporttest"
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
