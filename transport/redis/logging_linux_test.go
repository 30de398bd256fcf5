package redis

import (
	"context"
	"io"
	"log/slog"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ripplehq/ripple/transport"
)

// stderrOf runs fn with file descriptor 2 redirected to a pipe, and
// returns what was written to it: go-redis's default logger holds the
// os.Stderr of program start, so replacing the variable would not catch
// its lines.
func stderrOf(t *testing.T, fn func()) string {
	t.Helper()
	saved, err := syscall.Dup(2)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(saved)
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	out := make(chan string, 1)
	go func() {
		b, _ := io.ReadAll(r)
		out <- string(b)
	}()
	if err := syscall.Dup3(int(w.Fd()), 2, 0); err != nil {
		w.Close()
		t.Fatal(err)
	}
	fn()
	if err := syscall.Dup3(saved, 2, 0); err != nil {
		t.Fatal(err)
	}
	w.Close()
	return <-out
}

// TestGoRedisWritesNothingToStderr opens a driver against a closed port
// with an application logger: go-redis's line about the failed dial must
// not reach stderr.
func TestGoRedisWritesNothingToStderr(t *testing.T) {
	addr := unusedAddr(t)
	var c logRecorder
	var openErr error
	got := stderrOf(t, func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		var d transport.Driver
		d, openErr = Open(ctx, "redis://"+addr+"/0", transport.Config{Logger: slog.New(&c)})
		if openErr == nil {
			d.Close()
		}
	})
	if openErr == nil {
		t.Fatal("Open against a closed port succeeded")
	}
	if strings.Contains(got, "redis: ") {
		t.Fatalf("go-redis wrote to stderr:\n%s", got)
	}
	if !strings.Contains(c.all(), "failed to dial") {
		t.Fatalf("the application's logger got %q, want go-redis's failed dial", c.all())
	}
}
