package memory_test

import (
	"fmt"
	"sync/atomic"
	"testing"

	_ "github.com/ripplehq/ripple/transport/memory"
	"github.com/ripplehq/ripple/transport/transporttest"
)

var stores atomic.Int64

func TestConformance(t *testing.T) {
	transporttest.Run(t, transporttest.Harness{
		NewURL: func(testing.TB) string { return fmt.Sprintf("memory://conformance-%d", stores.Add(1)) },
	})
}
