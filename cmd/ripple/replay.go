package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/ripplehq/ripple"
	"github.com/spf13/cobra"
)

// replaySummary is what replay prints with --json.
type replaySummary struct {
	Handler  string    `json:"handler"`
	Since    time.Time `json:"since"`
	Replayed int       `json:"replayed"`
	// Handled and Dead are set with --wait: how many of the replayed
	// events the handler finished, and how many dead letters it added
	// meanwhile.
	Handled *int64 `json:"handled,omitempty"`
	Dead    *int64 `json:"dead,omitempty"`
}

func (c *cli) replayCmd() *cobra.Command {
	var (
		bf       busFlags
		since    string
		wait     bool
		asJSON   bool
		interval time.Duration
	)
	cmd := &cobra.Command{
		Use:   "replay HANDLER --since T",
		Short: "Deliver a handler's events again, from a time",
		Long: `replay delivers again to HANDLER every retained event of its pattern
published at or after T that it has finished (completed or dead-lettered;
dead letters leave the dead-letter queue), such as to rebuild a projection
or a stream's windows after a fix. Events it has not finished yet are left
as they are. T is an RFC 3339 time (2026-03-01T09:00:00Z), a date
(2026-03-01, midnight UTC) or a duration back from now (90m, 24h, 7d).

The handler must run somewhere (this command only schedules the events).
With --wait, replay follows the handler's statistics until the replayed
events are handled, showing handled/total on stderr: one line updated in
place on a terminal, a line per change otherwise. Progress is the drop in
the handler's outstanding (waiting, active, delayed) events, so events
published meanwhile slow it down. Needs a transport that keeps history
(sqlite, postgres, redis, nats, kafka; memory only within its process).`,
		Args: args(1, 1, "ripple replay HANDLER --since T [--wait] [--json]"),
		RunE: func(cmd *cobra.Command, a []string) error {
			handler := a[0]
			if !cmd.Flags().Changed("since") {
				return fmt.Errorf("--since is required: give the time to replay from, such as --since 1h (the last hour) or --since 2026-03-01T09:00:00Z")
			}
			from, err := parseSince(since, time.Now())
			if err != nil {
				return err
			}
			if interval <= 0 {
				return fmt.Errorf("--interval %s: the polling interval must be positive", interval)
			}
			bus, _, err := c.open(cmd, &bf)
			if err != nil {
				return err
			}
			defer c.closeBus(bus)
			ctx := cmd.Context()
			var before ripple.HandlerStats
			if wait {
				// The baseline is read before the replay: replaying dead
				// letters moves them back to waiting.
				if before, err = handlerStats(ctx, bus, handler); err != nil {
					return err
				}
			}
			n, err := bus.Replay(ctx, handler, from)
			if err != nil {
				return err
			}
			sum := replaySummary{Handler: handler, Since: from, Replayed: n}
			if !asJSON {
				fmt.Fprintf(c.stdout, "replayed %d events of %s published since %s\n", n, handler, from.Format(time.RFC3339))
			}
			if wait && n > 0 {
				handled, dead, err := c.follow(ctx, bus, handler, before, n, interval)
				if err != nil {
					return err
				}
				sum.Handled, sum.Dead = &handled, &dead
				if !asJSON {
					fmt.Fprintf(c.stdout, "%s handled %d of %d replayed events; %d dead letters added\n", handler, handled, n, dead)
				}
			}
			if asJSON {
				return writeJSON(c.stdout, sum)
			}
			return nil
		},
	}
	bf.add(cmd)
	cmd.Flags().StringVar(&since, "since", "", "replay events published at or after this time: RFC 3339, a date, or a duration back from now (1h)")
	cmd.Flags().BoolVar(&wait, "wait", false, "follow the handler's progress until the replayed events are handled")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the counts as JSON")
	cmd.Flags().DurationVar(&interval, "interval", time.Second, "how often --wait reads the statistics")
	return cmd
}

