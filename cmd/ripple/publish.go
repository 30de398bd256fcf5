package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/ripplehq/ripple"
	"github.com/ripplehq/ripple/transport"
	"github.com/spf13/cobra"
)

func (c *cli) publishCmd() *cobra.Command {
	var (
		bf       busFlags
		data     string
		key      string
		delay    time.Duration
		priority int
		id       string
		asJSON   bool
	)
	cmd := &cobra.Command{
		Use:   "publish TYPE --data JSON",
		Short: "Publish one event",
		Long: `publish stores one event of type TYPE with a JSON payload and prints the
stored event.

--data takes the JSON itself, @FILE to read it from a file, or - to read it
from standard input; without --data the payload is {}.

On a sqlite:// URL whose file does not exist, publish fails unless --create
is given, so that a typo in the path does not start a new, empty database.

Handlers receive only events published after they subscribed, so publish
warns when no handler on the transport matches TYPE.`,
		Example: `  ripple publish user.signup.completed --data '{"user_id":"42","email":"ada@example.com"}'
  ripple publish report.requested --data @report.json --delay 10m --key customer-7
  ripple publish order.payment.failed --data - --json < event.json`,
		Args: args(1, 1, "ripple publish TYPE --data JSON, such as: ripple publish user.signup.completed --data '{\"email\":\"ada@example.com\"}'"),
		RunE: func(cmd *cobra.Command, a []string) error {
			typ := a[0]
			if err := ripple.ValidateName(typ); err != nil {
				return err
			}
			if cmd.Flags().Changed("data") && data == "" {
				return fmt.Errorf("--data is empty; give the JSON payload, such as --data '{\"email\":\"ada@example.com\"}', or --data '{}' (or no --data) for an empty object")
			}
			payload, err := readData(data, c.stdin)
			if err != nil {
				return err
			}
			if len(payload) > ripple.DefaultMaxEventSize {
				// An application may raise its bus's MaxEventSize, but
				// this command's bus keeps the default.
				return fmt.Errorf("the payload is %d bytes and ripple publish sends at most %d; store the data elsewhere, such as in object storage, and publish where to find it", len(payload), ripple.DefaultMaxEventSize)
			}
			// The flags are checked here, before Publish would check the
			// options they become, so that errors name the flags rather
			// than Go options the user never wrote.
			var opts []ripple.PublishOption
			if cmd.Flags().Changed("key") {
				if len(key) > ripple.MaxNameLength {
					return fmt.Errorf("--key is %d bytes; the limit is %d", len(key), ripple.MaxNameLength)
				}
				opts = append(opts, ripple.WithKey(key))
			}
			if delay < 0 {
				return fmt.Errorf("--delay %s is negative; give how long to wait, such as 30s or 10m", delay)
			}
			if delay > 0 {
				opts = append(opts, ripple.WithDelay(delay))
			}
			if cmd.Flags().Changed("priority") {
				if priority > math.MaxInt32 || priority < math.MinInt32 {
					return fmt.Errorf("--priority %d does not fit in 32 bits; give a number from %d to %d", priority, math.MinInt32, math.MaxInt32)
				}
				opts = append(opts, ripple.WithPriority(priority))
			}
			if cmd.Flags().Changed("id") {
				if err := checkID(id); err != nil {
					return err
				}
				opts = append(opts, ripple.WithID(id))
			}

			bus, shown, err := c.open(cmd, &bf)
			if err != nil {
				return err
			}
			defer c.closeBus(bus)
			ev, err := bus.Publish(cmd.Context(), typ, payload, opts...)
			if err != nil {
				return tooLarge(unsupportedFlag(err))
			}
			if ev.Duplicate {
				fmt.Fprintf(c.stderr, "note: an event with id %s from source %s is already stored on %s, so nothing new was stored; the event shown is the one kept\n", ev.ID, ev.Source, shown)
			} else {
				c.warnUnmatched(cmd, bus, typ, shown)
			}
			if asJSON {
				return writeJSON(c.stdout, ev)
			}
			return printEvent(c.stdout, ev, delay)
		},
	}
	bf.add(cmd)
	f := cmd.Flags()
	f.StringVar(&data, "data", "", "JSON payload, @FILE, or - for standard input (default {})")
	f.StringVar(&key, "key", "", "partition key: ordered handlers see one key's events in publish order")
	f.DurationVar(&delay, "delay", 0, "deliver no sooner than this from now, such as 30s or 10m")
	f.IntVar(&priority, "priority", 0, "higher is handled first among waiting events")
	f.StringVar(&id, "id", "", "event id; publishing an id the transport remembers stores nothing")
	f.BoolVar(&asJSON, "json", false, "print the stored event as CloudEvents JSON")
	f.BoolVar(&bf.create, "create", false, "create the sqlite database if it does not exist")
	return cmd
}

