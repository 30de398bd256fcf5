// Command signup is the article's signup app on Ripple: POST /signup writes
// the user and publishes user.signup.completed, and five handlers send the
// welcome email, create the Stripe customer, the default workspace, the
// Slack notification and the analytics event, each with its own retries.
// POST /signup-sync does the same work inline, for comparison.
//
//	go run ./examples/signup                      # sqlite://ripple.db, :8080
//	go run ./examples/signup -url memory:// -scale 0.1
//	curl -X POST localhost:8080/signup -d '{"email":"ada@example.com"}'
//
// The transport comes from -url, else $RIPPLE_URL, else sqlite://ripple.db:
// moving the app to Redis or NATS is a matter of changing that URL. The
// app also serves Prometheus metrics at /metrics. `ripple demo` runs this
// app under load and compares the two versions.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/ripplehq/ripple"
	"github.com/ripplehq/ripple/examples/signup/signupapp"
	"github.com/ripplehq/ripple/observe"
	_ "github.com/ripplehq/ripple/transport/all"
)

func main() {
	url := flag.String("url", os.Getenv("RIPPLE_URL"), "transport URL (default $RIPPLE_URL, then "+ripple.DefaultURL+")")
	addr := flag.String("addr", ":8080", "HTTP address")
	scale := flag.Float64("scale", 1, "multiplier for the simulated latencies; 1 is the article's numbers")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, *url, *addr, *scale); err != nil {
		fmt.Fprintln(os.Stderr, "signup:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, url, addr string, scale float64) error {
	if scale < 0 {
		return fmt.Errorf("-scale %v: give a factor of 0 or more", scale)
	}
	metrics := observe.NewMetrics()
	bus, err := ripple.Open(ctx, url, ripple.WithHooks(metrics))
	if err != nil {
		return err
	}
	cfg := signupapp.DefaultConfig()
	cfg.Timings = cfg.Timings.Scaled(scale)
	app, err := signupapp.New(bus, cfg)
	if err != nil {
		_ = bus.Close()
		return err
	}
	metrics.Watch(bus)

	mux := http.NewServeMux()
	app.Register(mux)
	mux.Handle("GET /metrics", metrics.Handler())
	srv := &http.Server{Addr: addr, Handler: mux, ReadHeaderTimeout: 5 * time.Second}

	// Subscribe the handlers before taking requests: a durable
	// subscription receives only events published after it exists.
	if err := bus.Start(ctx); err != nil {
		_ = bus.Close()
		return err
	}
	srvDone := make(chan error, 1)
	go func() { srvDone <- srv.ListenAndServe() }()
	slog.Info("signup app listening", "addr", addr, "transport", bus.TransportName())

	var srvErr error
	select {
	case <-ctx.Done():
		shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		srvErr = srv.Shutdown(shutdownCtx)
		cancel()
	case srvErr = <-srvDone:
	}
	// Close drains the handlers still running, within ShutdownTimeout.
	busErr := bus.Close()
	if srvErr != nil && !errors.Is(srvErr, http.ErrServerClosed) {
		return srvErr
	}
	return busErr
}
