//go:build linux

package xwake

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

const (
	// maxSockPath is the longest path a sockaddr_un holds (108 bytes
	// with its terminating NUL).
	maxSockPath = 107
	// sockSuffix ends every member's socket name; other files in the
	// directory are left alone.
	sockSuffix = ".sock"
	// mtimeSlack is how long after the directory's last change a listing
	// is still taken again at the next round: a member that joins within
	// the file system's timestamp granularity of an earlier change leaves
	// the modification time as it was.
	mtimeSlack = 100 * time.Millisecond
	// relistEvery bounds how long a listing is trusted at all.
	relistEvery = 5 * time.Second
	// openTries bounds Open's retries when the last member removes the
	// directory between Open making it and binding in it.
	openTries = 10
)

// Notifier is one process's membership of the group sharing a database
// file. Its methods are safe for concurrent use.
type Notifier struct {
	dir  string   // path+".wake"
	dirf *os.File // held open on dir when base addresses it by descriptor
	// base is the directory's name in socket addresses: dir itself, or
	// /proc/self/fd/N when dir is too long for a socket address.
	base string
	self string // this member's socket name
	id   uint64 // this member's id, carried in its datagrams

	conn   *net.UnixConn // this member's bound socket
	sendFD int           // unbound datagram socket the sender sends from

	kick chan struct{} // a round is pending (capacity 1)
	c    chan struct{} // capacity 1
	done chan struct{}
	wg   sync.WaitGroup
	once sync.Once

	// Sender goroutine state.
	members  []string
	listMod  time.Time
	listedAt time.Time

	// Counters, for tests and diagnosis.
	kicks     atomic.Int64 // Notify calls that made a round pending
	rounds    atomic.Int64 // rounds completed
	sent      atomic.Int64 // datagrams sent
	full      atomic.Int64 // datagrams not sent: the member's queue was full
	removed   atomic.Int64 // dead members' sockets removed
	swept     atomic.Bool  // the sweep at joining is done
	received  atomic.Int64 // datagrams received from other members
	selfWakes atomic.Int64 // datagrams received from this member (ignored)
}

// Open joins the group of processes that share the database file at path.
// It makes the directory path+".wake" if needed and binds this member's
// socket in it. The database file need not exist yet.
func Open(path string) (*Notifier, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("xwake: database path %q: %w", path, err)
	}
	dir := abs + ".wake"
	dirMode, sockMode, err := modes(abs)
	if err != nil {
		return nil, err
	}
	var idb [8]byte
	if _, err := rand.Read(idb[:]); err != nil {
		return nil, fmt.Errorf("xwake: %w", err)
	}
	n := &Notifier{
		dir:  dir,
		id:   binary.LittleEndian.Uint64(idb[:]),
		kick: make(chan struct{}, 1),
		c:    make(chan struct{}, 1),
		done: make(chan struct{}),
	}
	n.self = fmt.Sprintf("%d-%016x%s", os.Getpid(), n.id, sockSuffix)
	for try := 0; ; try++ {
		err = n.bind(dirMode)
		if err == nil || try == openTries || !errors.Is(err, fs.ErrNotExist) {
			break
		}
		// The last member removed the directory between our Mkdir and
		// our bind: make it again.
	}
	if err != nil {
		if n.dirf != nil {
			_ = n.dirf.Close()
		}
		// Leave no empty directory behind (fails if it holds members).
		_ = syscall.Rmdir(dir)
		return nil, fmt.Errorf("xwake: joining %s: %w", dir, err)
	}
	// Sockets are made under the umask; give this one the database's
	// permission bits, so that whoever may write the database may wake
	// this member. The directory's permission bits guard it already.
	if err := os.Chmod(n.addr(n.self), sockMode); err != nil {
		n.abandon()
		return nil, fmt.Errorf("xwake: %w", err)
	}
	n.sendFD, err = syscall.Socket(syscall.AF_UNIX, syscall.SOCK_DGRAM|syscall.SOCK_CLOEXEC|syscall.SOCK_NONBLOCK, 0)
	if err != nil {
		n.abandon()
		return nil, fmt.Errorf("xwake: socket: %w", err)
	}
	n.wg.Add(2)
	go n.readLoop()
	go n.sendLoop()
	return n, nil
}

