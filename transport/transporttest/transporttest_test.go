package transporttest_test

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/ripplehq/ripple/transport"
	"github.com/ripplehq/ripple/transport/memory"
	"github.com/ripplehq/ripple/transport/transporttest"
)

// The "minimal" transport is the memory transport with every optional
// capability and interface hidden: it checks that the suite's capability
// gates assert ErrNotSupported and that a driver giving only the required
// semantics passes.
func init() {
	transport.Register("minimal", func(ctx context.Context, url string, cfg transport.Config) (transport.Driver, error) {
		d, err := memory.Open(ctx, "memory://"+strings.TrimPrefix(url, "minimal://"), cfg)
		if err != nil {
			return nil, err
		}
		return minimal{inner: d}, nil
	})
}

// minimal forwards only the methods of transport.Driver, so the optional
// interfaces of the wrapped driver are not visible.
type minimal struct{ inner transport.Driver }

func (m minimal) Name() string                         { return "minimal" }
func (m minimal) Capabilities() transport.Capabilities { return transport.Capabilities{} }
func (m minimal) Close() error                         { return m.inner.Close() }
func (m minimal) Publish(ctx context.Context, msgs []*transport.Message) error {
	return m.inner.Publish(ctx, msgs)
}
func (m minimal) Subscribe(ctx context.Context, spec transport.SubscriptionSpec) (transport.Subscription, error) {
	return m.inner.Subscribe(ctx, spec)
}

var stores atomic.Int64

func TestMinimalTransport(t *testing.T) {
	transporttest.Run(t, transporttest.Harness{
		NewURL: func(testing.TB) string { return fmt.Sprintf("minimal://minimal-%d", stores.Add(1)) },
	})
}
