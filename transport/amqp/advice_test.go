package amqp

import (
	"strings"
	"testing"
)

// TestAdviceNamesTheStore: the core's refusal of WithID and Idempotent()
// on this transport carries its advice to name a side store.
func TestAdviceNamesTheStore(t *testing.T) {
	var d Driver
	for _, opt := range []string{"WithID", "Idempotent"} {
		if a := d.Advice(opt); !strings.Contains(a, "store=") {
			t.Errorf("Advice(%q) = %q, want it to name store=", opt, a)
		}
	}
	if a := d.Advice("WithPriority"); a != "" {
		t.Errorf("Advice(WithPriority) = %q, want none (a store does not give priority)", a)
	}
}
