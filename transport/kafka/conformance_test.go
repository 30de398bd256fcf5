package kafka

import (
	"testing"

	"github.com/ripplehq/ripple/transport/transporttest"
)

func TestConformance(t *testing.T) {
	transporttest.Run(t, transporttest.Harness{
		NewURL: func(t testing.TB) string { return newURL(t) },
	})
}
