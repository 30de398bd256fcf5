package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
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

The handler receives its own copy of every matching event, so it takes
nothing away from the application's handlers. It is ephemeral where the
transport can make it so: the subscription lasts only while tail runs and
is deleted when tail exits, or reaped if tail is killed, so nothing keeps
collecting events for it. On a transport without ephemeral subscriptions
tail deletes its subscription when it exits (a tail killed with SIGKILL
leaves it behind; remove it with Unsubscribe). With --name the
subscription is durable instead: a later 'ripple tail --name' with the
same name prints what arrived while it was away. The name must start with
tail., so that tail never subscribes under the name of one of the
application's handlers: it would take that handler's waiting events and
change its pattern.`,
		Example: `  ripple tail 'user.>'
  ripple tail '>' --name tail.ops --json`,
		Args: args(1, 1, "ripple tail PATTERN, such as: ripple tail 'user.>'"),
		RunE: func(cmd *cobra.Command, a []string) error {
			pattern := a[0]
			if err := ripple.ValidatePattern(pattern); err != nil {
				return err
			}
			if !cmd.Flags().Changed("name") {
				name = tailPrefix + randomSuffix()
			}
			if err := ripple.ValidateHandlerName(name); err != nil {
				return err
			}
			bus, shown, err := c.open(cmd, &bf)
			if err != nil {
				return err
			}
			if err := checkTailName(cmd.Context(), bus, name, shown); err != nil {
				c.closeBus(bus)
				return err
			}
			var mu sync.Mutex
			printed := 0
			show := func(ctx context.Context, e ripple.Event) error {
				mu.Lock()
				defer mu.Unlock()
				printed++
				return printTailEvent(c.stdout, e, asJSON)
			}
			keep := cmd.Flags().Changed("name")
			ephemeral := false
			if !keep {
				err = bus.On(pattern, name, show, ripple.Concurrency(1), ripple.Ephemeral())
				ephemeral = err == nil
			}
			if !ephemeral && (keep || errors.Is(err, ripple.ErrNotSupported)) {
				err = bus.On(pattern, name, show, ripple.Concurrency(1))
			}
			if err == nil {
				err = bus.Start(cmd.Context())
			}
			if err != nil {
				c.closeBus(bus)
				return err
			}
			fmt.Fprintf(c.stderr, "tailing %s on %s as handler %s; Ctrl-C to stop\n", pattern, shown, name)
			<-cmd.Context().Done()
			sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if !keep && !ephemeral {
				if err := bus.Unsubscribe(sctx, name); err != nil {
					fmt.Fprintf(c.stderr, "ripple: could not delete subscription %s: %s\n", name, errText(err))
					keep = true
				}
			}
			if err := bus.Shutdown(sctx); err != nil {
				fmt.Fprintln(c.stderr, "ripple: closing the bus:", errText(err))
			}
			if keep && bus.TransportName() != "memory" {
				fmt.Fprintf(c.stderr, "tail stopped. Subscription %s stays on %s and keeps collecting %s events; reuse it with --name %s\n", name, shown, pattern, name)
			}
			return nil
		},
	}
	bf.add(cmd)
	cmd.Flags().StringVar(&name, "name", "", "handler name of the subscription, starting with tail. (default tail.<random>)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print each event as one line of CloudEvents JSON")
	return cmd
}

// tailPrefix starts the handler name of every subscription tail makes.
// Any other name could be an application's handler, and subscribing under
// it would consume that handler's waiting events and rewrite its pattern.
const tailPrefix = "tail."

// checkTailName refuses a handler name outside tail's own. When the name
// belongs to a handler the transport knows, the error says so, since that
// is the mistake that would lose the handler's events.
func checkTailName(ctx context.Context, bus *ripple.Bus, name, shownURL string) error {
	if strings.HasPrefix(name, tailPrefix) {
		return nil
	}
	instead := fmt.Sprintf("use a name starting with %s, such as --name %s%s, or leave --name out for a fresh %s<random>", tailPrefix, tailPrefix, name, tailPrefix)
	sctx, cancel := statsContext(ctx)
	defer cancel()
	if stats, err := bus.Stats(sctx); err == nil {
		for _, s := range stats {
			if s.Handler == name {
				return fmt.Errorf("--name %s is a handler on %s (pattern %s): tailing under its name would take its waiting events away from it and change its pattern; %s", name, shownURL, s.Pattern, instead)
			}
		}
	}
	return fmt.Errorf("--name %s: tail's names start with %s so that a tail never takes the name, and the events, of an application's handler; %s", name, tailPrefix, instead)
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
