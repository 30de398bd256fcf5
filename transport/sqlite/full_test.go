package sqlite

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ripplehq/ripple/transport"
)

// tinyDisk mounts a tmpfs of the given size and returns its directory. It
// skips the test where mounting is not permitted (not root, or in a
// container without the capability).
func tinyDisk(t *testing.T, size string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "disk")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size, "tmpfs", dir).CombinedOutput(); err != nil {
		t.Skipf("cannot mount a %s tmpfs to fill (needs root and mount rights): %v: %s", size, err, strings.TrimSpace(string(out)))
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", dir, err, out)
		}
	})
	return dir
}

// fill writes a file until the disk is full.
func fill(t *testing.T, path string) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 4096)
	for {
		if _, err := f.Write(buf); err != nil {
			return
		}
	}
}

func wantFull(t *testing.T, what string, err error) {
	t.Helper()
	if err == nil {
		t.Fatalf("%s on a full disk succeeded", what)
	}
	if !errors.Is(err, transport.ErrStorageFull) || !strings.Contains(err.Error(), "disk full") {
		t.Fatalf("%s on a full disk: %v; want an error matching ErrStorageFull that says disk full", what, err)
	}
	t.Logf("%s: %v", what, err)
}

func TestDiskFullPublish(t *testing.T) {
	dir := tinyDisk(t, "2m")
	// Room to free later.
	spare := filepath.Join(dir, "spare")
	if err := os.WriteFile(spare, make([]byte, 256<<10), 0o644); err != nil {
		t.Fatal(err)
	}
	d := open(t, filepath.Join(dir, "ripple.db"), transport.Config{})
	s := subscribe(t, d, transport.SubscriptionSpec{Name: "h", Pattern: "f.>"})
	data := []byte(`"` + strings.Repeat("x", 4000) + `"`)
	var err error
	stored := 0
	for i := 0; i < 5000; i++ {
		m := msg("f.x")
		m.Data = data
		if err = d.Publish(context.Background(), []*transport.Message{m}); err != nil {
			break
		}
		stored++
	}
	wantFull(t, "Publish", err)
	if stored == 0 {
		t.Fatal("nothing fitted on the disk")
	}
	// Freeing space makes publishing work again, and nothing stored was
	// lost.
	if err := os.Remove(spare); err != nil {
		t.Fatal(err)
	}
	publish(t, d, msg("f.x"))
	got := 0
	for got < stored+1 {
		ds := receive(t, s, 64, 20*time.Second)
		got += len(ds)
		settleAll(t, s, ds, transport.Complete)
	}
}

func TestDiskFullOpen(t *testing.T) {
	dir := tinyDisk(t, "1m")
	existing := filepath.Join(dir, "existing.db")
	d := open(t, existing, transport.Config{})
	publish(t, d, msg("f.x"))
	d.Close()
	fill(t, filepath.Join(dir, "filler"))

	_, err := Open(context.Background(), "sqlite://"+filepath.Join(dir, "new.db"), transport.Config{})
	wantFull(t, "Open of a new file", err)
	_, err = Open(context.Background(), "sqlite://"+existing, transport.Config{})
	wantFull(t, "Open of an existing file", err)
}
