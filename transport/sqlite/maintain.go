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
// writer, which keeps appending meanwhile. The WAL is bounded: SQLite
// rewinds it only when a write transaction begins with every frame
// copied, and a busy writer nearly always commits between the end of a
// checkpoint and its next BEGIN, so on its own the WAL would grow without
// end (measured: 200 MB in 4 s of 16 publishers). Past walBoundFrames the
// maintenance pass asks the writer to checkpoint between two transactions
// (writer.maybeCheckpoint): the frames are nearly all copied already, so
// that costs little more than an fsync, and the next transaction rewinds
// the WAL.

const (
	// checkpointPace is how often the maintenance pass looks.
	checkpointPace = 5 * time.Millisecond
	// checkpointEvery is how many commits of this process the WAL
	// collects before a checkpoint copies them into the database file;
	// checkpointIdle is how long a smaller tail waits. A checkpoint
	// fsyncs the database file, and fsyncs beside the writer's slow its
	// commits down: they are kept rare.
	checkpointEvery = 64
	checkpointIdle  = time.Second
	// walBoundFrames bounds the WAL (in pages: 8 MiB at SQLite's default
	// 4 KiB page) before the writer checkpoints itself. The maintenance
	// pass has copied nearly every frame by then, so the writer's
	// checkpoint costs little more than an fsync; a much smaller bound
	// puts that fsync on the writer's path every few commits (256 pages
	// cost a third of the publish rate at 16 publishers).
	walBoundFrames = 2048
	// walBoundCommits bounds the commits without a completed checkpoint
	// before the writer checkpoints itself.
	walBoundCommits = 2 * checkpointEvery
)

// afterFull reports that a write failed for a full disk less than
// checkpointEvery commits ago. Checkpoints wait meanwhile: copying the WAL
// grows the database file, and on a disk that has just had a little space
// freed that would take the room the next writes need (the WAL keeps its
// size until a checkpoint reaches its end, which then may not fit).
func (d *driver) afterFull() bool {
	f := d.fullAt.Load()
	return f >= 0 && d.w.commits.Load()-f < checkpointEvery
}

// maintainLoop checkpoints after every checkpointEvery commits of the
// writer, and after checkpointIdle when fewer have come or the last pass
// did not reach the end of the WAL (another process's reader held it
// back, or the disk was full: once space is freed the WAL must still be
// copied and rewound although nothing commits meanwhile).
func (d *driver) maintainLoop() {
	t := time.NewTicker(checkpointPace)
	defer t.Stop()
	ctx := context.Background()
	last, lastAt, caughtUp := int64(0), time.Now(), true
	for {
		select {
		case <-d.closing:
			return
		case <-t.C:
		}
		c := d.w.commits.Load()
		if d.afterFull() {
			continue
		}
		due := c-last >= checkpointEvery || (c != last || !caughtUp) && time.Since(lastAt) >= checkpointIdle
		if !due {
			continue
		}
		last, lastAt = c, time.Now()
		var busy, frames, done int64
		d.ckptMu.Lock()
		err := d.mconn.QueryRowContext(ctx, "PRAGMA wal_checkpoint(PASSIVE)").Scan(&busy, &frames, &done)
		d.ckptMu.Unlock()
		if err != nil {
			caughtUp = false
			continue // best effort; the next pass tries again
		}
		caughtUp = done >= frames
		if caughtUp {
			d.ckptAt.Store(c)
		}
		d.walFrames.Store(frames)
		if frames > walBoundFrames {
			d.w.walBehind.Store(true)
			select {
			case d.w.kick <- struct{}{}:
			default:
			}
		}
	}
}
