package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/ripplehq/ripple"
	"github.com/spf13/cobra"
)

func (c *cli) tailCmd() *cobra.Command {
	var (
		bf     busFlags
		name   string
		asJSON bool
	)
	cmd := &cobra.Command{
		Use:   "tail PATTERN",
		Short: "Print events matching PATTERN as they arrive",
		Long: `tail subscribes a handler named tail.<random> (or --name) to PATTERN and
prints every matching event published from then on, until interrupted
(Ctrl-C). PATTERN is an event name whose segments may be * (one segment),
ending in > (one or more segments): user.*, order.>, or > for everything.

The handler is an ordinary Ripple subscription. It receives its own copy of
every matching event, so it takes nothing away from the application's
handlers. When tail exits it deletes its subscription (where the transport
can), so nothing keeps collecting events for it. With --name the
subscription is kept instead: a later 'ripple tail --name' with the same
name prints what arrived while it was away.`,
		Example: `  ripple tail 'user.>'
  ripple tail '>' --name tail.ops --json`,
		Args: args(1, 1, "ripple tail PATTERN, such as: ripple tail 'user.>'"),
		RunE: func(cmd *cobra.Command, a []string) error {
			pattern := a[0]
			if err := ripple.ValidatePattern(pattern); err != nil {
				return err
			}
			if !cmd.Flags().Changed("name") {
				name = "tail." + randomSuffix()
			}
			if err := ripple.ValidateHandlerName(name); err != nil {
				return err
			}
			bus, u, err := c.open(cmd, &bf)
			if err != nil {
				return err
			}
			var mu sync.Mutex
			printed := 0
			err = bus.On(pattern, name, func(ctx context.Context, e ripple.Event) error {
				mu.Lock()
				defer mu.Unlock()
				printed++
				return printTailEvent(c.stdout, e, asJSON)
			}, ripple.Concurrency(1))
			if err == nil {
				err = bus.Start(cmd.Context())
			}
			if err != nil {
				c.closeBus(bus)
				return err
			}
			fmt.Fprintf(c.stderr, "tailing %s on %s as handler %s; Ctrl-C to stop\n", pattern, u, name)
			<-cmd.Context().Done()
			sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			keep := cmd.Flags().Changed("name")
			if !keep {
				if err := bus.Unsubscribe(sctx, name); err != nil {
					fmt.Fprintf(c.stderr, "ripple: could not delete subscription %s: %v\n", name, err)
					keep = true
				}
			}
			if err := bus.Shutdown(sctx); err != nil {
				fmt.Fprintln(c.stderr, "ripple: closing the bus:", err)
			}
			if keep && bus.TransportName() != "memory" {
				fmt.Fprintf(c.stderr, "tail stopped. Subscription %s stays on %s and keeps collecting %s events; reuse it with --name %s\n", name, u, pattern, name)
			}
			return nil
		},
	}
	bf.add(cmd)
	cmd.Flags().StringVar(&name, "name", "", "handler name of the subscription (default tail.<random>)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print each event as one line of CloudEvents JSON")
	return cmd
}

func randomSuffix() string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// printTailEvent prints one event: a CloudEvents JSON line, or time, type,
// id, key and data on one line.
func printTailEvent(w io.Writer, e ripple.Event, asJSON bool) error {
	if asJSON {
		b, err := json.Marshal(e)
		if err != nil {
			return ripple.Permanent(err)
		}
		_, err = fmt.Fprintf(w, "%s\n", b)
		return err
	}
	key := ""
	if e.Key != "" {
		key = " key=" + e.Key
	}
	_, err := fmt.Fprintf(w, "%s  %s  %s%s  %s\n", e.Time.UTC().Format("2006-01-02T15:04:05.000Z"), e.Type, e.ID, key, e.Data)
	return err
}
