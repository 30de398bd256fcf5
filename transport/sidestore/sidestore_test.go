package sidestore_test

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ripplehq/ripple/transport"
	_ "github.com/ripplehq/ripple/transport/memory"
	"github.com/ripplehq/ripple/transport/sidestore"
	_ "github.com/ripplehq/ripple/transport/sqlite"
)

func open(t *testing.T, file, namespace string) *sidestore.Store {
	t.Helper()
	s, err := sidestore.Open(context.Background(), "kafka", "store", "sqlite://"+file, namespace, transport.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func msg(source, id string, generated bool) *transport.Message {
	return &transport.Message{ID: id, IDGenerated: generated, Type: "user.created",
		Time: time.Now(), Attrs: map[string]string{"source": source}, Data: []byte(`{"n":1}`)}
}

// sender records what reached the "broker".
type sender struct {
	mu   sync.Mutex
	sent []string
	fail error
	slow time.Duration
}

func (b *sender) send(ctx context.Context, ms []*transport.Message) error {
	time.Sleep(b.slow)
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.fail != nil {
		return b.fail
	}
	for _, m := range ms {
		b.sent = append(b.sent, m.Source()+"|"+m.ID)
	}
	return nil
}

func (b *sender) got() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]string(nil), b.sent...)
}

func TestOpenRefusesStoresThatCannotHoldClaims(t *testing.T) {
	ctx := context.Background()
	for _, c := range []struct{ url, want string }{
		{"memory://", "inside this process only"},
		{"kafka://127.0.0.1:9092", "cannot be a kafka:// URL"},
		{"nosuch://x", "no transport is registered for nosuch://"},
		{"not a url", "is not a transport URL"},
		{"redis//user:secret@host", "is not a transport URL"},
	} {
		_, err := sidestore.Open(ctx, "kafka", "store", c.url, "ns", transport.Config{})
		if err == nil || !strings.Contains(err.Error(), c.want) || strings.Contains(err.Error(), "secret") {
			t.Errorf("Open(%q) = %v; want an error containing %q and no password", c.url, err, c.want)
		}
	}
}

func TestRedactHidesPassword(t *testing.T) {
	got := sidestore.Redact("redis://user:secret@host:6379/0")
	if strings.Contains(got, "secret") {
		t.Fatalf("Redact kept the password: %s", got)
	}
}

func TestSendDeduplicatesBySourceAndID(t *testing.T) {
	s := open(t, filepath.Join(t.TempDir(), "store.db"), "ns")
	ctx := context.Background()
	b := &sender{}
	first := msg("app", "a", false)
	if err := s.Send(ctx, []*transport.Message{first}, b.send); err != nil {
		t.Fatal(err)
	}
	if first.Duplicate != nil {
		t.Fatal("first publish reported as duplicate")
	}
	again := msg("app", "a", false)
	other := msg("billing", "a", false)
	if err := s.Send(ctx, []*transport.Message{again, other}, b.send); err != nil {
		t.Fatal(err)
	}
	if again.Duplicate == nil || again.Duplicate.ID != "a" {
		t.Fatalf("resend of (app, a) not reported as duplicate: %+v", again.Duplicate)
	}
	if other.Duplicate != nil {
		t.Fatal("same id under another source reported as duplicate")
	}
	if got := b.got(); strings.Join(got, ",") != "app|a,billing|a" {
		t.Fatalf("broker got %v; want app|a then billing|a", got)
	}
}

func TestGeneratedIDsSkipTheStore(t *testing.T) {
	s := open(t, filepath.Join(t.TempDir(), "store.db"), "ns")
	b := &sender{}
	for range 2 {
		if err := s.Send(context.Background(), []*transport.Message{msg("app", "g", true)}, b.send); err != nil {
			t.Fatal(err)
		}
	}
	if n := len(b.got()); n != 2 {
		t.Fatalf("generated ids: broker got %d messages; want 2 (no deduplication)", n)
	}
}

