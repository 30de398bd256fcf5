package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/url"
	"os"
	"strings"

	"github.com/ripplehq/ripple"
	"github.com/spf13/cobra"

	// Every transport Ripple ships, so that any URL works.
	_ "github.com/ripplehq/ripple/transport/all"
)

// envURL names the environment variable that supplies --url's default.
const envURL = "RIPPLE_URL"

// busFlags are the flags of commands that open a bus.
type busFlags struct {
	url string
	// create lets open create a missing sqlite database; only commands
	// that register --create set it.
	create bool
}

func (f *busFlags) add(cmd *cobra.Command) {
	cmd.Flags().StringVar(&f.url, "url", "",
		"transport URL (default $"+envURL+", then "+ripple.DefaultURL+")")
}

// resolve returns the URL to open: --url when given, else $RIPPLE_URL,
// else ripple.DefaultURL.
func (f *busFlags) resolve(cmd *cobra.Command) (string, error) {
	if cmd.Flags().Changed("url") {
		if strings.TrimSpace(f.url) == "" {
			return "", fmt.Errorf("--url is empty; give a transport URL such as %s, or leave the flag out to use $%s", ripple.DefaultURL, envURL)
		}
		return f.url, nil
	}
	if env := strings.TrimSpace(os.Getenv(envURL)); env != "" {
		return env, nil
	}
	return ripple.DefaultURL, nil
}

// open opens the bus for an administration command and returns it with
// the URL as commands may print it: with its password hidden, since their
// output ends up in terminals, tickets and CI logs. It refuses a sqlite
// URL whose file does not exist: creating an empty database in the wrong
// directory would only hide the mistake.
func (c *cli) open(cmd *cobra.Command, f *busFlags) (*ripple.Bus, string, error) {
	u, err := f.resolve(cmd)
	if err != nil {
		return nil, "", err
	}
	shown := ripple.RedactURL(u)
	if f.create && !strings.HasPrefix(u, "sqlite://") {
		return nil, shown, fmt.Errorf("--create applies to sqlite:// databases only; %s needs no creating: its transport makes what it needs on first use, so drop --create", shown)
	}
	if !f.create {
		if err := requireDatabase(u, cmd.Flags().Lookup("create") != nil); err != nil {
			return nil, shown, err
		}
	}
	if strings.HasPrefix(u, "memory://") {
		fmt.Fprintln(c.stderr, "note: a memory:// store lives inside one process, so this command sees only what it does itself")
	}
	bus, err := ripple.Open(cmd.Context(), u, ripple.WithLogger(c.logger(slog.LevelWarn)))
	if err != nil {
		return nil, shown, err
	}
	return bus, shown, nil
}

// requireDatabase fails for a sqlite:// URL whose file is missing, saying
// how to create one: with --create when the command has it, else with
// ripple publish --create.
func requireDatabase(rawURL string, hasCreate bool) error {
	rest, ok := strings.CutPrefix(rawURL, "sqlite://")
	if !ok {
		return nil
	}
	path, _, _ := strings.Cut(rest, "?")
	if p, err := url.PathUnescape(path); err == nil {
		path = p
	}
	if path == "" {
		return nil // the transport explains what is wrong with the URL
	}
	if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
		create := "pass --create to create a new one there"
		if !hasCreate {
			create = "to start a new one there, publish its first event with ripple publish TYPE --create --url " + shellQuote(ripple.RedactURL(rawURL))
		}
		return fmt.Errorf("no Ripple database at %s (from %s); run ripple where your application keeps its database, or pass --url or set $%s; %s", path, ripple.RedactURL(rawURL), envURL, create)
	}
	return nil
}

// logger returns a logger for the bus's background messages on stderr.
func (c *cli) logger(level slog.Level) *slog.Logger {
	return slog.New(slog.NewTextHandler(c.stderr, &slog.HandlerOptions{Level: level}))
}

// closeBus closes the bus and reports a failure to close on stderr, since
// by then the command's own result has been printed.
func (c *cli) closeBus(bus *ripple.Bus) {
	if err := bus.Close(); err != nil {
		fmt.Fprintln(c.stderr, "ripple: closing the bus:", errText(err))
	}
}

// errText is err's message without the "ripple: " that library errors
// start with, for lines that already begin with it.
func errText(err error) string {
	return strings.TrimPrefix(err.Error(), "ripple: ")
}

// writeJSON prints v as indented JSON.
func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// args returns a cobra argument check that explains the usage in its
// error, instead of cobra's bare count.
func args(min, max int, usage string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, a []string) error {
		if len(a) < min || (max >= 0 && len(a) > max) {
			return fmt.Errorf("usage: %s", usage)
		}
		return nil
	}
}

// statsContext is the ctx for one quick read of the transport.
func statsContext(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, statsTimeout)
}
