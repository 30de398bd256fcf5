//go:build linux

package xwake

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// patience bounds every wait for something that must happen; the tests
// never assert how fast it happens.
const patience = 20 * time.Second

// childEnv names the mode a re-executed test binary runs in (see TestMain).
const childEnv = "XWAKE_TEST_CHILD"

func TestMain(m *testing.M) {
	if mode := os.Getenv(childEnv); mode != "" {
		os.Exit(child(mode, os.Getenv("XWAKE_TEST_DB")))
	}
	os.Exit(m.Run())
}

// child is a member in another process. It prints "ready" once it has
// joined, then:
//   - "echo": answers every wake-up with a Notify, printing "woke" for
//     each, until its stdin closes;
//   - "sleep": waits for its stdin to close (or to be killed).
func child(mode, db string) int {
	n, err := Open(db)
	if err != nil {
		fmt.Println("error:", err)
		return 1
	}
	defer n.Close()
	fmt.Println("ready")
	eof := make(chan struct{})
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		close(eof)
	}()
	for {
		select {
		case <-eof:
			return 0
		case <-n.C():
			if mode == "echo" {
				n.Notify()
				fmt.Println("woke")
			}
		}
	}
}

type proc struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	lines chan string
}

// startChild runs this test binary as a member of db's group in mode and
// waits until it has joined.
func startChild(t testing.TB, db, mode string) *proc {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+mode, "XWAKE_TEST_DB="+db)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &proc{cmd: cmd, stdin: stdin, lines: make(chan string, 1024)}
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			p.lines <- sc.Text()
		}
		close(p.lines)
	}()
	t.Cleanup(func() {
		_ = stdin.Close()
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	if l := p.expect(t); l != "ready" {
		t.Fatalf("child said %q, want ready", l)
	}
	return p
}

func (p *proc) expect(t testing.TB) string {
	t.Helper()
	select {
	case l, ok := <-p.lines:
		if !ok {
			t.Fatal("child exited")
		}
		return l
	case <-time.After(patience):
		t.Fatal("child said nothing")
	}
	return ""
}

func open(t testing.TB, db string) *Notifier {
	t.Helper()
	n, err := Open(db)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = n.Close() })
	return n
}

func woken(t testing.TB, n *Notifier, who string) {
	t.Helper()
	select {
	case <-n.C():
	case <-time.After(patience):
		t.Fatalf("%s was not woken", who)
	}
}

// eventually waits until cond holds.
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(patience)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("never: %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func pending(n *Notifier) bool {
	select {
	case <-n.C():
		return true
	default:
		return false
	}
}

// settle waits until no round is pending or running and every datagram
// sent so far has been read.
func settle(t testing.TB, ns ...*Notifier) {
	t.Helper()
	eventually(t, "rounds done and datagrams read", func() bool {
		var sent, got int64
		for _, n := range ns {
			if n.kicks.Load() != n.rounds.Load() {
				return false
			}
			sent += n.sent.Load()
			got += n.received.Load()
		}
		return sent == got
	})
}

func TestTwoMembers(t *testing.T) {
	db := filepath.Join(t.TempDir(), "app.db")
	a, b := open(t, db), open(t, db)
	a.Notify()
	woken(t, b, "b")
	settle(t, a, b)
	if pending(a) {
		t.Fatal("a woke itself")
	}
	b.Notify()
	woken(t, a, "a")
	settle(t, a, b)
	if pending(b) {
		t.Fatal("b woke itself")
	}
	if a.selfWakes.Load() != 0 || b.selfWakes.Load() != 0 {
		t.Fatalf("members sent to themselves: a %d, b %d", a.selfWakes.Load(), b.selfWakes.Load())
	}
	// The group lives in <db>.wake, one socket per member.
	ents, err := os.ReadDir(db + ".wake")
	if err != nil || len(ents) != 2 {
		t.Fatalf("%s.wake holds %d entries (%v), want the 2 members' sockets", db, len(ents), err)
	}
}

func TestThreeMembersAndLateJoiner(t *testing.T) {
	db := filepath.Join(t.TempDir(), "app.db")
	a, b := open(t, db), open(t, db)
	a.Notify()
	woken(t, b, "b")
	settle(t, a, b)
	// c joins after a has listed the group: a must find it.
	c := open(t, db)
	a.Notify()
	woken(t, b, "b")
	woken(t, c, "c")
	settle(t, a, b, c)
	if pending(a) {
		t.Fatal("a woke itself")
	}
	c.Notify()
	woken(t, a, "a")
	woken(t, b, "b")
	settle(t, a, b, c)
	if pending(c) {
		t.Fatal("c woke itself")
	}
	// b leaves; a and c still wake each other and a forgets b.
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if err := b.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	a.Notify()
	woken(t, c, "c")
	settle(t, a, b, c)
	if pending(b) {
		t.Fatal("b was woken after Close")
	}
	if r := a.removed.Load(); r != 0 {
		t.Fatalf("a removed %d sockets; b left cleanly and removed its own", r)
	}
}

