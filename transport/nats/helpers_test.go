package nats

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// serverURL returns the test server's URL from RIPPLE_TEST_NATS_URL, or
// skips (fails under RIPPLE_TEST_REQUIRE_SERVERS=1) when it is unset.
func serverURL(t testing.TB) string {
	t.Helper()
	u := os.Getenv("RIPPLE_TEST_NATS_URL")
	if u == "" {
		if os.Getenv("RIPPLE_TEST_REQUIRE_SERVERS") == "1" {
			t.Fatal("RIPPLE_TEST_NATS_URL is not set but RIPPLE_TEST_REQUIRE_SERVERS=1: start nats-server with JetStream (scripts/test does) and export RIPPLE_TEST_NATS_URL=nats://127.0.0.1:PORT")
		}
		t.Skip("no NATS server: set RIPPLE_TEST_NATS_URL=nats://127.0.0.1:4222 (a nats-server run with -js) to run the nats transport tests")
	}
	return strings.TrimSuffix(u, "/")
}

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// prefixURL returns the server URL with a fresh prefix whose streams and
// buckets are deleted when the test ends.
func prefixURL(t testing.TB) string {
	t.Helper()
	base := serverURL(t)
	p := "t" + randHex(6)
	t.Cleanup(func() { deletePrefix(base, p) })
	return base + "/" + p
}

// deletePrefix deletes a namespace's streams and buckets.
func deletePrefix(base, prefix string) {
	nc, err := nats.Connect(base, nats.Timeout(5*time.Second))
	if err != nil {
		return
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, s := range []string{"events", "done", "dlq", "ids"} {
		_ = js.DeleteStream(ctx, "ripple-"+prefix+"-"+s)
	}
	for _, b := range []string{"claims", "state"} {
		_ = js.DeleteKeyValue(ctx, "ripple-"+prefix+"-"+b)
	}
}
