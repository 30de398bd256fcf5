package main

import (
	"fmt"

	"github.com/ripplehq/ripple"
	"github.com/spf13/cobra"
)

func (c *cli) lintCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "lint NAME...",
		Short: "Check event names against Ripple's naming advice",
		Long: `lint checks event names: lowercase, dot-separated, at least two segments,
and stating a fact that happened ("user.signup.completed") rather than a
command ("createUser", "handle-signup"). It prints the advice for each name
and exits with status 1 if any name has advice.`,
		Example: `  ripple lint user.signup.completed createUser USER_CREATED`,
		Args:    args(1, -1, "ripple lint NAME..., such as: ripple lint user.signup.completed"),
		RunE: func(cmd *cobra.Command, names []string) error {
			type result struct {
				Name   string   `json:"name"`
				Advice []string `json:"advice"`
			}
			var results []result
			flagged := 0
			for _, n := range names {
				advice := ripple.Lint(n)
				if advice == nil {
					advice = []string{}
				} else {
					flagged++
				}
				results = append(results, result{n, advice})
			}
			if asJSON {
				if err := writeJSON(c.stdout, results); err != nil {
					return err
				}
			} else {
				for _, r := range results {
					if len(r.Advice) == 0 {
						fmt.Fprintf(c.stdout, "%s: ok\n", r.Name)
					}
					for _, a := range r.Advice {
						fmt.Fprintf(c.stdout, "%s: %s\n", r.Name, a)
					}
				}
			}
			if flagged > 0 {
				return &exitError{code: 1, msg: fmt.Sprintf("lint: %d of %d names have advice", flagged, len(names))}
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the advice as JSON")
	return cmd
}