func TestCoalesced(t *testing.T) {
	db := filepath.Join(t.TempDir(), "app.db")
	a, b := open(t, db), open(t, db)
	const calls = 10000
	for range calls {
		a.Notify()
	}
	woken(t, b, "b")
	settle(t, a, b)
	// A round costs far more than a call, and calls made while one is
	// pending cost nothing: rounds are a small fraction of the calls.
	if r := a.rounds.Load(); r < 1 || r > calls/10 {
		t.Fatalf("%d Notify calls made %d rounds; want between 1 and %d", calls, r, calls/10)
	}
	// Each round sent b one datagram, or found b's queue full.
	if got, full := b.received.Load(), a.full.Load(); got+full != a.rounds.Load() {
		t.Fatalf("b received %d datagrams and a found b's queue full %d times in %d rounds", got, full, a.rounds.Load())
	}
}

func TestChildProcess(t *testing.T) {
	db := filepath.Join(t.TempDir(), "app.db")
	parent := open(t, db)
	p := startChild(t, db, "echo")
	// Parent wakes the child, which answers by waking the parent.
	for i := range 3 {
		parent.Notify()
		if l := p.expect(t); l != "woke" {
			t.Fatalf("round %d: child said %q, want woke", i, l)
		}
		woken(t, parent, "the parent")
	}
	_ = p.stdin.Close()
	if err := p.cmd.Wait(); err != nil {
		t.Fatalf("child: %v", err)
	}
	// The child closed cleanly: only the parent's socket is left.
	ents, _ := os.ReadDir(db + ".wake")
	if len(ents) != 1 || ents[0].Name() != parent.self {
		t.Fatalf("after the child's Close the directory holds %v", ents)
	}
}

func TestKilledMemberCleanedUp(t *testing.T) {
	db := filepath.Join(t.TempDir(), "app.db")
	a, b := open(t, db), open(t, db)
	// Their sweeps at joining are done, so the killed member's socket is
	// left for a's round to find.
	eventually(t, "a and b swept", func() bool { return a.swept.Load() && b.swept.Load() })
	p := startChild(t, db, "sleep")
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = p.cmd.Wait()
	dead := fmt.Sprintf("%d-", p.cmd.Process.Pid)
	socks := func() []string {
		ents, _ := os.ReadDir(db + ".wake")
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		return names
	}
	if !slices.ContainsFunc(socks(), func(s string) bool { return strings.HasPrefix(s, dead) }) {
		t.Fatalf("the killed member left no socket (%v); the test shows nothing", socks())
	}
	a.Notify()
	woken(t, b, "b")
	eventually(t, "the killed member's socket removed", func() bool {
		return !slices.ContainsFunc(socks(), func(s string) bool { return strings.HasPrefix(s, dead) })
	})
	settle(t, a, b)
	if a.removed.Load() != 1 {
		t.Fatalf("a removed %d sockets, want the killed member's 1", a.removed.Load())
	}
	// The survivors still wake each other, and the dead member costs
	// nothing more: a's next round sends to b only.
	before := a.sent.Load()
	a.Notify()
	woken(t, b, "b")
	settle(t, a, b)
	if d := a.sent.Load() - before; d != 1 {
		t.Fatalf("a's round after the cleanup sent %d datagrams, want 1", d)
	}
	// A member that joins clears a killed member's socket without
	// notifying anyone.
	q := startChild(t, db, "sleep")
	if err := q.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = q.cmd.Wait()
	dead = fmt.Sprintf("%d-", q.cmd.Process.Pid)
	if !slices.ContainsFunc(socks(), func(s string) bool { return strings.HasPrefix(s, dead) }) {
		t.Fatalf("the second killed member left no socket (%v)", socks())
	}
	c := open(t, db)
	eventually(t, "the joining member removed the killed member's socket", func() bool {
		return c.removed.Load() == 1
	})
	if slices.ContainsFunc(socks(), func(s string) bool { return strings.HasPrefix(s, dead) }) {
		t.Fatalf("the killed member's socket is still there: %v", socks())
	}
	if got := len(socks()); got != 3 {
		t.Fatalf("the directory holds %v, want the 3 live members' sockets", socks())
	}
	// The last member to leave removes the directory.
	_ = a.Close()
	_ = b.Close()
	_ = c.Close()
	if _, err := os.Stat(db + ".wake"); !os.IsNotExist(err) {
		t.Fatalf("after every member closed, %s.wake: %v; want it removed", db, err)
	}
}

func TestCloseWhileNotifying(t *testing.T) {
	db := filepath.Join(t.TempDir(), "app.db")
	a, b := open(t, db), open(t, db)
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
					a.Notify()
					b.Notify()
				}
			}
		}()
	}
	woken(t, b, "b")
	woken(t, a, "a")
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	// b keeps notifying a closed a: its sends fail harmlessly and it
	// forgets a.
	time.Sleep(10 * time.Millisecond)
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	close(stop)
	wg.Wait()
	a.Notify() // after Close: nothing, no panic
	if _, err := os.Stat(db + ".wake"); !os.IsNotExist(err) {
		t.Fatalf("%s.wake left after both closed: %v", db, err)
	}
}

