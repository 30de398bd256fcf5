package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ripplehq/ripple"
)

func TestCheck(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "app.db")
	u := "sqlite://" + path
	ctx := context.Background()
	bus, err := ripple.Open(ctx, u)
	if err != nil {
		t.Fatal(err)
	}
	if err := bus.On("check.*", "h", func(context.Context, ripple.Event) error { return nil }); err != nil {
		t.Fatal(err)
	}
	if err := bus.Start(ctx); err != nil {
		t.Fatal(err)
	}
	pad := strings.Repeat("p", 1000)
	for i := range 400 {
		if _, err := bus.Publish(ctx, "check.done", map[string]any{"i": i, "pad": pad}); err != nil {
			t.Fatal(err)
		}
	}
	bus.Close()

	r := mustRun(t, "check", "--url", u)
	if !strings.Contains(r.stdout, "ok: ") {
		t.Fatalf("check of a sound file: %s", r.stdout)
	}

	// Garbage over three pages in the middle of the file.
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	const page = 4096
	mid := len(b) / page / 2 * page
	copy(b[mid:], bytes.Repeat([]byte{0xba, 0xd0}, 3*page/2))
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	r = rippleCmd(t, "", "check", "--url", u)
	if r.code != 1 || !strings.Contains(r.stdout, "damaged: ") || !strings.Contains(r.stdout, "restore it from a backup") ||
		!strings.Contains(r.stdout, "--salvage") {
		t.Fatalf("check of a damaged file: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}

	out := filepath.Join(dir, "salvaged.db")
	r = rippleCmd(t, "", "check", "--url", u, "--salvage", out)
	if r.code != 1 || !strings.Contains(r.stdout, "salvaged into "+out) {
		t.Fatalf("salvage: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	r = mustRun(t, "check", "--url", "sqlite://"+out)
	if !strings.Contains(r.stdout, "ok: ") {
		t.Fatalf("check of the salvaged file: %s", r.stdout)
	}
	r = mustRun(t, "stats", "--url", "sqlite://"+out)
	if !strings.Contains(r.stdout, "h ") {
		t.Fatalf("stats of the salvaged file: %s", r.stdout)
	}

	wantError(t, rippleCmd(t, "", "check", "--url", "memory://"), "sqlite://")
	wantError(t, rippleCmd(t, "", "check", "--url", "sqlite://"+filepath.Join(dir, "missing.db")), "no database")
}
