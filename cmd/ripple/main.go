// Command ripple is Ripple's command-line tool: it runs the signup demo,
// publishes events, shows handler statistics, manages dead letters, tails
// events and lints event names, against any transport URL.
//
// Usage:
//
//	ripple demo [--once] [--signups N] [--scale F] [--addr 127.0.0.1:8080]
//	ripple publish TYPE --data JSON [--key K] [--delay D] [--priority P] [--id ID]
//	ripple stats
//	ripple dlq list|requeue|purge HANDLER [IDS...]
//	ripple replay HANDLER --since T [--wait]
//	ripple tail PATTERN
//	ripple pause|resume HANDLER
//	ripple lint NAME...
//	ripple relay --from postgres://… [--schema NAME]
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
	cmd, err := root.ExecuteContextC(ctx)
	if err == nil {
		return 0
	}
	// Cobra finds an unknown first word before any command runs, so its
	// error is rewritten here, to read like the unknown dlq subcommand's.
	var word string
	if _, serr := fmt.Sscanf(err.Error(), "unknown command %q for", &word); serr == nil && cmd == root {
		err = unknownCommand(root, word)
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
replay a handler's events, tail events and lint event names.

Commands that open a bus take --url; it defaults to $RIPPLE_URL and then to
sqlite://ripple.db (the file in the current directory). Commands whose output
is data take --json.`,
		SilenceErrors:              true,
		SilenceUsage:               true,
		SuggestionsMinimumDistance: 2,
	}
	root.CompletionOptions.HiddenDefaultCmd = true
	root.SetFlagErrorFunc(func(cmd *cobra.Command, err error) error {
		// run prefixes "ripple: ", and the help pointer names the
		// command, so the message does not start with the path too.
		return fmt.Errorf("%w (see '%s --help')", err, cmd.CommandPath())
	})
	root.SetHelpCommand(helpCmd())
	root.AddCommand(
		c.demoCmd(),
		c.publishCmd(),
		c.statsCmd(),
		c.dlqCmd(),
		c.replayCmd(),
		c.tailCmd(),
		c.pauseCmd(),
		c.resumeCmd(),
		c.lintCmd(),
		c.checkCmd(),
		c.relayCmd(),
	)
	return root
}

// helpCmd replaces cobra's help command, which prints the usage and exits
// 0 for a topic it does not know, so that a script or a typo in
// `ripple help COMMAND` sees a failure.
func helpCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "help [command]",
		Short: "Help about any command",
		Long:  "help prints the help of a command, such as: ripple help dlq purge",
		RunE: func(cmd *cobra.Command, a []string) error {
			root := cmd.Root()
			topic := fmt.Sprintf("unknown help topic %q", strings.Join(a, " "))
			target, rest, err := root.Find(a)
			if err != nil || target == nil {
				return notFound(topic, root, a[0])
			}
			if len(rest) > 0 {
				return notFound(topic, target, rest[0])
			}
			target.InitDefaultHelpFlag()
			return target.Help()
		},
		ValidArgsFunction: func(cmd *cobra.Command, a []string, toComplete string) ([]cobra.Completion, cobra.ShellCompDirective) {
			target, _, err := cmd.Root().Find(a)
			if err != nil {
				return nil, cobra.ShellCompDirectiveNoFileComp
			}
			var names []cobra.Completion
			for _, sub := range target.Commands() {
				if sub.IsAvailableCommand() && strings.HasPrefix(sub.Name(), toComplete) {
					names = append(names, cobra.CompletionWithDesc(sub.Name(), sub.Short))
				}
			}
			return names, cobra.ShellCompDirectiveNoFileComp
		},
	}
}

// unknownCommand is the error for a word that names no subcommand of
// parent. Cobra would print parent's help and exit 0 for some of these,
// which hides a typo from the script that made it.
func unknownCommand(parent *cobra.Command, word string) error {
	return notFound(fmt.Sprintf("unknown command %q for %q", word, parent.CommandPath()), parent, word)
}

// notFound adds to msg the subcommands of parent near word, and where to
// look for the right one.
func notFound(msg string, parent *cobra.Command, word string) error {
	if near := parent.SuggestionsFor(word); len(near) > 0 {
		msg += "; did you mean " + strings.Join(near, " or ") + "?"
	}
	return fmt.Errorf("%s (see '%s --help')", msg, parent.CommandPath())
}