// modes returns the permission bits for the directory (those of the
// database's directory) and for a socket (those of the database file when
// it exists, else the directory's, without execute bits).
func modes(abs string) (dirMode, sockMode os.FileMode, err error) {
	st, err := os.Stat(filepath.Dir(abs))
	if err != nil {
		return 0, 0, fmt.Errorf("xwake: the database's directory: %w", err)
	}
	dirMode = st.Mode().Perm()
	sockMode = dirMode &^ 0o111
	if st, err := os.Stat(abs); err == nil {
		sockMode = st.Mode().Perm() &^ 0o111
	}
	return dirMode, sockMode, nil
}

// bind makes the directory if it is missing and binds this member's socket
// in it.
func (n *Notifier) bind(mode os.FileMode) error {
	if n.dirf != nil {
		_ = n.dirf.Close()
		n.dirf = nil
	}
	if err := os.Mkdir(n.dir, mode); err == nil {
		// Mkdir applies the umask; the directory gets exactly the
		// database directory's bits.
		if err := os.Chmod(n.dir, mode); err != nil {
			return err
		}
	} else if !errors.Is(err, fs.ErrExist) {
		return err
	}
	n.base = n.dir
	if len(n.dir)+1+len(n.self) > maxSockPath {
		f, err := os.Open(n.dir)
		if err != nil {
			return err
		}
		n.dirf = f
		n.base = "/proc/self/fd/" + strconv.Itoa(int(f.Fd()))
	}
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: n.addr(n.self), Net: "unixgram"})
	if err != nil {
		var op *net.OpError
		if errors.As(err, &op) {
			err = op.Err
		}
		return err
	}
	n.conn = conn
	return nil
}

func (n *Notifier) addr(name string) string { return n.base + "/" + name }

// Notify wakes the other members. It never blocks: it hands the wake-up to
// the member's sender goroutine, and calls made while one is pending cost
// nothing more. After Close, or on a nil Notifier, it does nothing.
func (n *Notifier) Notify() {
	if n == nil {
		return
	}
	// kicks counts the round before it can run, so kicks == rounds only
	// when no round is pending or running.
	n.kicks.Add(1)
	select {
	case n.kick <- struct{}{}:
	default:
		n.kicks.Add(-1)
	}
}

// C receives when another member called Notify. Its capacity is one, so
// wake-ups that arrive while one is pending coalesce. It never fires after
// Close and is never closed. A nil Notifier's C is nil, which never fires
// in a select.
func (n *Notifier) C() <-chan struct{} {
	if n == nil {
		return nil
	}
	return n.c
}

// Close leaves the group: this member's socket is removed, and the
// directory too when no other member remains. It is idempotent, and does
// nothing on a nil Notifier.
func (n *Notifier) Close() error {
	if n == nil {
		return nil
	}
	var err error
	n.once.Do(func() {
		close(n.done)
		// Remove the socket before closing it, so that no other member
		// ever sees it unbound and takes this member for dead.
		if e := syscall.Unlink(n.addr(n.self)); e != nil && !errors.Is(e, fs.ErrNotExist) {
			err = fmt.Errorf("xwake: removing %s: %w", filepath.Join(n.dir, n.self), e)
		}
		n.closeSockets()
		n.wg.Wait()
		_ = syscall.Close(n.sendFD)
		// Succeeds only for the last member; a member opening now makes
		// the directory again.
		_ = syscall.Rmdir(n.dir)
	})
	return err
}

// abandon undoes a bind when Open fails after it.
func (n *Notifier) abandon() {
	_ = syscall.Unlink(n.addr(n.self))
	n.closeSockets()
	_ = syscall.Rmdir(n.dir)
}

