package kafka

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/ripplehq/ripple"
	"github.com/ripplehq/ripple/stream"
)

// TestStreamRefused: the stream package needs publish deduplication for
// its window results, which the kafka transport does not give; Run says
// so instead of publishing results twice after a re-run.
func TestStreamRefused(t *testing.T) {
	bus := openBus(t, newURL(t))
	_, err := stream.Run(bus, "user.signup.completed", "signups.per-minute", "signup.minute.counted", stream.Config[int]{Size: time.Minute})
	if !errors.Is(err, ripple.ErrNotSupported) || !strings.Contains(err.Error(), "kafka") {
		t.Errorf("stream.Run on kafka: %v; want ErrNotSupported naming kafka", err)
	}
}
