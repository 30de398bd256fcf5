package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"math"
	"net"
	"net/http"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/ripplehq/ripple"
	"github.com/ripplehq/ripple/examples/signup/signupapp"
	"github.com/ripplehq/ripple/observe"
	"github.com/spf13/cobra"
)

// defaultDemoAddr is where the demo serves unless --addr says otherwise:
// the loopback interface only, as the demo has no authentication.
const defaultDemoAddr = "127.0.0.1:8080"

// demoDB is the database file the demo recreates on each run unless --url
// names another transport.
const demoDB = "ripple-demo.db"

type demoFlags struct {
	url     string
	once    bool
	signups int
	clients int
	scale   float64
	addr    string
	seed    uint64
	wait    time.Duration
	asJSON  bool
}

func (c *cli) demoCmd() *cobra.Command {
	var f demoFlags
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Run the article's signup flow synchronously and event-driven, side by side",
		Long: `demo runs the signup app of "Event-driven architecture for small teams" twice
on the same load: synchronously, where POST /signup-sync writes the user and
then sends the welcome email, creates the Stripe customer, the default
workspace, the Slack notification and the analytics event inline; and
event-driven, where POST /signup writes the user, publishes
user.signup.completed and returns while five Ripple handlers do the rest.
The simulated Stripe API fails about one call in three: synchronously that
fails the signup, event-driven the Stripe handler retries with backoff.

It prints the response times of both, waits until every handler has
finished every event-driven signup, and prints what each handler completed,
retried and dead-lettered. Then it keeps serving the signup endpoints,
/metrics (Prometheus) and /stats (JSON) until Ctrl-C; --once exits after the
summary instead. The exit status is 1 if a handler did not complete every
signup.

Without --url the demo uses a fresh sqlite://` + demoDB + ` in the current
directory, deleted and recreated on each run, so runs never mix. Unlike the
other commands it does not read $RIPPLE_URL: the demo registers five
durable handlers, which should not land in an application's database by
accident.

--scale multiplies every simulated latency and the retry backoff: 1 is the
article's numbers (about 1.9 s per synchronous signup), 0.01 runs the same
flow a hundred times faster.`,
		Example: `  ripple demo
  ripple demo --once --signups 100 --scale 0.1
  ripple demo --url memory:// --addr 127.0.0.1:9090
  ripple demo --addr :8080     # every interface, for a demo shown on another machine`,
		Args: args(0, 0, "ripple demo [--once] [--signups N] [--scale F] [--addr 127.0.0.1:8080] [--url URL]"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			return c.runDemo(cmd, &f)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.url, "url", "", "transport URL (default: a fresh sqlite://"+demoDB+" for every run)")
	fl.BoolVar(&f.once, "once", false, "print the summary and exit instead of serving")
	fl.IntVar(&f.signups, "signups", 50, "signups sent to each version")
	fl.IntVar(&f.clients, "clients", 10, "concurrent clients sending them")
	fl.Float64Var(&f.scale, "scale", 1, "multiplier for every simulated latency; 1 is the article's numbers")
	fl.StringVar(&f.addr, "addr", defaultDemoAddr, "HTTP address to serve on; :8080 serves every interface (with --once and no --addr, a free loopback port)")
	fl.Uint64Var(&f.seed, "seed", 0, "seed for the simulated Stripe failures, to repeat a run (0: random)")
	fl.DurationVar(&f.wait, "wait", 0, "how long to wait for the handlers to finish (default: from the load and --scale)")
	fl.BoolVar(&f.asJSON, "json", false, "print the summary as JSON")
	return cmd
}

