//go:build !linux

package xwake

// Notifier is one process's membership of the group sharing a database
// file. On this platform it wakes no one: Notify does nothing and C never
// fires, so a user's poll is what notices other processes' commits.
type Notifier struct {
	c chan struct{}
}

// Open joins the group of processes that share the database file at path.
// On this platform it always succeeds with a Notifier that does nothing.
func Open(path string) (*Notifier, error) {
	return &Notifier{c: make(chan struct{}, 1)}, nil
}

// Notify wakes the other members; on this platform it does nothing.
func (n *Notifier) Notify() {}

// C receives when another member called Notify; on this platform it never
// fires.
func (n *Notifier) C() <-chan struct{} {
	if n == nil {
		return nil
	}
	return n.c
}

// Close leaves the group. It is idempotent.
func (n *Notifier) Close() error { return nil }
