package main

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/ripplehq/ripple"
	"github.com/spf13/cobra"
)

func (c *cli) dlqCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "dlq list|requeue|purge HANDLER",
		Short: "List, requeue and purge a handler's dead letters",
		Long: `A handler's dead-letter queue holds the events it gave up on: those whose
handler returned a Permanent error or failed on its last attempt. Each keeps
the last error, the attempt count and the times.`,
		// Without a RunE cobra would print this help and exit 0 for a
		// mistyped subcommand, so a script would never notice.
		RunE: func(cmd *cobra.Command, a []string) error {
			if len(a) == 0 {
				return cmd.Help()
			}
			return unknownCommand(cmd, a[0])
		},
		DisableFlagsInUseLine:      true,
		SuggestionsMinimumDistance: 2,
		// A mistyped subcommand followed by its flags (dlq lsit x --url U)
		// must be reported as the unknown subcommand, not as an unknown
		// flag of dlq itself, which has none.
		FParseErrWhitelist: cobra.FParseErrWhitelist{UnknownFlags: true},
	}
	cmd.AddCommand(c.dlqListCmd(), c.dlqRequeueCmd(), c.dlqPurgeCmd())
	return cmd
}

func (c *cli) dlqListCmd() *cobra.Command {
	var (
		bf     busFlags
		limit  int
		asJSON bool
	)
	cmd := &cobra.Command{
		Use:   "list HANDLER",
		Short: "List a handler's dead letters, oldest first",
		Args:  args(1, 1, "ripple dlq list HANDLER [--limit N] [--json]"),
		RunE: func(cmd *cobra.Command, a []string) error {
			if limit < 1 {
				return fmt.Errorf("--limit %d: list at least 1 dead letter", limit)
			}
			bus, _, err := c.open(cmd, &bf)
			if err != nil {
				return err
			}
			defer c.closeBus(bus)
			// One more than asked tells whether there are more; the
			// statistics then say how many.
			dead, err := bus.DeadLetters(cmd.Context(), a[0], limit+1)
			if err != nil {
				return err
			}
			more := len(dead) > limit
			if more {
				dead = dead[:limit]
			}
			if asJSON {
				if more {
					fmt.Fprintln(c.stderr, moreDeadLetters(cmd, bus, a[0], limit))
				}
				return writeJSON(c.stdout, dead)
			}
			if len(dead) == 0 {
				fmt.Fprintf(c.stdout, "%s has no dead letters\n", a[0])
				return nil
			}
			if err := printDeadLetters(c.stdout, dead); err != nil {
				return err
			}
			if more {
				fmt.Fprintln(c.stdout, moreDeadLetters(cmd, bus, a[0], limit))
			}
			return nil
		},
	}
	bf.add(cmd)
	cmd.Flags().IntVar(&limit, "limit", 100, "list at most this many")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the dead letters as JSON, events in CloudEvents form")
	return cmd
}

// moreDeadLetters says how many dead letters of handler a list limited to
// limit left out, from the handler's statistics when the transport keeps
// them.
func moreDeadLetters(cmd *cobra.Command, bus *ripple.Bus, handler string, limit int) string {
	ctx, cancel := statsContext(cmd.Context())
	defer cancel()
	if stats, err := bus.Stats(ctx); err == nil {
		for _, s := range stats {
			if s.Handler == handler && s.Dead > int64(limit) {
				return fmt.Sprintf("... and %d more (%d dead letters in all); raise --limit to see them", s.Dead-int64(limit), s.Dead)
			}
		}
	}
	return "... and more; raise --limit to see them"
}

func printDeadLetters(w io.Writer, dead []ripple.DeadLetter) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tTYPE\tATTEMPTS\tDEAD AT\tERROR")
	for _, d := range dead {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\n", d.Event.ID, d.Event.Type, d.Attempts,
			d.DeadAt.UTC().Format(time.RFC3339), truncate(oneLine(d.Error), 100))
	}
	return tw.Flush()
}