// demoSummary is what the demo measured; --json prints it.
type demoSummary struct {
	// URL is the transport URL with any password replaced by xxxxx.
	URL           string `json:"url"`
	FreshDatabase bool   `json:"fresh_database"`
	// Addr is the base URL a local client reaches the demo at.
	Addr string `json:"addr"`
	// Listen is the address the demo listens on, as the system bound it:
	// a loopback address unless --addr asked for another, such as ":8080"
	// for every interface.
	Listen   string           `json:"listen"`
	Signups  int              `json:"signups"`
	Clients  int              `json:"clients"`
	Scale    float64          `json:"scale"`
	Seed     uint64           `json:"seed"`
	Sync     loadSummary      `json:"sync"`
	Evented  loadSummary      `json:"evented"`
	Handlers []handlerSummary `json:"handlers"`
	// SideEffectsSeconds runs from the first event-driven request until
	// the last handler finished its last signup.
	SideEffectsSeconds float64 `json:"side_effects_seconds"`
	AllCompleted       bool    `json:"all_completed"`
	WaitError          string  `json:"wait_error,omitempty"`
	// passwordHidden says that URL lost a password, so commands printed
	// with it need the user's own password put back.
	passwordHidden bool
}

// everyInterface notes, after the local URL, that the demo listens on
// every interface rather than on loopback only.
func (s *demoSummary) everyInterface() string {
	host, _, err := net.SplitHostPort(s.Listen)
	if ip := net.ParseIP(host); err == nil && (host == "" || ip != nil && ip.IsUnspecified()) {
		return " (listening on " + s.Listen + ": every interface)"
	}
	return ""
}

// passwordNote is what follows a suggested command line holding s.URL.
func (s *demoSummary) passwordNote() string {
	if s.passwordHidden {
		return " (with your password in place of xxxxx)"
	}
	return ""
}

type loadSummary struct {
	Path         string  `json:"path"`
	P50Seconds   float64 `json:"p50_seconds"`
	P99Seconds   float64 `json:"p99_seconds"`
	Failed       int     `json:"failed"`
	FirstFailure string  `json:"first_failure,omitempty"`
}

type handlerSummary struct {
	Handler        string  `json:"handler"`
	LatencySeconds float64 `json:"latency_seconds"`
	Completed      int     `json:"completed"`
	Retried        int     `json:"retried"`
	Dead           int     `json:"dead"`
	// Queued is waiting + active + delayed as the transport reports it at
	// the end; -1 when the transport keeps no statistics.
	Queued int64 `json:"queued"`
}

func (f *demoFlags) validate(cmd *cobra.Command) error {
	switch {
	case f.signups < 1:
		return fmt.Errorf("--signups %d: send at least 1 signup", f.signups)
	case f.clients < 1:
		return fmt.Errorf("--clients %d: use at least 1 client", f.clients)
	case math.IsNaN(f.scale) || math.IsInf(f.scale, 0) || f.scale < 0:
		return fmt.Errorf("--scale %v: give a factor of 0 or more, such as 1 (the article's latencies) or 0.01", f.scale)
	case f.wait < 0:
		return fmt.Errorf("--wait %s is negative", f.wait)
	case cmd.Flags().Changed("url") && f.url == "":
		return errors.New("--url is empty; give a transport URL such as sqlite://demo.db or memory://")
	}
	return nil
}

