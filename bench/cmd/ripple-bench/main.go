// Command ripple-bench runs Ripple and its peers on one workload in one
// process and prints the results as a markdown table, followed by Ripple's
// performance targets, each with the ratio measured in this run.
//
//	go run ./cmd/ripple-bench                      every system, default sizes
//	go run ./cmd/ripple-bench -systems ripple-sqlite-full,sqlite-raw-full -scenarios pub1
//	go run ./cmd/ripple-bench -systems ripple-sqlite-full -scenarios e2e16 -cpuprofile cpu.out
//
// Progress lines go to standard error; the report goes to standard output.
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"runtime"
	"runtime/pprof"
	"strings"
	"time"

	"github.com/ripplehq/ripple/bench"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "ripple-bench:", err)
		os.Exit(1)
	}
}

func run() error {
	var (
		systems    = flag.String("systems", "all", "comma-separated systems to run: "+strings.Join(bench.SystemNames(), ", ")+", or all")
		scenarios  = flag.String("scenarios", "all", "comma-separated scenarios: pub1, pub16, e2e1, e2e16, fan5, latency, or all")
		n          = flag.Int("n", 100_000, "events per throughput scenario, at most")
		maxPublish = flag.Duration("max-publish", 5*time.Second, "time cap of each publish phase")
		drain      = flag.Duration("drain", 60*time.Second, "how long to wait for handlers to finish the published events")
		rate       = flag.Int("rate", 1000, "paced publish rate of the latency scenario, events/s")
		latencyFor = flag.Duration("latency-for", 4*time.Second, "how long the latency scenario publishes")
		warmup     = flag.Int("warmup", 200, "events each fresh instance handles before measuring")
		cpuprofile = flag.String("cpuprofile", "", "write a CPU profile of the whole run to this file")
		quiet      = flag.Bool("q", false, "do not print progress lines")
	)
	flag.Parse()
	if flag.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q; every setting is a flag (see -h)", flag.Args())
	}
	sys, err := bench.Select(*systems)
	if err != nil {
		return err
	}
	scs, err := bench.ParseScenarios(*scenarios)
	if err != nil {
		return err
	}
	if *n < 1 || *rate < 1 || *warmup < 1 {
		return fmt.Errorf("-n, -rate and -warmup must be at least 1")
	}
	cfg := bench.Config{
		N: *n, MaxPublish: *maxPublish, Drain: *drain, Rate: *rate,
		LatencyFor: *latencyFor, Warmup: *warmup, Scenarios: scs,
	}
	if !*quiet {
		cfg.Progress = os.Stderr
	}

	if *cpuprofile != "" {
		f, err := os.Create(*cpuprofile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	start := time.Now()
	results := bench.Run(ctx, sys, cfg)
	if ctx.Err() != nil {
		return fmt.Errorf("interrupted")
	}

	w := bufio.NewWriter(os.Stdout)
	defer w.Flush()
	fmt.Fprintf(w, "Machine: %s, %d CPUs (GOMAXPROCS %d), %s, %s/%s\n\n",
		cpuModel(), runtime.NumCPU(), runtime.GOMAXPROCS(0), runtime.Version(), runtime.GOOS, runtime.GOARCH)
	fmt.Fprintf(w, "Workload: %d-byte JSON events, one counting handler at concurrency %d; up to %d events or %v per publish phase, %d warm-up events; latency paced at %d events/s for %v. Run took %v.\n\n",
		bench.PayloadSize, bench.HandlerConcurrency, *n, *maxPublish, *warmup, *rate, *latencyFor, time.Since(start).Round(time.Second))
	bench.WriteTable(w, results)
	fmt.Fprintln(w)
	bench.WriteSetup(w, results)
	if vs := bench.Check(results); len(vs) > 0 {
		fmt.Fprintln(w)
		bench.WriteVerdicts(w, vs)
	}
	return nil
}

// cpuModel reads the processor's name from /proc/cpuinfo where there is one.
func cpuModel() string {
	data, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return "unknown CPU"
	}
	for _, line := range strings.Split(string(data), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return "unknown CPU"
}
