package main

import (
	"context"
	"strings"
	"testing"
	"time"
)

func TestRunStartsAndStops(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if err := run(ctx, "memory://", "127.0.0.1:0", 0.01); err != nil {
		t.Fatalf("run returned %v after a clean stop", err)
	}
}

func TestRunRejectsBadInput(t *testing.T) {
	ctx := context.Background()
	if err := run(ctx, "memory://", "127.0.0.1:0", -1); err == nil || !strings.Contains(err.Error(), "-scale") {
		t.Errorf("negative scale: %v", err)
	}
	if err := run(ctx, "bogus://x", "127.0.0.1:0", 1); err == nil || !strings.Contains(err.Error(), "unknown transport") {
		t.Errorf("unknown scheme: %v", err)
	}
	if err := run(ctx, "memory://", "256.0.0.1:http", 1); err == nil {
		t.Error("an address that cannot be listened on was accepted")
	}
}