func (c *cli) runDemo(cmd *cobra.Command, f *demoFlags) error {
	if err := f.validate(cmd); err != nil {
		return err
	}
	ctx := cmd.Context()
	busURL := f.url
	sum := demoSummary{Signups: f.signups, Clients: f.clients, Scale: f.scale}
	if busURL == "" {
		if err := removeDemoDB(); err != nil {
			return err
		}
		busURL, sum.FreshDatabase = "sqlite://"+demoDB, true
	}
	// The summary is printed and may be pasted anywhere, so it carries
	// the URL without its password.
	sum.URL = ripple.RedactURL(busURL)
	sum.passwordHidden = sum.URL != busURL

	tally := signupapp.NewTally()
	metrics := observe.NewMetrics()
	bus, err := ripple.Open(ctx, busURL, ripple.WithHooks(tally, metrics),
		ripple.WithLogger(c.logger(slog.LevelError)))
	if err != nil {
		return err
	}
	defer c.closeBus(bus)

	cfg := signupapp.DefaultConfig()
	cfg.Timings = cfg.Timings.Scaled(f.scale)
	cfg.Seed = f.seed
	app, err := signupapp.New(bus, cfg)
	if err != nil {
		return err
	}
	sum.Seed = app.Seed()
	metrics.Watch(bus)
	if err := bus.Start(ctx); err != nil {
		return err
	}

	addr := f.addr
	if f.once && !cmd.Flags().Changed("addr") {
		addr = "127.0.0.1:0"
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("demo: cannot serve on %s: %w; pick another address with --addr", addr, err)
	}
	baseURL := "http://" + dialAddr(ln.Addr())
	sum.Addr, sum.Listen = baseURL, ln.Addr().String()
	srv := &http.Server{Handler: demoMux(app, bus, metrics), ReadHeaderTimeout: 5 * time.Second}
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ln) }()
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()

	out := c.stdout
	if f.asJSON {
		out = io.Discard
	}
	printDemoHeader(out, &sum, cfg)

	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: f.clients}}
	defer client.CloseIdleConnections()
	load := func(path, prefix string) (signupapp.LoadResult, error) {
		return signupapp.Load{Client: client, BaseURL: baseURL, Path: path, Signups: f.signups,
			Clients: f.clients, EmailPrefix: prefix}.Run(ctx)
	}
	fmt.Fprintf(out, "Sending %d synchronous signups (POST /signup-sync)...\n", f.signups)
	syncRes, err := load("/signup-sync", "sync")
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "Sending %d event-driven signups (POST /signup)...\n", f.signups)
	eventStart := time.Now()
	evRes, err := load("/signup", "evented")
	if err != nil {
		return err
	}
	sum.Sync, sum.Evented = summarizeLoad(syncRes), summarizeLoad(evRes)

	wait := f.wait
	if wait == 0 {
		// Generous: the whole Stripe backlog run serially, plus the
		// longest backoffs, plus slack for a slow machine.
		wait = 30*time.Second + time.Duration(f.signups)*cfg.Timings.StripeCustomer + 2*cfg.Timings.RetryMax
	}
	fmt.Fprintf(out, "Waiting for the five handlers to finish the %d event-driven signups...\n\n", len(evRes.EventIDs))
	wctx, cancel := context.WithTimeout(ctx, wait)
	waitErr := tally.Wait(wctx, signupapp.Handlers(), evRes.EventIDs)
	cancel()
	sum.SideEffectsSeconds = time.Since(eventStart).Seconds()
	if waitErr != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("demo interrupted while the handlers were still running")
		}
		sum.WaitError = fmt.Sprintf("gave up after %s: %v", wait, waitErr)
	}

	queued := queuedByHandler(ctx, bus)
	sum.AllCompleted = waitErr == nil && evRes.Failed == 0
	for _, h := range signupapp.Handlers() {
		n := tally.Count(h, evRes.EventIDs...)
		q, ok := queued[h]
		if !ok {
			q = -1
		}
		sum.Handlers = append(sum.Handlers, handlerSummary{Handler: h, LatencySeconds: cfg.Timings.Of(h).Seconds(),
			Completed: n.Completed, Retried: n.Retried, Dead: n.Dead, Queued: q})
		if n.Completed != len(evRes.EventIDs) {
			sum.AllCompleted = false
		}
	}

	if f.asJSON {
		if err := writeJSON(c.stdout, sum); err != nil {
			return err
		}
	} else {
		printDemoSummary(c.stdout, &sum)
	}

	if !f.once {
		printServing(c.stdout, &sum, f.asJSON, c.stderr)
		select {
		case <-ctx.Done():
		case err := <-serveErr:
			return fmt.Errorf("demo: HTTP server stopped: %w", err)
		}
	}
	if !sum.AllCompleted {
		return &exitError{code: 1, msg: "demo: not every handler completed every event-driven signup; see the summary"}
	}
	return nil
}

// removeDemoDB deletes the demo's database and its WAL files so that the
// run starts empty.
func removeDemoDB() error {
	for _, p := range []string{demoDB, demoDB + "-wal", demoDB + "-shm"} {
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("demo: cannot remove the previous run's %s: %w", p, err)
		}
	}
	return nil
}

// dialAddr turns a listening address into one a local client can dial:
// an unspecified host (":8080") becomes the loopback address.
func dialAddr(a net.Addr) string {
	host, port, err := net.SplitHostPort(a.String())
	if err != nil {
		return a.String()
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		host = "127.0.0.1"
	}
	return net.JoinHostPort(host, port)
}

