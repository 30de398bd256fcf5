package sqlite

import (
	"context"
	"errors"
	"time"

	"github.com/ripplehq/ripple/transport"
	msqlite "modernc.org/sqlite"
)

// The writer's cache of the subscription list, which a publish needs to
// wake the matching receivers and to write the rows of delayed and
// prioritised events, and the time helpers.

// matching returns the subscriptions whose pattern matches typ. The list is
// cached and reloaded when ripple_meta's subs_version, bumped by every
// Subscribe in any process, has moved; checking it once per transaction
// (under the write lock) is what makes fan-out exact across processes. The
// check itself is skipped while the file's data version shows that no
// other connection has committed since this one last did.
func (w *writer) matching(typ string) ([]*subRow, error) {
	if !w.subsChecked {
		dv := w.beganVersion
		if dv == 0 || dv != w.dataVersion || w.subsVersion < 0 {
			var v int64
			if err := w.st.subsVersion.QueryRowContext(context.Background()).Scan(&v); err != nil {
				return nil, err
			}
			if v != w.subsVersion {
				if err := w.loadSubs(); err != nil {
					return nil, err
				}
				w.subsVersion = v
			}
		}
		w.subsChecked = true
	}
	if m, ok := w.match[typ]; ok {
		return m, nil
	}
	var m []*subRow
	for _, s := range w.subs {
		if transport.Match(s.pattern, typ) {
			m = append(m, s)
		}
	}
	if len(w.match) > 4096 {
		clear(w.match)
	}
	w.match[typ] = m
	return m, nil
}

// fileDataVersion returns SQLite's data version of the main database as
// seen by the write connection, or 0 if it cannot be read. Unlike PRAGMA
// data_version it also counts this connection's own commits, and it costs
// no statement. Inside a transaction it reflects every commit made before
// the transaction began.
func (w *writer) fileDataVersion() uint32 {
	var v uint32
	err := w.conn.Raw(func(dc any) error {
		fc, ok := dc.(msqlite.FileControl)
		if !ok {
			return errors.New("no file control")
		}
		var err error
		v, err = fc.FileControlDataVersion("main")
		return err
	})
	if err != nil {
		return 0
	}
	return v
}

func (w *writer) loadSubs() error {
	rows, err := w.conn.QueryContext(context.Background(), `SELECT id, name, pattern, ordered FROM subscriptions ORDER BY id`)
	if err != nil {
		return err
	}
	defer rows.Close()
	var subs []*subRow
	for rows.Next() {
		s := &subRow{}
		if err := rows.Scan(&s.id, &s.name, &s.pattern, &s.ordered); err != nil {
			return err
		}
		subs = append(subs, s)
	}
	if err := rows.Err(); err != nil {
		return err
	}
	w.subs = subs
	clear(w.match)
	return nil
}

func nanos(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

func fromNanos(n int64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n)
}
