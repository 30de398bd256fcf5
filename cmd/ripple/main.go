// Command ripple is Ripple's command-line tool: it runs the signup demo,
// publishes events, shows handler statistics, manages dead letters, tails
// events and lints event names, against any transport URL.
//
// Usage:
//
//	ripple demo [--once] [--signups N] [--scale F] [--addr :8080]
//	ripple publish TYPE --data JSON [--key K] [--delay D] [--priority P] [--id ID]
//	ripple stats
//	ripple dlq list|requeue|purge HANDLER [IDS...]
//	ripple tail PATTERN
//	ripple lint NAME...
//
// Every command that opens a bus takes --url, defaulting to the RIPPLE_URL
// environment variable and then to sqlite://ripple.db; commands whose
// output is data take --json. Run `ripple help COMMAND` for details.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spf13/cobra"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// exitError carries an exit status for a failure that has already been
// reported (lint advice, an unfinished demo), so run prints nothing more
// than msg.
type exitError struct {
	code int
	msg  string
}

func (e *exitError) Error() string { return e.msg }

// run executes the command line args and returns the process exit status.
// Errors are printed to stderr as one line.
func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	root := newRoot(&cli{stdin: stdin, stdout: stdout, stderr: stderr})
	root.SetArgs(args)
	root.SetIn(stdin)
	root.SetOut(stdout)
	root.SetErr(stderr)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return 0
	}
	code := 1
	var ee *exitError
	if errors.As(err, &ee) {
		code = ee.code
	}
	if msg := oneLine(err.Error()); msg != "" {
		fmt.Fprintln(stderr, "ripple: "+strings.TrimPrefix(msg, "ripple: "))
	}
	return code
}

// oneLine folds a multi-line message so that every error is one line.
func oneLine(s string) string {
	return strings.Join(strings.Fields(strings.ReplaceAll(s, "\n", " ")), " ")
}

// cli holds the streams commands read and write, so tests can run
// commands in-process.
type cli struct {
	stdin          io.Reader
	stdout, stderr io.Writer
}

func newRoot(c *cli) *cobra.Command {
	root := &cobra.Command{
		Use:   "ripple",
		Short: "Event-driven architecture at the size your team needs",
		Long: `ripple works with Ripple buses from the command line: run the article's
signup demo, publish events, watch handler statistics, manage dead letters,
tail events and lint event names.

Commands that open a bus take --url; it defaults to $RIPPLE_URL and then to
sqlite://ripple.db (the file in the current directory). Commands whose output
is data take --json.`,
		SilenceErrors: true,
		SilenceUsage:  true,
	}
	root.CompletionOptions.HiddenDefaultCmd = true
	root.SetFlagErrorFunc(func(cmd *cobra.Command, err error) error {
		return fmt.Errorf("%s: %w (see '%s --help')", cmd.CommandPath(), err, cmd.CommandPath())
	})
	root.AddCommand(
		c.demoCmd(),
		c.publishCmd(),
		c.statsCmd(),
		c.dlqCmd(),
		c.tailCmd(),
		c.lintCmd(),
	)
	return root
}
