package main

import (
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/ripplehq/ripple"
	"github.com/spf13/cobra"
)

// statsTimeout bounds one statistics read, so that a stuck transport does
// not hang the command.
const statsTimeout = 5 * time.Second

func (c *cli) statsCmd() *cobra.Command {
	var (
		bf     busFlags
		asJSON bool
	)
	cmd := &cobra.Command{
		Use:   "stats",
		Short: "Show every handler's queue counts",
		Long: `stats prints, for every handler the transport knows (including handlers of
other processes), how many events are waiting, active (being handled),
delayed (by WithDelay or retry backoff), completed and still retained,
the failed attempts (in retained history; on redis:// since the handler
subscribed), the dead letters, and the age of the oldest waiting event.
A paused handler (ripple pause) is shown as "HANDLER (paused)".`,
		Args: args(0, 0, "ripple stats [--url URL] [--json]"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			bus, shown, err := c.open(cmd, &bf)
			if err != nil {
				return err
			}
			defer c.closeBus(bus)
			ctx, cancel := statsContext(cmd.Context())
			defer cancel()
			stats, err := bus.Stats(ctx)
			if err != nil {
				return err
			}
			if asJSON {
				return writeJSON(c.stdout, stats)
			}
			if len(stats) == 0 {
				fmt.Fprintf(c.stdout, "no handler has subscribed on %s yet\n", shown)
				return nil
			}
			return printStats(c.stdout, stats)
		},
	}
	bf.add(cmd)
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the statistics as JSON")
	return cmd
}

func printStats(w io.Writer, stats []ripple.HandlerStats) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "HANDLER\tPATTERN\tWAITING\tACTIVE\tDELAYED\tCOMPLETED\tFAILED\tDEAD\tOLDEST WAITING")
	for _, s := range stats {
		oldest := "-"
		if s.OldestWaiting > 0 {
			oldest = s.OldestWaiting.Round(time.Millisecond).String()
		}
		handler := s.Handler
		if s.Paused {
			handler += " (paused)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\t%d\t%d\t%d\t%s\n", handler, s.Pattern,
			s.Waiting, s.Active, s.Delayed, s.Completed, s.Failed, s.Dead, oldest)
	}
	return tw.Flush()
}
