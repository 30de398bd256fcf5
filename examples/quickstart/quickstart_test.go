package main

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// section returns the text of s between the line holding begin and the
// next line holding end, without those lines.
func section(t *testing.T, what, s, begin, end string) string {
	t.Helper()
	_, rest, ok := strings.Cut(s, begin)
	if !ok {
		t.Fatalf("%s has no %q", what, begin)
	}
	_, rest, _ = strings.Cut(rest, "\n")
	body, _, ok := strings.Cut(rest, end)
	if !ok {
		t.Fatalf("%s has no %q after %q", what, end, begin)
	}
	if i := strings.LastIndex(body, "\n"); i >= 0 {
		body = body[:i+1] // drop the indentation before the end marker
	}
	return strings.TrimSpace(body)
}

// The README's quickstart is this package's code, so it compiles (and
// TestQuickstartRuns runs it): the README's first ```go block after
// "## Quickstart" must equal the code between the markers of
// quickstart.go.
func TestREADMEQuickstart(t *testing.T) {
	readme, err := os.ReadFile(filepath.Join("..", "..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	code, err := os.ReadFile("quickstart.go")
	if err != nil {
		t.Fatal(err)
	}
	_, quick, ok := strings.Cut(string(readme), "\n## Quickstart\n")
	if !ok {
		t.Fatal("README.md has no ## Quickstart section")
	}
	inREADME := section(t, "README.md's quickstart", quick, "```go", "```")
	inCode := section(t, "quickstart.go", string(code), "// README quickstart: begin", "// README quickstart: end")
	if inREADME != inCode {
		rl, cl := strings.Split(inREADME, "\n"), strings.Split(inCode, "\n")
		for i := range max(len(rl), len(cl)) {
			var r, c string
			if i < len(rl) {
				r = rl[i]
			}
			if i < len(cl) {
				c = cl[i]
			}
			if r != c {
				t.Fatalf("README.md's quickstart differs from examples/quickstart/quickstart.go at line %d of the snippet:\nREADME:        %q\nquickstart.go: %q\nCopy the code between the markers of quickstart.go into the README's ```go block.", i+1, r, c)
			}
		}
	}
}

// The quickstart runs: the signup reaches both handlers.
func TestQuickstartRuns(t *testing.T) {
	t.Chdir(t.TempDir()) // it opens sqlite://app.db here
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := run(ctx, "u-7", "grace@example.com"); err != nil {
		t.Fatal(err)
	}
	if got := mailer.emails(); !slices.Equal(got, []string{"grace@example.com"}) {
		t.Errorf("welcome emails %v, want one to grace@example.com", got)
	}
	if got := crm.contacts(); got["u-7"] != "grace@example.com" || len(got) != 1 {
		t.Errorf("CRM contacts %v, want u-7", got)
	}
	if _, err := os.Stat("app.db"); err != nil {
		t.Errorf("the quickstart's database: %v", err)
	}
}
