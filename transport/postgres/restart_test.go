package postgres

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ripplehq/ripple"
)

// cluster is a throwaway PostgreSQL cluster of the test's own, which it
// may stop and start again.
type cluster struct {
	t    *testing.T
	bin  string
	dir  string
	port int
	cred *syscall.Credential
	cmd  *exec.Cmd
}

func pgBin(t *testing.T) string {
	if b := os.Getenv("RIPPLE_TEST_POSTGRES_BIN"); b != "" {
		return b
	}
	m, _ := filepath.Glob("/usr/lib/postgresql/*/bin/initdb")
	if len(m) == 0 {
		if os.Getenv("RIPPLE_TEST_REQUIRE_SERVERS") == "1" {
			t.Fatal("no PostgreSQL binaries (initdb): set RIPPLE_TEST_POSTGRES_BIN")
		}
		t.Skip("no PostgreSQL binaries (initdb) to start a cluster of the test's own; set RIPPLE_TEST_POSTGRES_BIN")
	}
	return filepath.Dir(m[len(m)-1])
}

func newCluster(t *testing.T) *cluster {
	serverURL(t) // skip with the usual message when no server is configured
	c := &cluster{t: t, bin: pgBin(t)}
	dir, err := os.MkdirTemp("", "ripple-pg-restart-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	c.dir = dir
	if os.Geteuid() == 0 {
		// initdb refuses to run as root: the cluster belongs to the
		// postgres system user.
		u, err := user.Lookup("postgres")
		if err != nil {
			t.Skip("running as root without a postgres user to own a test cluster")
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		c.cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
		if err := os.Chmod(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(dir, uid, gid); err != nil {
			t.Fatal(err)
		}
	}
	initdb := exec.Command(filepath.Join(c.bin, "initdb"), "-D", filepath.Join(dir, "data"), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-instructions")
	initdb.SysProcAttr = &syscall.SysProcAttr{Credential: c.cred}
	if out, err := initdb.CombinedOutput(); err != nil {
		t.Fatalf("initdb: %v\n%s", err, out)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c.port = l.Addr().(*net.TCPAddr).Port
	_ = l.Close()
	c.start()
	t.Cleanup(c.stop)
	return c
}

func (c *cluster) url() string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", c.port)
}

func (c *cluster) start() {
	c.t.Helper()
	c.cmd = exec.Command(filepath.Join(c.bin, "postgres"), "-D", filepath.Join(c.dir, "data"), "-p", strconv.Itoa(c.port),
		"-k", c.dir, "-c", "listen_addresses=127.0.0.1", "-c", "fsync=on")
	c.cmd.SysProcAttr = &syscall.SysProcAttr{Credential: c.cred}
	log, err := os.OpenFile(filepath.Join(c.dir, "postgres.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		c.t.Fatal(err)
	}
	c.cmd.Stdout, c.cmd.Stderr = log, log
	if err := c.cmd.Start(); err != nil {
		c.t.Fatal(err)
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		if err := exec.Command(filepath.Join(c.bin, "pg_isready"), "-q", "-h", "127.0.0.1", "-p", strconv.Itoa(c.port)).Run(); err == nil {
			return
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(filepath.Join(c.dir, "postgres.log"))
			c.t.Fatalf("postgres did not start:\n%s", b)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// stop shuts the server down (fast shutdown: clients are disconnected,
// committed work is kept).
func (c *cluster) stop() {
	if c.cmd == nil {
		return
	}
	_ = c.cmd.Process.Signal(syscall.SIGINT)
	done := make(chan struct{})
	go func() { _ = c.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		_ = c.cmd.Process.Kill()
		<-done
	}
	c.cmd = nil
}

// PostgreSQL restarted while events are published and handled: the
// clients reconnect, and every event whose Publish returned nil is
// handled.
func TestPostgresRestart(t *testing.T) {
	c := newCluster(t)
	bus := openBus(t, c.url())
	var mu sync.Mutex
	handled := map[string]bool{}
	if err := bus.On("restart.event.done", "restart.sink", func(_ context.Context, e ripple.Event) error {
		mu.Lock()
		handled[e.ID] = true
		mu.Unlock()
		return nil
	}, ripple.Backoff(50*time.Millisecond, 500*time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	if err := bus.Start(bg); err != nil {
		t.Fatal(err)
	}
	const total = 120
	var acked []string
	failures := 0
	restarted := false
	for i := 0; len(acked) < total; i++ {
		id := fmt.Sprintf("ev-%04d", len(acked))
		ctx, cancel := context.WithTimeout(bg, 2*time.Second)
		_, err := bus.Publish(ctx, "restart.event.done", len(acked), ripple.WithID(id))
		cancel()
		if err != nil {
			failures++
			if failures > 300 {
				t.Fatalf("Publish keeps failing after the restart: %v", err)
			}
			time.Sleep(100 * time.Millisecond)
			continue // the same id again: deduplication keeps it once
		}
		acked = append(acked, id)
		if len(acked) == total/2 && !restarted {
			restarted = true
			c.stop()
			time.Sleep(300 * time.Millisecond)
			c.start()
		}
	}
	t.Logf("%d publishes failed while the server was down or reconnecting", failures)
	deadline := time.Now().Add(60 * time.Second)
	for {
		mu.Lock()
		missing := 0
		for _, id := range acked {
			if !handled[id] {
				missing++
			}
		}
		mu.Unlock()
		if missing == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d acknowledged events were never handled after the restart", missing, total)
		}
		time.Sleep(50 * time.Millisecond)
	}
	waitFor(t, "Stats to count every event completed", func() bool {
		st, err := bus.Stats(bg)
		return err == nil && len(st) == 1 && st[0].Completed >= total
	})
}