// readData returns the payload named by --data as JSON.
func readData(arg string, stdin io.Reader) (json.RawMessage, error) {
	var raw []byte
	source := "--data"
	switch {
	case arg == "":
		return json.RawMessage("{}"), nil
	case arg == "-":
		b, err := io.ReadAll(stdin)
		if err != nil {
			return nil, fmt.Errorf("reading --data from standard input: %w", err)
		}
		raw, source = b, "standard input"
	case strings.HasPrefix(arg, "@"):
		b, err := os.ReadFile(arg[1:])
		if err != nil {
			return nil, fmt.Errorf("reading --data: %w", err)
		}
		raw, source = b, arg[1:]
	default:
		raw = []byte(arg)
	}
	raw = bytes.TrimSpace(raw)
	var v any
	if err := json.Unmarshal(raw, &v); err != nil {
		var se *json.SyntaxError
		if errors.As(err, &se) {
			return nil, fmt.Errorf("the payload from %s is not valid JSON at byte %d: %v; quote it for the shell, such as --data '{\"email\":\"ada@example.com\"}'", source, se.Offset, err)
		}
		return nil, fmt.Errorf("the payload from %s is not valid JSON: %v", source, err)
	}
	return json.RawMessage(raw), nil
}

// checkID applies the rules of ripple.WithID to --id.
func checkID(id string) error {
	if id == "" || len(id) > ripple.MaxNameLength {
		return fmt.Errorf("--id %q: an id must be 1 to %d bytes", id, ripple.MaxNameLength)
	}
	for _, r := range id {
		if r < 0x21 || r > 0x7e {
			return fmt.Errorf("--id %q: an id may hold only printable ASCII without spaces", id)
		}
	}
	return nil
}

// tooLarge restates a size-limit error for a CLI user, who cannot raise
// the bus's limit: it gives the limit and what to do instead.
func tooLarge(err error) error {
	if !errors.Is(err, ripple.ErrTooLarge) {
		return err
	}
	return fmt.Errorf("the event is over the %d-byte limit of ripple publish, counting its payload, key and id; store large data elsewhere, such as in object storage, and publish a reference to it", ripple.DefaultMaxEventSize)
}

// unsupportedFlag restates the error for an option the transport cannot
// honour in terms of the flag that asked for it.
func unsupportedFlag(err error) error {
	var ns *ripple.NotSupportedError
	if !errors.As(err, &ns) {
		return err
	}
	switch {
	case strings.HasPrefix(ns.Option, "WithPriority"):
		return fmt.Errorf("--priority is not supported by the %s transport; leave it out, or publish urgent events under their own type so that their handler can be given more concurrency", ns.Transport)
	case strings.HasPrefix(ns.Option, "WithDelay"):
		return fmt.Errorf("--delay is not supported by the %s transport; leave it out and publish when the event should be handled", ns.Transport)
	case strings.HasPrefix(ns.Option, "WithID"):
		return fmt.Errorf("--id is not supported by the %s transport, which does not deduplicate publishes; leave it out", ns.Transport)
	}
	return err
}

// warnUnmatched notes on stderr when no handler on the transport matches
// the type, since such an event reaches nobody.
func (c *cli) warnUnmatched(cmd *cobra.Command, bus *ripple.Bus, typ, shownURL string) {
	ctx, cancel := statsContext(cmd.Context())
	defer cancel()
	stats, err := bus.Stats(ctx)
	if err != nil {
		return // the transport keeps no statistics; nothing to check against
	}
	for _, s := range stats {
		if transport.Match(s.Pattern, typ) {
			return
		}
	}
	fmt.Fprintf(c.stderr, "note: no handler on %s subscribes to %s, so no handler will receive this event (handlers get only events published after they subscribe)\n", shownURL, typ)
}

func printEvent(w io.Writer, ev ripple.Event, delay time.Duration) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	if ev.Duplicate {
		fmt.Fprintf(tw, "already stored\t%s\n", ev.Type)
		delay = 0 // the kept event's delivery time is not known here
	} else {
		fmt.Fprintf(tw, "published\t%s\n", ev.Type)
	}
	fmt.Fprintf(tw, "id\t%s\n", ev.ID)
	fmt.Fprintf(tw, "source\t%s\n", ev.Source)
	fmt.Fprintf(tw, "time\t%s\n", ev.Time.UTC().Format(time.RFC3339Nano))
	if delay > 0 {
		fmt.Fprintf(tw, "deliver after\t%s\n", ev.Time.Add(delay).UTC().Format(time.RFC3339))
	}
	if ev.Key != "" {
		fmt.Fprintf(tw, "key\t%s\n", ev.Key)
	}
	if ev.Priority != 0 {
		fmt.Fprintf(tw, "priority\t%d\n", ev.Priority)
	}
	fmt.Fprintf(tw, "correlationid\t%s\n", ev.CorrelationID)
	fmt.Fprintf(tw, "data\t%s\n", ev.Data)
	return tw.Flush()
}
