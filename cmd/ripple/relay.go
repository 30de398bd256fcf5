package main

import (
	"errors"
	"fmt"
	"log/slog"
	"strings"

	"github.com/spf13/cobra"

	"github.com/ripplehq/ripple"
	"github.com/ripplehq/ripple/outbox"
)

func (c *cli) relayCmd() *cobra.Command {
	var (
		bf     busFlags
		from   string
		schema string
	)
	cmd := &cobra.Command{
		Use:   "relay",
		Short: "Move events from a transactional outbox to the transport",
		Long: `relay moves the events that PublishTx wrote to the outbox in the
application's PostgreSQL database (--from) to the transport of --url, in
order per key, deleting each only once the transport acknowledged it, until
interrupted. Several relays may run at once: a key's events are moved by one
relay at a time. A bus opened with ripple.WithOutbox relays by itself; run
this command instead when the relay should live apart (give the buses
outbox.RelayElsewhere()).`,
		Example: `  ripple relay --from postgres://app@db/app --url redis://localhost:6379/0`,
		Args:    args(0, 0, "ripple relay --from postgres://… [--schema NAME] [--url URL]"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if strings.TrimSpace(from) == "" {
				return errors.New("--from is required: the postgres:// URL of the database holding the outbox")
			}
			if !strings.HasPrefix(from, "postgres://") && !strings.HasPrefix(from, "postgresql://") {
				return fmt.Errorf("--from %s: the outbox lives in PostgreSQL; give a postgres:// URL", ripple.RedactURL(from))
			}
			u, err := bf.resolve(cmd)
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			log := c.logger(slog.LevelInfo)
			ob, err := outbox.OpenPostgres(ctx, from, outbox.WithSchema(schema), outbox.WithLogger(log))
			if err != nil {
				return err
			}
			defer ob.Close()
			bus, err := ripple.Open(ctx, u, ripple.WithOutbox(ob), ripple.WithLogger(log))
			if err != nil {
				return err
			}
			fmt.Fprintf(c.stderr, "relaying the outbox %s.messages of %s to %s; interrupt to stop\n",
				schema, ripple.RedactURL(from), ripple.RedactURL(u))
			<-ctx.Done()
			c.closeBus(bus)
			return nil
		},
	}
	bf.add(cmd)
	cmd.Flags().StringVar(&from, "from", "", "postgres:// URL of the database holding the outbox (required)")
	cmd.Flags().StringVar(&schema, "schema", outbox.DefaultSchema, "schema of the outbox table")
	return cmd
}
