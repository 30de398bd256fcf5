package nats

import (
	"testing"

	"github.com/ripplehq/ripple/transport/transporttest"
)

func TestConformance(t *testing.T) {
	transporttest.Run(t, transporttest.Harness{
		NewURL: func(t testing.TB) string { return prefixURL(t) },
	})
}

// TestConformanceHistoryMemory runs the suite with completed history in
// memory storage (?history=memory).
func TestConformanceHistoryMemory(t *testing.T) {
	transporttest.Run(t, transporttest.Harness{
		NewURL: func(t testing.TB) string { return prefixURL(t) + "?history=memory" },
	})
}