// demoMux serves the signup app, /metrics, /stats and an index.
func demoMux(app *signupapp.App, bus *ripple.Bus, m *observe.Metrics) *http.ServeMux {
	mux := http.NewServeMux()
	app.Register(mux)
	mux.Handle("GET /metrics", m.Handler())
	mux.HandleFunc("GET /stats", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := statsContext(r.Context())
		defer cancel()
		stats, err := bus.Stats(ctx)
		w.Header().Set("Content-Type", "application/json")
		if err != nil {
			w.WriteHeader(http.StatusServiceUnavailable)
			_ = writeJSON(w, map[string]string{"error": err.Error()})
			return
		}
		_ = writeJSON(w, stats)
	})
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprint(w, `Ripple signup demo
  POST /signup        {"email": "..."}  event-driven signup
  POST /signup-sync   {"email": "..."}  synchronous signup
  GET  /users/{id}    a user and the side effects done so far
  GET  /stats         handler statistics (JSON)
  GET  /metrics       Prometheus metrics
`)
	})
	return mux
}

func summarizeLoad(r signupapp.LoadResult) loadSummary {
	return loadSummary{Path: r.Path, P50Seconds: r.Percentile(0.5).Seconds(), P99Seconds: r.Percentile(0.99).Seconds(),
		Failed: r.Failed, FirstFailure: r.FirstFailure}
}

// queuedByHandler returns waiting+active+delayed per handler, or nothing
// when the transport keeps no statistics.
func queuedByHandler(ctx context.Context, bus *ripple.Bus) map[string]int64 {
	sctx, cancel := statsContext(ctx)
	defer cancel()
	stats, err := bus.Stats(sctx)
	out := map[string]int64{}
	if err != nil {
		return out
	}
	for _, s := range stats {
		out[s.Handler] = s.Waiting + s.Active + s.Delayed
	}
	return out
}

func printDemoHeader(w io.Writer, s *demoSummary, cfg signupapp.Config) {
	fmt.Fprintln(w, "Ripple demo: the article's signup flow, synchronous vs event-driven")
	fresh := ""
	if s.FreshDatabase {
		fresh = " (a fresh database for this run; --url picks another)"
	}
	t := cfg.Timings
	fmt.Fprintf(w, "  transport  %s%s\n", s.URL, fresh)
	fmt.Fprintf(w, "  load       %d signups per version from %d concurrent clients, served at %s%s\n", s.Signups, s.Clients, s.Addr, s.everyInterface())
	fmt.Fprintf(w, "  latencies  ×%g: user write %s, email %s, Stripe %s, workspace %s, Slack %s, analytics %s\n",
		s.Scale, fmtDur(t.DBWrite), fmtDur(t.WelcomeEmail), fmtDur(t.StripeCustomer), fmtDur(t.Workspace),
		fmtDur(t.SlackNotify), fmtDur(t.Analytics))
	fmt.Fprintf(w, "  Stripe     fails about 1 call in %.0f (--seed %d repeats this run)\n\n", 1/cfg.StripeFailureRate, s.Seed)
}

