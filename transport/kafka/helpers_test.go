package kafka

import (
	"fmt"
	"net"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
)

// cluster is the in-process kfake cluster of this test process, or nil
// when the tests use RIPPLE_TEST_KAFKA_URL.
var (
	cluster  *kfake.Cluster
	brokers  string // host:port,host:port,...
	urlCount atomic.Int64
)

func TestMain(m *testing.M) {
	if u := os.Getenv("RIPPLE_TEST_KAFKA_URL"); u != "" {
		brokers = strings.TrimPrefix(strings.SplitN(u, "?", 2)[0], "kafka://")
		os.Exit(m.Run())
	}
	if os.Getenv(envChildURL) != "" || os.Getenv(envTailURL) != "" {
		os.Exit(m.Run())
	}
	if u := os.Getenv("RIPPLE_TRANSPORTTEST_URL"); u != "" {
		// A crash-test child: it reaches its parent's cluster through
		// the URL it was given.
		os.Exit(m.Run())
	}
	c, err := startCluster()
	if err != nil {
		fmt.Fprintln(os.Stderr, "kafka tests: starting kfake:", err)
		os.Exit(1)
	}
	cluster = c
	brokers = strings.Join(c.ListenAddrs(), ",")
	code := m.Run()
	c.Close()
	os.Exit(code)
}

// freePorts finds n free loopback ports.
func freePorts(n int) ([]int, error) {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	var out []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
		out = append(out, l.Addr().(*net.TCPAddr).Port)
	}
	return out, nil
}

// startCluster starts three kfake brokers on free loopback ports, so that
// child processes can reach them over TCP.
func startCluster(extra ...kfake.Opt) (*kfake.Cluster, error) {
	var lastErr error
	for range 5 {
		ports, err := freePorts(3)
		if err != nil {
			return nil, err
		}
		opts := append([]kfake.Opt{
			kfake.NumBrokers(3),
			kfake.Ports(ports...),
			kfake.GroupMinSessionTimeout(time.Second),
		}, extra...)
		c, err := kfake.NewCluster(opts...)
		if err == nil {
			return c, nil
		}
		lastErr = err
	}
	return nil, lastErr
}

// newURL returns the URL of a fresh namespace on the test cluster.
func newURL(t testing.TB, params ...string) string {
	ns := fmt.Sprintf("t%d-%d", os.Getpid(), urlCount.Add(1))
	u := "kafka://" + brokers + "?namespace=" + ns
	for _, p := range params {
		u += "&" + p
	}
	return u
}