func TestLongPath(t *testing.T) {
	dir := t.TempDir()
	for len(dir) < 150 {
		dir = filepath.Join(dir, strings.Repeat("d", 40))
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	db := filepath.Join(dir, "app.db")
	a, b := open(t, db), open(t, db)
	if a.dirf == nil || !strings.HasPrefix(a.base, "/proc/self/fd/") {
		t.Fatalf("a %d-byte directory is addressed as %q", len(a.dir), a.base)
	}
	a.Notify()
	woken(t, b, "b")
	b.Notify()
	woken(t, a, "a")
	p := startChild(t, db, "echo")
	a.Notify()
	if l := p.expect(t); l != "woke" {
		t.Fatalf("child said %q", l)
	}
	woken(t, a, "a")
	_ = a.Close()
	_ = b.Close()
	_ = p.stdin.Close()
	_ = p.cmd.Wait()
	if _, err := os.Stat(db + ".wake"); !os.IsNotExist(err) {
		t.Fatalf("%s.wake left after every member closed: %v", db, err)
	}
}

func TestPermissions(t *testing.T) {
	old := syscall.Umask(0o077)
	defer syscall.Umask(old)
	dir := filepath.Join(t.TempDir(), "data")
	if err := os.Mkdir(dir, 0o750); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o770); err != nil {
		t.Fatal(err)
	}
	db := filepath.Join(dir, "app.db")
	if err := os.WriteFile(db, nil, 0o660); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(db, 0o660); err != nil {
		t.Fatal(err)
	}
	a := open(t, db)
	st, err := os.Stat(db + ".wake")
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o770 {
		t.Fatalf("%s.wake has mode %v, want the database directory's 0770 whatever the umask", db, st.Mode().Perm())
	}
	st, err = os.Stat(filepath.Join(db+".wake", a.self))
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o660 {
		t.Fatalf("the member's socket has mode %v, want the database file's 0660", st.Mode().Perm())
	}
}

func TestOpenErrors(t *testing.T) {
	if _, err := Open(filepath.Join(t.TempDir(), "missing", "app.db")); err == nil {
		t.Fatal("Open succeeded in a directory that does not exist")
	}
	// A file where the directory should be.
	db := filepath.Join(t.TempDir(), "app.db")
	if err := os.WriteFile(db+".wake", nil, 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := Open(db)
	if err == nil || !strings.Contains(err.Error(), db+".wake") {
		t.Fatalf("Open with a file at %s.wake: %v; want an error naming it", db, err)
	}
	if st, err := os.Stat(db + ".wake"); err != nil || !st.Mode().IsRegular() {
		t.Fatalf("the file at %s.wake after the failed Open: %v, %v; want it left alone", db, st, err)
	}
}

// BenchmarkCrossProcessWake measures the round trip of a wake-up to a member
// in another process and back (Notify, the child's C, the child's Notify,
// the parent's C), and reports its p50 and p99 and the one-way p50
// (half the round trip).
func BenchmarkCrossProcessWake(b *testing.B) {
	db := filepath.Join(b.TempDir(), "app.db")
	n := open(b, db)
	p := startChild(b, db, "echo")
	go func() {
		for range p.lines {
		}
	}()
	rtts := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for range b.N {
		t0 := time.Now()
		n.Notify()
		select {
		case <-n.C():
		case <-time.After(patience):
			b.Fatal("no answer from the child")
		}
		rtts = append(rtts, time.Since(t0))
	}
	b.StopTimer()
	sort.Slice(rtts, func(i, j int) bool { return rtts[i] < rtts[j] })
	pct := func(p int) time.Duration { return rtts[(len(rtts)-1)*p/100] }
	b.ReportMetric(float64(pct(50).Microseconds()), "rtt-p50-µs")
	b.ReportMetric(float64(pct(99).Microseconds()), "rtt-p99-µs")
	b.ReportMetric(float64(pct(50).Microseconds())/2, "oneway-p50-µs")
}

func TestNilNotifier(t *testing.T) {
	var n *Notifier
	n.Notify()
	if n.C() != nil {
		t.Fatal("a nil Notifier's C is not nil")
	}
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
}

// BenchmarkNotify measures what Notify costs its caller (a publisher's
// commit path) with two other members in the group.
func BenchmarkNotify(b *testing.B) {
	db := filepath.Join(b.TempDir(), "app.db")
	n := open(b, db)
	open(b, db)
	open(b, db)
	b.ResetTimer()
	for range b.N {
		n.Notify()
	}
	b.StopTimer()
	b.ReportMetric(float64(n.rounds.Load())/float64(b.N), "rounds/op")
}

func TestManyMembers(t *testing.T) {
	db := filepath.Join(t.TempDir(), "app.db")
	ns := make([]*Notifier, 16)
	for i := range ns {
		ns[i] = open(t, db)
	}
	for _, from := range []int{0, 7, 15} {
		ns[from].Notify()
		for i, n := range ns {
			if i != from {
				woken(t, n, fmt.Sprintf("member %d (from %d)", i, from))
			}
		}
		settle(t, ns...)
		if pending(ns[from]) {
			t.Fatalf("member %d woke itself", from)
		}
	}
}