func truncate(s string, n int) string {
	r := []rune(s)
	if len(r) <= n {
		return s
	}
	return string(r[:n-1]) + "…"
}

func (c *cli) dlqRequeueCmd() *cobra.Command {
	var bf busFlags
	cmd := &cobra.Command{
		Use:   "requeue HANDLER [IDS...]",
		Short: "Move dead letters back to the handler's queue with fresh attempts",
		Long: `requeue moves the named dead letters of HANDLER, or all of them when no ids
are given, back to its queue with a fresh attempt budget.`,
		Args: args(1, -1, "ripple dlq requeue HANDLER [IDS...]"),
		RunE: func(cmd *cobra.Command, a []string) error {
			bus, _, err := c.open(cmd, &bf)
			if err != nil {
				return err
			}
			defer c.closeBus(bus)
			if len(a) == 1 {
				n, err := bus.RequeueAllDead(cmd.Context(), a[0])
				if err != nil {
					return err
				}
				c.reportCount("requeued", a[0], n)
				return nil
			}
			return c.eachID("requeued", a[0], a[1:], func(id string) (int, error) {
				return bus.RequeueDead(cmd.Context(), a[0], id)
			})
		},
	}
	bf.add(cmd)
	return cmd
}

func (c *cli) dlqPurgeCmd() *cobra.Command {
	var (
		bf  busFlags
		all bool
	)
	cmd := &cobra.Command{
		Use:   "purge HANDLER [IDS...]",
		Short: "Delete dead letters for good",
		Long: `purge deletes the named dead letters of HANDLER. Deleting all of them needs
--all, so that a forgotten id list does not wipe the queue.`,
		Args: args(1, -1, "ripple dlq purge HANDLER IDS... | ripple dlq purge HANDLER --all"),
		RunE: func(cmd *cobra.Command, a []string) error {
			ids := a[1:]
			switch {
			case len(ids) == 0 && !all:
				return fmt.Errorf("purge deletes dead letters for good: name the ids to delete, or pass --all to delete every dead letter of %s", a[0])
			case len(ids) > 0 && all:
				return fmt.Errorf("give either ids or --all, not both")
			}
			bus, _, err := c.open(cmd, &bf)
			if err != nil {
				return err
			}
			defer c.closeBus(bus)
			if all {
				n, err := bus.PurgeAllDead(cmd.Context(), a[0])
				if err != nil {
					return err
				}
				c.reportCount("purged", a[0], n)
				return nil
			}
			return c.eachID("purged", a[0], ids, func(id string) (int, error) {
				return bus.PurgeDead(cmd.Context(), a[0], id)
			})
		},
	}
	bf.add(cmd)
	cmd.Flags().BoolVar(&all, "all", false, "purge every dead letter of the handler")
	return cmd
}

// reportCount prints how many dead letters an operation moved.
func (c *cli) reportCount(verb, handler string, n int) {
	noun := "dead letters"
	if n == 1 {
		noun = "dead letter"
	}
	fmt.Fprintf(c.stdout, "%s %d %s of %s\n", verb, n, noun, handler)
}

// eachID applies op to each named dead letter, one at a time so that the
// ids that were not there can be named, reports the count, and fails
// naming the ids not found.
func (c *cli) eachID(verb, handler string, ids []string, op func(id string) (int, error)) error {
	done := 0
	var missing []string
	seen := map[string]bool{}
	for _, id := range ids {
		if seen[id] {
			continue
		}
		seen[id] = true
		n, err := op(id)
		if err != nil {
			if done > 0 {
				c.reportCount(verb, handler, done)
			}
			return err
		}
		if n == 0 {
			missing = append(missing, id)
		}
		done += n
	}
	c.reportCount(verb, handler, done)
	if len(missing) > 0 {
		return fmt.Errorf("%d of the %d ids given %s not in %s's dead-letter queue: %s (see ripple dlq list %s)",
			len(missing), len(seen), map[bool]string{true: "is", false: "are"}[len(missing) == 1], handler, strings.Join(missing, ", "), handler)
	}
	return nil
}
