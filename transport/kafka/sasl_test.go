package kafka

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/ripplehq/ripple"
)

// TestSASL: the URL's user and password authenticate with SCRAM; a wrong
// password fails Open with an error that does not show it.
func TestSASL(t *testing.T) {
	if cluster == nil {
		t.Skip("uses its own kfake cluster with SASL (RIPPLE_TEST_KAFKA_URL is set)")
	}
	c, err := startCluster(kfake.EnableSASL(), kfake.Superuser("SCRAM-SHA-256", "app", "s3cret-pw"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	hosts := strings.Join(c.ListenAddrs(), ",")
	bus := openBus(t, "kafka://app:s3cret-pw@"+hosts+"?sasl=scram-sha-256&namespace=sasl")
	var h handled
	if err := bus.On("sasl.event.sent", "sasl.sink", h.record); err != nil {
		t.Fatal(err)
	}
	if err := bus.Start(bg); err != nil {
		t.Fatal(err)
	}
	ev, err := bus.Publish(bg, "sasl.event.sent", 1)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the event to be handled over SASL", 20*time.Second, func() bool { return h.has([]string{ev.ID}) })

	ctx, cancel := context.WithTimeout(bg, 5*time.Second)
	defer cancel()
	_, err = ripple.Open(ctx, "kafka://app:wrong-pw-123@"+hosts+"?sasl=scram-sha-256&namespace=sasl")
	if err == nil {
		t.Fatal("Open with a wrong password succeeded")
	}
	if strings.Contains(err.Error(), "wrong-pw-123") {
		t.Errorf("the error shows the password: %v", err)
	}
	if !strings.Contains(err.Error(), "password") {
		t.Errorf("the error does not point at the credentials: %v", err)
	}
}
