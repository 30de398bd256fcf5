package bench

import (
	"context"
	"fmt"
	"strings"
)

// HandleFunc is the counting handler every system calls once per delivery,
// with the event's payload as the system delivers it.
type HandleFunc func(data []byte)

// Instance is one running copy of a system: its handlers are subscribed and
// running, and Publish stores one event.
type Instance interface {
	// Publish publishes one event and returns once the system reports it
	// published (stored durably, for durable systems).
	Publish(ctx context.Context, payload []byte) error
	// Close stops the handlers and releases the instance's resources.
	Close() error
}

// System is one system under test.
type System struct {
	// Name identifies the system in flags and in the result table.
	Name string
	// Ripple marks Ripple's own transports, which also run the fan-out
	// scenario.
	Ripple bool
	// Consumes is false for systems that only write (the raw SQLite
	// loop): they have no end-to-end or latency results.
	Consumes bool
	// Notes says how the system is set up, for the report.
	Notes string
	// Open starts a fresh instance whose files live in dir (an empty
	// directory that is removed afterwards), with handlers handlers
	// subscribed to EventType, each at concurrency 10 and each calling h
	// once per delivery. Systems that cannot fan out fail for handlers > 1.
	Open func(ctx context.Context, dir string, handlers int, h HandleFunc) (Instance, error)
}

// HandlerConcurrency is how many events each handler runs at once.
const HandlerConcurrency = 10

// Systems returns every system the benchmark knows, in report order.
func Systems() []System {
	return []System{
		RippleSystem("ripple-memory", "in-process transport, not durable",
			func(string) string { return "memory://" }),
		RippleSystem("ripple-sqlite-full", "sqlite transport, synchronous=FULL (default)",
			func(dir string) string { return "sqlite://" + dir + "/ripple.db" }),
		RippleSystem("ripple-sqlite-normal", "sqlite transport, synchronous=NORMAL",
			func(dir string) string { return "sqlite://" + dir + "/ripple.db?synchronous=normal" }),
		WatermillGoChannel(),
		RiverSQLite(),
		Goqite(),
		RawSQLite("FULL"),
		RawSQLite("NORMAL"),
	}
}

// Select returns the systems named in the comma-separated list names, or
// every system for "all".
func Select(names string) ([]System, error) {
	all := Systems()
	if names == "all" || names == "" {
		return all, nil
	}
	var out []System
	for _, n := range strings.Split(names, ",") {
		n = strings.TrimSpace(n)
		found := false
		for _, s := range all {
			if s.Name == n {
				out = append(out, s)
				found = true
				break
			}
		}
		if !found {
			return nil, fmt.Errorf("unknown system %q; known systems: %s, or all", n, strings.Join(SystemNames(), ", "))
		}
	}
	return out, nil
}

// SystemNames lists the names Select accepts.
func SystemNames() []string {
	var names []string
	for _, s := range Systems() {
		names = append(names, s.Name)
	}
	return names
}
