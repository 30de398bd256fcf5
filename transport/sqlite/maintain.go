package sqlite

import (
	"context"
	"time"
)

// Maintenance off the publishers' path. SQLite's automatic checkpoint runs
// inside a commit, before that commit's callers can be answered, so the
// write connection has wal_autocheckpoint off, and a goroutine of its own,
// on a connection of its own, copies the WAL into the database file with
// PASSIVE checkpoints: they never wait for a lock and never block the
// writer, which keeps appending meanwhile. The WAL is bounded: a
// checkpointer beside a busy writer may keep missing the end of the WAL,
// and the WAL is rewound only once a checkpoint has reached it; past
// walBoundFrames the maintenance pass asks the writer to checkpoint
// between two transactions (writer.maybeCheckpoint), where it always
// catches up.

const (
	// checkpointPace is how often the maintenance pass checkpoints while
	// this process commits.
	checkpointPace = 5 * time.Millisecond
	// walBoundFrames bounds the WAL (in pages: 16 MiB at SQLite's default
	// 4 KiB page) before the writer checkpoints itself.
	walBoundFrames = 4096
)

// maintainLoop checkpoints every checkpointPace while the writer has
// committed since the last pass, or the last pass did not reach the end
// of the WAL (another process's reader held it back, or the disk was
// full: once space is freed the WAL must still be copied and rewound
// although nothing commits meanwhile).
func (d *driver) maintainLoop() {
	t := time.NewTicker(checkpointPace)
	defer t.Stop()
	ctx := context.Background()
	last := int64(-1)
	for {
		select {
		case <-d.closing:
			return
		case <-t.C:
		}
		c := d.w.commits.Load()
		if c == last {
			continue
		}
		var busy, frames, done int64
		if err := d.mconn.QueryRowContext(ctx, "PRAGMA wal_checkpoint(PASSIVE)").Scan(&busy, &frames, &done); err != nil {
			continue // best effort; the next pass tries again
		}
		if done >= frames {
			last = c
		}
		d.walFrames.Store(frames)
		if frames > walBoundFrames && done < frames {
			d.w.walBehind.Store(true)
			select {
			case d.w.kick <- struct{}{}:
			default:
			}
		}
	}
}