func (n *Notifier) closeSockets() {
	if n.conn != nil {
		_ = n.conn.Close()
	}
	if n.dirf != nil {
		_ = n.dirf.Close()
	}
}

// readLoop turns received datagrams into wake-ups on c until Close.
func (n *Notifier) readLoop() {
	defer n.wg.Done()
	buf := make([]byte, 16)
	for {
		k, err := n.conn.Read(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			select {
			case <-n.done:
				return
			case <-time.After(10 * time.Millisecond):
				// A transient error (out of memory): try again.
				continue
			}
		}
		if k == 8 && binary.LittleEndian.Uint64(buf[:8]) == n.id {
			n.selfWakes.Add(1)
			continue
		}
		n.received.Add(1)
		select {
		case n.c <- struct{}{}:
		default:
		}
	}
}

// sendLoop runs one round per pending Notify until Close.
func (n *Notifier) sendLoop() {
	defer n.wg.Done()
	msg := make([]byte, 8)
	binary.LittleEndian.PutUint64(msg, n.id)
	n.sweep()
	for {
		select {
		case <-n.done:
			return
		case <-n.kick:
		}
		n.round(msg)
		n.rounds.Add(1)
	}
}

// sweep removes the sockets of members that died without Close, so that a
// member that never notifies still clears what a killed one left. It
// probes each with a connect, which sends nothing and fails with
// ECONNREFUSED when no one is bound to the socket.
func (n *Notifier) sweep() {
	n.refresh()
	for _, m := range n.members {
		select {
		case <-n.done:
			return
		default:
		}
		if m == n.self {
			continue
		}
		fd, err := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_DGRAM|syscall.SOCK_CLOEXEC|syscall.SOCK_NONBLOCK, 0)
		if err != nil {
			return
		}
		err = syscall.Connect(fd, &syscall.SockaddrUnix{Name: n.addr(m)})
		_ = syscall.Close(fd)
		if errors.Is(err, syscall.ECONNREFUSED) && syscall.Unlink(n.addr(m)) == nil {
			n.removed.Add(1)
		}
	}
	// The next round lists the directory again.
	n.listedAt = time.Time{}
	n.swept.Store(true)
}

// round sends msg to every other member once.
func (n *Notifier) round(msg []byte) {
	n.refresh()
	keep := n.members[:0]
	for _, m := range n.members {
		select {
		case <-n.done:
			return
		default:
		}
		if m == n.self {
			keep = append(keep, m)
			continue
		}
		err := syscall.Sendto(n.sendFD, msg, syscall.MSG_DONTWAIT, &syscall.SockaddrUnix{Name: n.addr(m)})
		switch {
		case err == nil:
			n.sent.Add(1)
		case errors.Is(err, syscall.ECONNREFUSED):
			// No one is bound to it: its member died without Close.
			if e := syscall.Unlink(n.addr(m)); e == nil {
				n.removed.Add(1)
			}
			continue
		case errors.Is(err, syscall.ENOENT):
			// It left since the listing.
			continue
		case errors.Is(err, syscall.EAGAIN):
			// Its queue is full, so it has wake-ups pending.
			n.full.Add(1)
		}
		// Anything else (EACCES: another user's member) is skipped.
		keep = append(keep, m)
	}
	n.members = keep
}

// refresh reads the directory again when it may have changed since the
// last listing.
func (n *Notifier) refresh() {
	st, err := os.Stat(n.base)
	if err != nil {
		return
	}
	now := time.Now()
	mod := st.ModTime()
	if n.listedAt.IsZero() || !mod.Equal(n.listMod) || n.listedAt.Sub(mod) < mtimeSlack || now.Sub(n.listedAt) > relistEvery {
		ents, err := os.ReadDir(n.base)
		if err != nil {
			return
		}
		n.members = n.members[:0]
		for _, e := range ents {
			if strings.HasSuffix(e.Name(), sockSuffix) && e.Type()&fs.ModeSocket != 0 {
				n.members = append(n.members, e.Name())
			}
		}
		n.listMod, n.listedAt = mod, now
	}
}
