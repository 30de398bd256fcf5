package nats

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
)

// serverBinary returns the nats-server binary the fault tests start
// servers of their own with (RIPPLE_TEST_NATS_SERVER, set by scripts/test,
// or nats-server on PATH), or skips.
func serverBinary(t testing.TB) string {
	t.Helper()
	if p := os.Getenv("RIPPLE_TEST_NATS_SERVER"); p != "" {
		return p
	}
	if p, err := exec.LookPath("nats-server"); err == nil {
		return p
	}
	if os.Getenv("RIPPLE_TEST_REQUIRE_SERVERS") == "1" {
		t.Fatal("RIPPLE_TEST_NATS_SERVER is not set but RIPPLE_TEST_REQUIRE_SERVERS=1: scripts/test builds nats-server from scripts/natsserver and exports it")
	}
	t.Skip("no nats-server binary: set RIPPLE_TEST_NATS_SERVER to one (go build github.com/nats-io/nats-server/v2 in scripts/natsserver) to run the server fault tests")
	return ""
}

func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// server is a nats-server process of a test's own.
type server struct {
	t    testing.TB
	bin  string
	conf string
	port int
	log  string

	mu  sync.Mutex
	cmd *exec.Cmd
}

// startServer starts a private nats-server with the configuration conf
// (listen address and store directory are added), waits until it is
// ready, and kills it when the test ends.
func startServer(t testing.TB, port int, conf string) *server {
	t.Helper()
	dir := t.TempDir()
	s := &server{t: t, bin: serverBinary(t), port: port, conf: filepath.Join(dir, "server.conf"), log: filepath.Join(dir, "server.log")}
	if err := os.WriteFile(s.conf, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	s.start()
	t.Cleanup(s.kill)
	return s
}

// jsConf is the configuration of a single JetStream server.
func jsConf(t testing.TB, port int, extra string) string {
	return fmt.Sprintf("listen: 127.0.0.1:%d\njetstream { store_dir: %q, sync_interval: always }\n%s\n", port, t.TempDir(), extra)
}

func (s *server) url() string { return fmt.Sprintf("nats://127.0.0.1:%d", s.port) }

// start starts the server process and waits until it accepts clients.
func (s *server) start() {
	s.t.Helper()
	logf, err := os.OpenFile(s.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		s.t.Fatal(err)
	}
	cmd := exec.Command(s.bin, "-c", s.conf)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		s.t.Fatalf("start nats-server: %v", err)
	}
	go func() { _ = cmd.Wait(); logf.Close() }()
	s.mu.Lock()
	s.cmd = cmd
	s.mu.Unlock()
	deadline := time.Now().Add(60 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", s.port), time.Second)
		if err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(s.log)
			s.t.Fatalf("nats-server did not start listening on %d: %s", s.port, b)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// kill stops the server with SIGKILL.
func (s *server) kill() {
	s.mu.Lock()
	cmd := s.cmd
	s.cmd = nil
	s.mu.Unlock()
	if cmd != nil && cmd.Process != nil {
		_ = cmd.Process.Kill()
		for i := 0; i < 100; i++ {
			if c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", s.port), 100*time.Millisecond); err == nil {
				c.Close()
				time.Sleep(20 * time.Millisecond)
				continue
			}
			break
		}
	}
}

// waitJetStream waits until JetStream answers at u (a cluster elects its
// meta leader after start).
func waitJetStream(t testing.TB, u string) {
	t.Helper()
	deadline := time.Now().Add(90 * time.Second)
	for {
		nc, err := nats.Connect(u, nats.Timeout(2*time.Second))
		if err == nil {
			var msg *nats.Msg
			msg, err = nc.Request("$JS.API.INFO", nil, 2*time.Second)
			if err == nil && strings.Contains(string(msg.Data), `"error"`) {
				err = fmt.Errorf("%s", msg.Data)
			}
			nc.Close()
		}
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("JetStream at %s did not become ready: %v", u, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// proxy forwards TCP connections to a server until cut closes them all.
type proxy struct {
	l      net.Listener
	target string

	mu    sync.Mutex
	conns []net.Conn
}

func startProxy(t testing.TB, target string) *proxy {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{l: l, target: target}
	go p.serve()
	t.Cleanup(func() { l.Close(); p.cut() })
	return p
}

func (p *proxy) addr() string { return p.l.Addr().String() }

func (p *proxy) serve() {
	for {
		c, err := p.l.Accept()
		if err != nil {
			return
		}
		up, err := net.Dial("tcp", p.target)
		if err != nil {
			c.Close()
			continue
		}
		p.mu.Lock()
		p.conns = append(p.conns, c, up)
		p.mu.Unlock()
		go func() { _, _ = io.Copy(up, c); up.Close() }()
		go func() { _, _ = io.Copy(c, up); c.Close() }()
	}
}

// cut closes every proxied connection, as a network failure would.
func (p *proxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
}

var bg = context.Background()
