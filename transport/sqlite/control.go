package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/ripplehq/ripple/transport"
)

// This file holds the per-handler controls that every process on the file
// shares because their state lives in the file: pause, the shared rate
// limit, and ephemeral subscriptions.

var (
	_ transport.Pauser      = (*driver)(nil)
	_ transport.RateLimiter = (*driver)(nil)
)

// Pause implements transport.Pauser. The flag is a column of the
// subscription; every lease, in any process, reads it in the same write
// transaction, so once Pause returns no receiver anywhere leases another
// delivery of the handler. Deliveries already leased finish and settle.
func (d *driver) Pause(ctx context.Context, handler string) error {
	return d.setPaused(ctx, handler, true)
}

// Resume implements transport.Pauser. Receivers in this process are woken
// at once, those of other processes within the poll interval.
func (d *driver) Resume(ctx context.Context, handler string) error {
	return d.setPaused(ctx, handler, false)
}

func (d *driver) setPaused(ctx context.Context, handler string, paused bool) error {
	return d.exec(ctx, func(w *writer) error {
		s, err := w.subByName(handler)
		if err != nil {
			return err
		}
		if _, err := w.conn.ExecContext(context.Background(), `UPDATE subscriptions SET paused = ? WHERE id = ?`, paused, s.id); err != nil {
			return err
		}
		w.touch(s.id)
		return nil
	}, 0)
}

// Reserve implements transport.RateLimiter as a sliding window kept in the
// file: rate_starts holds the start times reserved for the handler by
// every process. A new start goes at now, or, when n starts already lie
// in the last period, one period after the n-th latest of them, so no
// interval of length per ever holds more than n reserved starts. The
// reservation is one write transaction, which SQLite's write lock
// serialises across processes.
func (d *driver) Reserve(ctx context.Context, handler string, n int, per time.Duration) (time.Duration, error) {
	if n <= 0 || per <= 0 {
		return 0, fmt.Errorf("sqlite transport: rate limit of handler %q: %d per %v; both must be positive", handler, n, per)
	}
	var at int64
	err := d.exec(ctx, func(w *writer) error {
		bg := context.Background()
		if _, err := w.conn.ExecContext(bg, `DELETE FROM rate_starts WHERE handler = ? AND at <= ?`, handler, w.now-int64(per)); err != nil {
			return err
		}
		at = w.now
		var nth int64
		err := w.conn.QueryRowContext(bg, `SELECT at FROM rate_starts WHERE handler = ? ORDER BY at DESC LIMIT 1 OFFSET ?`, handler, n-1).Scan(&nth)
		switch {
		case errors.Is(err, sql.ErrNoRows):
		case err != nil:
			return err
		default:
			at = max(at, after(nth, per))
		}
		_, err = w.conn.ExecContext(bg, `INSERT INTO rate_starts (handler, at) VALUES (?, ?)`, handler, at)
		return err
	}, returnOnCancel|soft)
	if err != nil {
		return 0, err
	}
	return max(time.Until(time.Unix(0, at)), 0), nil
}

// reapAfter is how many leases an ephemeral subscription may go untouched
// before any process deletes it.
const reapAfter = 3

// ephemeralRef counts this process's open receivers of an ephemeral
// subscription; the last one to close deletes it.
func (d *driver) ephemeralRef(id int64, delta int) int {
	d.nmu.Lock()
	defer d.nmu.Unlock()
	if d.ephemeral == nil {
		d.ephemeral = map[int64]int{}
	}
	d.ephemeral[id] += delta
	n := d.ephemeral[id]
	if n <= 0 {
		delete(d.ephemeral, id)
	}
	return n
}

// dropEphemeral deletes an ephemeral subscription with everything queued
// for it, unless it has become durable meanwhile.
func (d *driver) dropEphemeral(id int64) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return d.exec(ctx, func(w *writer) error {
		var name string
		err := w.conn.QueryRowContext(context.Background(), `SELECT name FROM subscriptions WHERE id = ? AND ephemeral = 1`, id).Scan(&name)
		if errors.Is(err, sql.ErrNoRows) {
			return nil // reaped already
		}
		if err != nil {
			return err
		}
		return w.dropSub(id, name)
	}, 0)
}

// dropSub deletes a subscription, its deliveries, claims and rate
// reservations, and makes every process stop fanning out to it.
func (w *writer) dropSub(id int64, handler string) error {
	bg := context.Background()
	for _, st := range []struct {
		q   string
		arg any
	}{
		{`DELETE FROM deliveries WHERE sub_id = ?`, id},
		{`DELETE FROM windows WHERE sub_id = ?`, id},
		{`DELETE FROM subscriptions WHERE id = ?`, id},
		{`DELETE FROM claims WHERE handler = ?`, handler},
		{`DELETE FROM rate_starts WHERE handler = ?`, handler},
		{`UPDATE ripple_meta SET value = value + ? WHERE key = 'subs_version'`, 1},
	} {
		if _, err := w.conn.ExecContext(bg, st.q, st.arg); err != nil {
			return err
		}
	}
	w.subsChecked = false
	w.subsVersion = -1
	w.touch(id)
	return nil
}

// reapEphemeral deletes ephemeral subscriptions that no receiver has
// touched for reapAfter leases: their process died without closing them.
func (w *writer) reapEphemeral() error {
	rows, err := w.conn.QueryContext(context.Background(),
		`SELECT id, name FROM subscriptions WHERE ephemeral = 1 AND touched_at < ? - ? * lease_ns`, w.now, reapAfter)
	if err != nil {
		return err
	}
	type sub struct {
		id   int64
		name string
	}
	var dead []sub
	for rows.Next() {
		var s sub
		if err := rows.Scan(&s.id, &s.name); err != nil {
			rows.Close()
			return err
		}
		dead = append(dead, s)
	}
	if err := rows.Close(); err != nil {
		return err
	}
	for _, s := range dead {
		if err := w.dropSub(s.id, s.name); err != nil {
			return err
		}
		w.d.logger.Info("sqlite transport: deleted an ephemeral subscription no receiver had touched for a while (its process has gone)",
			"handler", s.name, "path", w.d.path)
	}
	return nil
}
