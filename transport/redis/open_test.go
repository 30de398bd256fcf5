package redis

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ripplehq/ripple/transport"
)

// fakeRedis6 serves, on a local port, what Open sees of a Redis 6.2: no
// HELLO (so go-redis falls back to RESP2), no CLIENT SETINFO, and INFO
// with one section only. It returns the server's address and the
// commands it received.
func fakeRedis6(t *testing.T) (addr string, received func() []string) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	var mu sync.Mutex
	var cmds []string
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				r := bufio.NewReader(c)
				for {
					args, err := readCommand(r)
					if err != nil {
						return
					}
					mu.Lock()
					cmds = append(cmds, strings.Join(args, " "))
					mu.Unlock()
					var reply string
					switch name := strings.ToUpper(args[0]); {
					case name == "HELLO":
						reply = "-ERR unknown command `HELLO`, with args beginning with: `3`, \r\n"
					case name == "PING":
						reply = "+PONG\r\n"
					case name == "INFO" && len(args) > 2:
						reply = "-ERR syntax error\r\n"
					case name == "INFO":
						body := "# Server\r\nredis_version:6.2.14\r\nredis_mode:standalone\r\n"
						reply = "$" + strconv.Itoa(len(body)) + "\r\n" + body + "\r\n"
					case name == "CLIENT":
						reply = "-ERR Unknown subcommand or wrong number of arguments for '" + args[1] + "'. Try CLIENT HELP.\r\n"
					default:
						reply = "-ERR unknown command `" + args[0] + "`\r\n"
					}
					if _, err := io.WriteString(c, reply); err != nil {
						return
					}
				}
			}()
		}
	}()
	return l.Addr().String(), func() []string {
		mu.Lock()
		defer mu.Unlock()
		return append([]string(nil), cmds...)
	}
}

// readCommand reads one RESP array of bulk strings.
func readCommand(r *bufio.Reader) ([]string, error) {
	line, err := r.ReadString('\n')
	if err != nil {
		return nil, err
	}
	n, err := strconv.Atoi(strings.TrimSpace(strings.TrimPrefix(line, "*")))
	if err != nil || n < 1 {
		return nil, fmt.Errorf("not a command: %q", line)
	}
	args := make([]string, n)
	for i := range args {
		line, err := r.ReadString('\n')
		if err != nil {
			return nil, err
		}
		size, err := strconv.Atoi(strings.TrimSpace(strings.TrimPrefix(line, "$")))
		if err != nil {
			return nil, fmt.Errorf("not a bulk string: %q", line)
		}
		b := make([]byte, size+2)
		if _, err := io.ReadFull(r, b); err != nil {
			return nil, err
		}
		args[i] = string(b[:size])
	}
	return args, nil
}

// TestOpenRedis6 checks that Open against Redis 6.2 says Ripple needs
// Redis 7, rather than passing on INFO's syntax error.
func TestOpenRedis6(t *testing.T) {
	addr, received := fakeRedis6(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	d, err := Open(ctx, "redis://"+addr+"/0", transport.Config{})
	if err == nil {
		d.Close()
		t.Fatal("Open against Redis 6.2 succeeded")
	}
	if !strings.Contains(err.Error(), `is Redis "6.2.14"; Ripple needs Redis 7 or newer`) {
		t.Fatalf("Open against Redis 6.2: %v\nthe server received %q", err, received())
	}
}

// logRecorder is a slog.Handler that keeps every record.
type logRecorder struct {
	mu   sync.Mutex
	msgs []string
}

func (c *logRecorder) Enabled(context.Context, slog.Level) bool { return true }
func (c *logRecorder) WithAttrs([]slog.Attr) slog.Handler       { return c }
func (c *logRecorder) WithGroup(string) slog.Handler            { return c }
func (c *logRecorder) Handle(_ context.Context, r slog.Record) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.msgs = append(c.msgs, r.Level.String()+" "+r.Message)
	return nil
}

func (c *logRecorder) all() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return strings.Join(c.msgs, "\n")
}

// unusedAddr returns the address of a local port nothing listens on.
func unusedAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

// TestGoRedisLogsToConfigLogger checks that go-redis's own line about a
// failed dial goes to the logger the application gave Ripple.
func TestGoRedisLogsToConfigLogger(t *testing.T) {
	var c logRecorder
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	d, err := Open(ctx, "redis://"+unusedAddr(t)+"/0", transport.Config{Logger: slog.New(&c)})
	if err == nil {
		d.Close()
		t.Fatal("Open against a closed port succeeded")
	}
	if got := c.all(); !strings.Contains(got, "DEBUG redis transport: go-redis: connection pool: failed to dial") {
		t.Fatalf("the application's logger got %q, want go-redis's failed dial at Debug", got)
	}
}