func printDemoSummary(w io.Writer, s *demoSummary) {
	secs := func(f float64) string { return fmtDur(time.Duration(f * float64(time.Second))) }
	tw := tabwriter.NewWriter(w, 0, 0, 3, ' ', 0)
	fmt.Fprintln(tw, "Response time\tp50\tp99\tfailed")
	fmt.Fprintf(tw, "  synchronous\t%s\t%s\t%d of %d\tevery side effect inline; a Stripe failure fails the signup\n",
		secs(s.Sync.P50Seconds), secs(s.Sync.P99Seconds), s.Sync.Failed, s.Signups)
	fmt.Fprintf(tw, "  event-driven\t%s\t%s\t%d of %d\twrite the user, publish %s, answer\n",
		secs(s.Evented.P50Seconds), secs(s.Evented.P99Seconds), s.Evented.Failed, s.Signups, signupapp.EventSignupCompleted)
	_ = tw.Flush()
	if s.Evented.P50Seconds > 0 {
		fmt.Fprintf(w, "  The event-driven signup answers %.0f× faster at p50.\n", s.Sync.P50Seconds/s.Evented.P50Seconds)
	}
	if s.Evented.FirstFailure != "" {
		fmt.Fprintf(w, "  First event-driven failure: %s\n", s.Evented.FirstFailure)
	}

	completedSignups := s.Signups - s.Evented.Failed
	fmt.Fprintf(w, "\nSide effects of the %d event-driven signups, done in the background by Ripple handlers (%s from the first request to the last handler)\n",
		completedSignups, secs(s.SideEffectsSeconds))
	tw = tabwriter.NewWriter(w, 0, 0, 3, ' ', 0)
	fmt.Fprintln(tw, "  handler\tlatency\tcompleted\tretried\tdead-lettered\tstill queued")
	retries := 0
	for _, h := range s.Handlers {
		q := "-"
		if h.Queued >= 0 {
			q = fmt.Sprint(h.Queued)
		}
		fmt.Fprintf(tw, "  %s\t%s\t%d/%d\t%d\t%d\t%s\n", h.Handler, secs(h.LatencySeconds), h.Completed, completedSignups, h.Retried, h.Dead, q)
		if h.Handler == signupapp.HandlerStripeCustomer {
			retries = h.Retried
		}
	}
	_ = tw.Flush()
	fmt.Fprintln(w)
	if s.AllCompleted {
		fmt.Fprintf(w, "OK: all 5 handlers completed all %d signups.", completedSignups)
		if retries > 0 {
			fmt.Fprintf(w, " Stripe failed %d times; Ripple retried each failure with backoff and no user noticed.", retries)
		}
		fmt.Fprintln(w)
		if s.Sync.Failed > 0 {
			fmt.Fprintf(w, "    Synchronously, the same kind of Stripe failure failed %d of %d signups outright.\n", s.Sync.Failed, s.Signups)
		}
	} else {
		fmt.Fprintln(w, "INCOMPLETE: not every handler completed every signup.")
		if s.WaitError != "" {
			fmt.Fprintln(w, "    "+s.WaitError)
		}
		fmt.Fprintf(w, "    Inspect with: ripple stats --url %s; ripple dlq list HANDLER --url %s%s\n", shellQuote(s.URL), shellQuote(s.URL), s.passwordNote())
	}
}

func printServing(w io.Writer, s *demoSummary, asJSON bool, stderr io.Writer) {
	if asJSON {
		w = stderr
	}
	host := strings.TrimPrefix(s.Addr, "http://")
	fmt.Fprintf(w, "\nServing on %s%s until Ctrl-C. Try:\n", s.Addr, s.everyInterface())
	fmt.Fprintf(w, "  curl -X POST %s/signup -d '{\"email\":\"you@example.com\"}'\n", host)
	fmt.Fprintf(w, "  curl -X POST %s/signup-sync -d '{\"email\":\"me@example.com\"}'\n", host)
	fmt.Fprintf(w, "  curl %s/stats\n", host)
	fmt.Fprintf(w, "  curl %s/metrics\n", host)
	if !strings.HasPrefix(s.URL, "memory://") {
		fmt.Fprintf(w, "  ripple stats --url %s%s\n", shellQuote(s.URL), s.passwordNote())
	}
}

// fmtDur prints a duration the way the summary wants it: 0.4ms, 52ms, 1.90s.
func fmtDur(d time.Duration) string {
	switch {
	case d < 10*time.Millisecond:
		return fmt.Sprintf("%.1fms", float64(d)/float64(time.Millisecond))
	case d < time.Second:
		return fmt.Sprintf("%dms", d.Round(time.Millisecond)/time.Millisecond)
	default:
		return fmt.Sprintf("%.2fs", d.Seconds())
	}
}

// shellQuote returns s as one word for a POSIX shell, quoted when it holds
// characters such as ? and & that the shell would act on.
func shellQuote(s string) string {
	safe := s != ""
	for _, r := range s {
		if !('a' <= r && r <= 'z' || 'A' <= r && r <= 'Z' || '0' <= r && r <= '9' || strings.ContainsRune("/:._-@%+,=", r)) {
			safe = false
			break
		}
	}
	if safe {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
