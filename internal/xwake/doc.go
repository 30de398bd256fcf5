// Package xwake wakes the other processes that share one database file when
// one of them has committed something they may want to read, so that a
// receiver sleeping in another process need not wait for its next poll.
//
// # Mechanism (Linux)
//
// The processes that open the database at path form a group through the
// directory path+".wake" beside the file. Each member binds one Unix
// datagram socket in that directory, named after its process id and a random
// number ("<pid>-<16 hex digits>.sock"). Notify hands the wake-up to the
// member's sender goroutine and returns at once; the sender sends one
// datagram to every other member's socket with MSG_DONTWAIT, so neither the
// caller nor the sender ever waits for a slow member (a member whose queue is
// full already has wake-ups pending). Calls to Notify while a round is
// pending cost nothing more: a round sends once to each member, whatever the
// number of calls it answers. Each member's reader goroutine turns the
// datagrams it receives into a send on C, a channel of capacity one, so
// wake-ups coalesce there too.
//
// The sender keeps the list of members and reads the directory again only
// when its modification time has moved (or may have moved within the file
// system's timestamp granularity, or every few seconds at the latest), so a
// round is one fstat plus one sendto per member. A member never sends to
// itself; datagrams carry the sender's id and a member counts and ignores
// any that come from itself.
//
// A member that dies without Close (SIGKILL, a crash) leaves its socket file
// behind with no one bound to it. The next round of any member gets
// ECONNREFUSED from it and removes it, so a dead member costs one failed
// sendto, once; a member that joins also probes every socket it finds (a
// connect, which sends nothing) and removes the dead ones, so they go even
// when no one notifies. The directory stays while members remain; the last member to
// Close removes it, and a member that opens at that moment makes it again.
//
// Permissions: the directory is created with the permission bits of the
// database file's directory, and each socket gets the database file's
// permission bits (without execute), so the processes that may write the
// database may wake each other and no one else may.
//
// Unix socket addresses are limited to 107 bytes. When path+".wake/" plus a
// socket name is longer, members address the directory through the
// descriptor they hold open on it (/proc/self/fd/N/name), which is short
// whatever the database's path.
//
// The directory holds nothing durable. Deleting it while no process has the
// database open is harmless; deleting it under running members only stops
// them being woken until they open again (their polls still see every
// commit).
//
// Wake-ups are hints: a datagram may be dropped (a full queue) and a wake
// may come for nothing. A user of this package must still look at the
// database after waking, and keep a slower poll as the backstop for a member
// whose wake-up was lost.
//
// A nil *Notifier is valid: Notify and Close do nothing and C is nil, so a
// user that could not join (or has nothing to share, an in-memory database)
// keeps one code path.
//
// # Other platforms
//
// Elsewhere Open succeeds with a Notifier whose Notify does nothing and whose
// C never fires, so the poll that a user keeps as backstop is the only way a
// process notices another's commits, as before.
package xwake
