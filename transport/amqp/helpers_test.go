package amqp

import (
	"crypto/rand"
	"encoding/hex"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// serverURL returns the test broker's URL from RIPPLE_TEST_AMQP_URL, or
// skips (fails under RIPPLE_TEST_REQUIRE_SERVERS=1) when it is unset.
func serverURL(t testing.TB) string {
	t.Helper()
	u := os.Getenv("RIPPLE_TEST_AMQP_URL")
	if u == "" {
		if os.Getenv("RIPPLE_TEST_REQUIRE_SERVERS") == "1" {
			t.Fatal("RIPPLE_TEST_AMQP_URL is not set but RIPPLE_TEST_REQUIRE_SERVERS=1: start rabbitmq-server (scripts/test does) and export RIPPLE_TEST_AMQP_URL=amqp://guest:guest@127.0.0.1:PORT/")
		}
		t.Skip("no RabbitMQ: set RIPPLE_TEST_AMQP_URL=amqp://guest:guest@127.0.0.1:5672/ to run the amqp transport tests")
	}
	return u
}

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// testNamespace is a namespace unique to one test.
func testNamespace(t testing.TB) string {
	name := strings.NewReplacer("/", ".", " ", "_", "#", "_", "=", "_").Replace(t.Name())
	if len(name) > 60 {
		name = name[:60]
	}
	return "rt." + name + "." + randHex(3)
}

// namespaceURL returns the broker URL with a fresh namespace whose queues
// are deleted when the test ends.
func namespaceURL(t testing.TB) string {
	t.Helper()
	base := serverURL(t)
	ns := testNamespace(t)
	t.Cleanup(func() { deleteNamespace(base, ns) })
	sep := "?"
	if strings.Contains(base, "?") {
		sep = "&"
	}
	return base + sep + "namespace=" + ns
}

// deleteNamespace deletes the exchange of a namespace; its quorum queues
// are deleted by name as the test's handlers are not known here, so it
// deletes the queues this process declared through any driver.
func deleteNamespace(base, ns string) {
	c, err := amqp.DialConfig(base, amqp.Config{Dial: amqp.DefaultDial(5 * time.Second)})
	if err != nil {
		return
	}
	defer c.Close()
	ch, err := c.Channel()
	if err != nil {
		return
	}
	_ = ch.ExchangeDelete(ns+".events", false, false)
	declaredMu.Lock()
	qs := declaredQueues[ns]
	delete(declaredQueues, ns)
	declaredMu.Unlock()
	for _, q := range qs {
		if ch.IsClosed() {
			if ch, err = c.Channel(); err != nil {
				return
			}
		}
		_, _ = ch.QueueDelete(q, false, false, false)
	}

}

var (
	declaredMu     sync.Mutex
	declaredQueues = map[string][]string{}
)

func init() {
	declareHook = func(ns, q string) {
		declaredMu.Lock()
		defer declaredMu.Unlock()
		if !slices.Contains(declaredQueues[ns], q) {
			declaredQueues[ns] = append(declaredQueues[ns], q)
		}
	}
}
