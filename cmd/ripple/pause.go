package main

import (
	"context"
	"errors"
	"fmt"

	"github.com/ripplehq/ripple"
	"github.com/spf13/cobra"
)

func (c *cli) pauseCmd() *cobra.Command {
	return c.pauseResumeCmd(true)
}

func (c *cli) resumeCmd() *cobra.Command {
	return c.pauseResumeCmd(false)
}

// pauseResumeCmd builds `ripple pause HANDLER` or `ripple resume HANDLER`.
func (c *cli) pauseResumeCmd(pause bool) *cobra.Command {
	var bf busFlags
	cmd := &cobra.Command{
		Use:   "pause HANDLER",
		Short: "Stop a handler taking events, in every process, until resumed",
		Long: `pause stops HANDLER from taking new events in every process that runs it,
for example during an outage of the service it calls, without stopping the
processes or deleting its queue. Its events keep arriving and wait;
attempts already running finish. 'ripple resume HANDLER' delivers what
waited. 'ripple stats' shows the handler as paused. The transport must
support pausing (memory:// only within one process).`,
		Example: `  ripple pause email.welcome
  ripple resume email.welcome`,
		Args: args(1, 1, "ripple pause HANDLER"),
	}
	verb, done := "pause", "paused"
	call := (*ripple.Bus).Pause
	if !pause {
		cmd.Use = "resume HANDLER"
		cmd.Short = "Let a paused handler take events again"
		cmd.Long = `resume lets HANDLER, paused with 'ripple pause', take events again in every
process that runs it; the events that waited meanwhile are delivered.`
		cmd.Example = `  ripple resume email.welcome`
		cmd.Args = args(1, 1, "ripple resume HANDLER")
		verb, done = "resume", "resumed"
		call = (*ripple.Bus).Resume
	}
	cmd.RunE = func(cmd *cobra.Command, a []string) error {
		handler := a[0]
		if err := ripple.ValidateHandlerName(handler); err != nil {
			return err
		}
		bus, shown, err := c.open(cmd, &bf)
		if err != nil {
			return err
		}
		defer c.closeBus(bus)
		ctx, cancel := context.WithTimeout(cmd.Context(), statsTimeout)
		defer cancel()
		if err := call(bus, ctx, handler); err != nil {
			var ns *ripple.NotSupportedError
			if errors.As(err, &ns) {
				return fmt.Errorf("%s is not supported by the %s transport: stop the processes running %s instead", verb, ns.Transport, handler)
			}
			return err
		}
		if pause {
			fmt.Fprintf(c.stdout, "%s %s on %s; its events wait until 'ripple resume %s'\n", done, handler, shown, handler)
		} else {
			fmt.Fprintf(c.stdout, "%s %s on %s\n", done, handler, shown)
		}
		return nil
	}
	bf.add(cmd)
	return cmd
}
