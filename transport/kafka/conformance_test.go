package kafka

import (
	"net/url"
	"path/filepath"
	"testing"

	"github.com/ripplehq/ripple/transport/transporttest"

	_ "github.com/ripplehq/ripple/transport/sqlite" // side store of TestConformanceClaims
)

func TestConformance(t *testing.T) {
	transporttest.Run(t, transporttest.Harness{
		NewURL: func(t testing.TB) string { return newURL(t) },
	})
}

// TestConformanceClaims runs the suite with a side store (a SQLite file
// named by the store= parameter) keeping idempotency claims, published
// identities (publish deduplication) and shared rate-limit windows.
func TestConformanceClaims(t *testing.T) {
	transporttest.Run(t, transporttest.Harness{
		NewURL: func(t testing.TB) string {
			return newURL(t, "store="+url.QueryEscape("sqlite://"+filepath.Join(t.TempDir(), "store.db")))
		},
	})
}
