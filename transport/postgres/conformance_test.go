package postgres

import (
	"testing"

	"github.com/ripplehq/ripple/transport/transporttest"
)

func TestConformance(t *testing.T) {
	transporttest.Run(t, transporttest.Harness{NewURL: schemaURL})
}
