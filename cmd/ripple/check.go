package main

import (
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"

	"github.com/ripplehq/ripple"
	"github.com/ripplehq/ripple/transport/sqlite"
	"github.com/spf13/cobra"
)

// checkShown bounds how many of SQLite's problem lines check prints.
const checkShown = 20

func (c *cli) checkCmd() *cobra.Command {
	var (
		bf      busFlags
		salvage string
	)
	cmd := &cobra.Command{
		Use:   "check",
		Short: "Check a sqlite:// database for damage, and copy out what is readable",
		Long: `check runs SQLite's integrity check on the database of a sqlite:// URL,
read-only, and prints ok or the problems it found and what to do. It exits
with status 1 when the file is damaged.

With --salvage NEW.db it also copies every readable subscription, event,
delivery and idempotency claim into NEW.db (a new file), so the application
can go on with NEW.db while the damaged file is kept for inspection. Events
on damaged pages are lost; restoring a backup keeps them.

Never delete a database's -wal and -shm files: after a crash they hold
acknowledged events that are not in the main file yet.`,
		Example: `  ripple check --url sqlite://app.db
  ripple check --url sqlite://app.db --salvage app-salvaged.db`,
		Args: args(0, 0, "ripple check [--url sqlite://PATH] [--salvage NEW.db]"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			u, err := bf.resolve(cmd)
			if err != nil {
				return err
			}
			path, err := sqlitePath(u)
			if err != nil {
				return err
			}
			if _, err := os.Stat(path); err != nil {
				return fmt.Errorf("no database at %s (from %s): %w", path, ripple.RedactURL(u), err)
			}
			problems, err := sqlite.Check(cmd.Context(), path)
			if err != nil {
				return err
			}
			if len(problems) == 0 {
				fmt.Fprintf(c.stdout, "ok: %s passed SQLite's integrity check\n", path)
			} else {
				fmt.Fprintf(c.stdout, "damaged: %s failed SQLite's integrity check:\n", path)
				for i, p := range problems {
					if i == checkShown {
						fmt.Fprintf(c.stdout, "  … and %d more\n", len(problems)-checkShown)
						break
					}
					for _, l := range strings.Split(strings.TrimSpace(p), "\n") {
						fmt.Fprintf(c.stdout, "  %s\n", l)
					}
				}
				fmt.Fprintf(c.stdout, "What to do: stop the processes using it and restore it from a backup; or copy what is readable to a new file with\n  ripple check --url %s --salvage NEW.db\nand point your application at NEW.db. Keep the damaged file, and never delete its -wal and -shm files.\n", shellQuote(u))
			}
			if salvage != "" {
				rep, err := sqlite.Salvage(cmd.Context(), path, salvage)
				if err != nil {
					return fmt.Errorf("salvage to %s: %w", salvage, err)
				}
				fmt.Fprintf(c.stdout, "salvaged into %s: %d subscriptions, %d events, %d deliveries; %d unreadable events lost\n",
					salvage, rep.Subscriptions, rep.Events, rep.Deliveries, rep.Unreadable)
				fmt.Fprintf(c.stdout, "Point your application at sqlite://%s to go on from there.\n", salvage)
			}
			if len(problems) > 0 {
				return &exitError{code: 1}
			}
			return nil
		},
	}
	bf.add(cmd)
	cmd.Flags().StringVar(&salvage, "salvage", "", "copy what is readable into this new database file")
	return cmd
}

// sqlitePath is the file of a sqlite:// URL.
func sqlitePath(rawURL string) (string, error) {
	rest, ok := strings.CutPrefix(rawURL, "sqlite://")
	if !ok {
		return "", fmt.Errorf("check works on sqlite:// databases; %s is not one (other transports keep their data on a server with its own checks)", ripple.RedactURL(rawURL))
	}
	p, _, _ := strings.Cut(rest, "?")
	path, err := url.PathUnescape(p)
	if err != nil || path == "" {
		return "", errors.New("the sqlite:// URL names no file; write sqlite://app.db or sqlite:///abs/path/app.db")
	}
	return path, nil
}
