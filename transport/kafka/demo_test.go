package kafka

import (
	"context"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestDemoOnce runs `ripple demo --once` against the test cluster: every
// handler completes every signup.
func TestDemoOnce(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the ripple CLI")
	}
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	url := newURL(t)
	cmd := exec.CommandContext(ctx, "go", "run", "./cmd/ripple", "demo", "--once", "--scale", "0.01", "--signups", "10", "--url", url)
	cmd.Dir = root
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("ripple demo --once --url %s: %v\n%s", url, err, out)
	}
	if !strings.Contains(string(out), "OK: all 5 handlers completed all 10 signups.") {
		t.Errorf("the demo did not complete every signup on every handler:\n%s", out)
	}
	t.Logf("%s", out)
}