func TestFailedSendReleasesTheIdentity(t *testing.T) {
	s := open(t, filepath.Join(t.TempDir(), "store.db"), "ns")
	ctx := context.Background()
	b := &sender{fail: errors.New("broker down")}
	if err := s.Send(ctx, []*transport.Message{msg("app", "x", false)}, b.send); err == nil {
		t.Fatal("send failure not returned")
	}
	b.fail = nil
	m := msg("app", "x", false)
	if err := s.Send(ctx, []*transport.Message{m}, b.send); err != nil {
		t.Fatal(err)
	}
	if m.Duplicate != nil || len(b.got()) != 1 {
		t.Fatalf("retry after a failed send: duplicate=%v, broker got %v; want it sent", m.Duplicate != nil, b.got())
	}
}

func TestConcurrentPublishersSendOnce(t *testing.T) {
	s := open(t, filepath.Join(t.TempDir(), "store.db"), "ns")
	b := &sender{slow: 50 * time.Millisecond}
	var dups atomic.Int32
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			m := msg("app", "same", false)
			if err := s.Send(context.Background(), []*transport.Message{m}, b.send); err != nil {
				t.Error(err)
			}
			if m.Duplicate != nil {
				dups.Add(1)
			}
		}()
	}
	wg.Wait()
	if got := b.got(); len(got) != 1 || dups.Load() != 3 {
		t.Fatalf("4 concurrent publishes of one identity: broker got %v, %d duplicates; want 1 and 3", got, dups.Load())
	}
}

func TestBusyIdentityWaitsWithinContext(t *testing.T) {
	s := open(t, filepath.Join(t.TempDir(), "store.db"), "ns")
	block := make(chan struct{})
	go func() {
		_ = s.Send(context.Background(), []*transport.Message{msg("app", "held", false)}, func(context.Context, []*transport.Message) error {
			<-block
			return nil
		})
	}()
	defer close(block)
	// Wait until the first publisher holds the identity.
	deadline := time.Now().Add(30 * time.Second)
	for {
		r, err := s.Claim(context.Background(), "$publish", transport.IdentityKey("app", "held"), time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		if r == transport.Busy {
			break
		}
		if r == transport.Claimed {
			_ = s.Finish(context.Background(), "$publish", transport.IdentityKey("app", "held"), false)
		}
		if time.Now().After(deadline) {
			t.Fatal("the first publisher never held the identity")
		}
		time.Sleep(5 * time.Millisecond)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	err := s.Send(ctx, []*transport.Message{msg("app", "held", false)}, (&sender{}).send)
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "another publisher") {
		t.Fatalf("publish of a held identity = %v; want a deadline error naming the other publisher", err)
	}
}

func TestNamespacesAreSeparate(t *testing.T) {
	file := filepath.Join(t.TempDir(), "store.db")
	a, b := open(t, file, "one"), open(t, file, "two")
	br := &sender{}
	for _, s := range []*sidestore.Store{a, b} {
		if err := s.Send(context.Background(), []*transport.Message{msg("app", "n", false)}, br.send); err != nil {
			t.Fatal(err)
		}
	}
	if len(br.got()) != 2 {
		t.Fatalf("two namespaces: broker got %v; want the event once per namespace", br.got())
	}
}

func TestReserveIsASharedSlidingWindow(t *testing.T) {
	file := filepath.Join(t.TempDir(), "store.db")
	a, b := open(t, file, "ns"), open(t, file, "ns")
	if !a.SharedRateLimit() {
		t.Fatal("a sqlite store keeps shared rate limits")
	}
	ctx := context.Background()
	for _, s := range []*sidestore.Store{a, b} {
		if w, err := s.Reserve(ctx, "h", 2, time.Hour); err != nil || w != 0 {
			t.Fatalf("Reserve within the limit = %v, %v; want 0", w, err)
		}
	}
	w, err := a.Reserve(ctx, "h", 2, time.Hour)
	if err != nil || w < 50*time.Minute {
		t.Fatalf("third start in one window across two stores = %v, %v; want a wait near an hour", w, err)
	}
}