// parseSince reads --since: an RFC 3339 time, a date, or a positive
// duration back from now.
func parseSince(s string, now time.Time) (time.Time, error) {
	s = strings.TrimSpace(s)
	if days, ok := strings.CutSuffix(s, "d"); ok {
		// Go durations stop at hours; a replay often goes back days.
		if n, err := strconv.Atoi(days); err == nil {
			s = strconv.Itoa(n*24) + "h"
		}
	}
	if d, err := time.ParseDuration(s); err == nil {
		if d <= 0 {
			return time.Time{}, fmt.Errorf("--since %s: give a positive duration back from now, such as 1h", s)
		}
		return now.Add(-d), nil
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		t, err = time.Parse(time.DateOnly, s)
	}
	if err != nil {
		return time.Time{}, fmt.Errorf("--since %q: give an RFC 3339 time such as 2026-03-01T09:00:00Z, a date such as 2026-03-01, or a duration back from now such as 90m, 24h or 7d", s)
	}
	if t.After(now) {
		return time.Time{}, fmt.Errorf("--since %s is in the future: nothing was published after it yet", t.Format(time.RFC3339))
	}
	return t, nil
}

// handlerStats returns the handler's statistics, or the bus's
// unknown-handler error when the transport has none for it.
func handlerStats(ctx context.Context, bus *ripple.Bus, handler string) (ripple.HandlerStats, error) {
	sctx, cancel := statsContext(ctx)
	defer cancel()
	stats, err := bus.Stats(sctx)
	if err != nil {
		return ripple.HandlerStats{}, err
	}
	for _, s := range stats {
		if s.Handler == handler {
			return s, nil
		}
	}
	return ripple.HandlerStats{}, fmt.Errorf("%w: no handler %q has subscribed on this transport (see ripple stats)", ripple.ErrUnknownHandler, handler)
}

func outstanding(s ripple.HandlerStats) int64 { return s.Waiting + s.Active + s.Delayed }

// follow shows the progress of n replayed events until they are handled,
// and returns how many were and how many dead letters were added.
func (c *cli) follow(ctx context.Context, bus *ripple.Bus, handler string, before ripple.HandlerStats, n int, interval time.Duration) (handled, dead int64, err error) {
	p := progress{w: c.stderr, tty: isTerminal(c.stderr), handler: handler, total: int64(n)}
	defer p.end()
	started := time.Now()
	hinted := false
	last := int64(-1)
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		s, err := handlerStats(ctx, bus, handler)
		if err != nil {
			return handled, dead, err
		}
		handled = min(max(outstanding(before)+int64(n)-outstanding(s), 0), int64(n))
		dead = max(s.Dead-before.Dead, 0)
		if handled != last || p.tty {
			p.show(handled)
			last = handled
		}
		if handled >= int64(n) {
			return handled, dead, nil
		}
		if !hinted && handled == 0 && time.Since(started) > 10*time.Second {
			hinted = true
			p.note(fmt.Sprintf("no replayed event handled yet: is a process running handler %s?", handler))
		}
		select {
		case <-ctx.Done():
			return handled, dead, fmt.Errorf("stopped waiting with %d of %d replayed events handled; the replay goes on", handled, n)
		case <-tick.C:
		}
	}
}

// progress draws handled/total: one line redrawn in place on a terminal,
// plain lines otherwise (logs, pipes).
type progress struct {
	w       io.Writer
	tty     bool
	handler string
	total   int64
	drawn   bool
}

func (p *progress) show(handled int64) {
	pct := 100 * handled / p.total
	if !p.tty {
		fmt.Fprintf(p.w, "%s: %d/%d handled (%d%%)\n", p.handler, handled, p.total, pct)
		return
	}
	const width = 30
	fill := int(width * handled / p.total)
	fmt.Fprintf(p.w, "\r\033[K[%s%s] %d/%d handled (%d%%) %s",
		strings.Repeat("#", fill), strings.Repeat("-", width-fill), handled, p.total, pct, p.handler)
	p.drawn = true
}

func (p *progress) note(msg string) {
	if p.drawn {
		fmt.Fprint(p.w, "\r\033[K")
	}
	fmt.Fprintln(p.w, msg)
}

func (p *progress) end() {
	if p.drawn {
		fmt.Fprintln(p.w)
	}
}

// isTerminal reports whether w is a terminal, where a progress line can
// be redrawn in place.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}
