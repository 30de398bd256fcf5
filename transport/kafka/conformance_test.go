package kafka

import (
	"net/url"
	"path/filepath"
	"testing"

	"github.com/ripplehq/ripple/transport/transporttest"

	_ "github.com/ripplehq/ripple/transport/sqlite" // claim store of TestConformanceClaims
)

func TestConformance(t *testing.T) {
	transporttest.Run(t, transporttest.Harness{
		NewURL: func(t testing.TB) string { return newURL(t) },
	})
}

// TestConformanceClaims runs the suite with idempotency claims kept in a
// SQLite file named by the claims= parameter.
func TestConformanceClaims(t *testing.T) {
	transporttest.Run(t, transporttest.Harness{
		NewURL: func(t testing.TB) string {
			return newURL(t, "claims="+url.QueryEscape("sqlite://"+filepath.Join(t.TempDir(), "claims.db")))
		},
	})
}
