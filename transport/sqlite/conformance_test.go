package sqlite_test

import (
	"path/filepath"
	"testing"

	_ "github.com/ripplehq/ripple/transport/sqlite"
	"github.com/ripplehq/ripple/transport/transporttest"
)

func TestConformance(t *testing.T) {
	transporttest.Run(t, transporttest.Harness{
		NewURL: func(t testing.TB) string { return "sqlite://" + filepath.Join(t.TempDir(), "ripple.db") },
	})
}
