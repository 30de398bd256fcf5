// Command ripple-bench runs Ripple and its peers on one workload in one
// process and prints the results as a markdown table, followed by Ripple's
// performance targets, each with the ratio measured in this run.
//
//	go run ./cmd/ripple-bench                      every system, default sizes
//	go run ./cmd/ripple-bench -systems ripple-sqlite-full,sqlite-raw-full -scenarios pub1
//	go run ./cmd/ripple-bench -systems ripple-sqlite-full -scenarios e2e16 -cpuprofile cpu.out
//	go run ./cmd/ripple-bench -systems redis -redis redis://127.0.0.1:6379/0
//	go run ./cmd/ripple-bench -systems ripple-sqlite-full,ripple-sqlite-normal -scenarios growth,bounded
//
// The storage scenarios growth and bounded run only on the sqlite systems
// and only when named in -scenarios ("all" leaves them out): growth drains
// the front of a backlog of each -backlogs size and reports the ratio of
// the rates and the bytes on disk per waiting event; bounded handles
// -bounded-n events while publishers run and samples the file size, with
// the default retention and then with -short-retention.
//
// The Redis systems (ripple-redis, watermill-redis, asynq, bullmq and the
// raw XADD ceilings; the group name "redis" selects them all) share the one
// Redis server given by -redis or RIPPLE_BENCH_REDIS_URL (or
// RIPPLE_TEST_REDIS_URL); without one they are left out with a note. Use a
// server of its own, with persistence off unless that is what is measured:
// each instance deletes its keys when done, but the run loads the server.
// When ripple-redis runs, the report also gives Redis memory per event
// (-redis-memory=false leaves that out, for instance to profile one
// scenario alone).
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
	"runtime/trace"
	"slices"
	"strconv"
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
		systems    = flag.String("systems", "all", "comma-separated systems or groups to run: "+strings.Join(bench.SystemNames(), ", ")+"; groups "+strings.Join(bench.Groups, ", ")+", or all")
		redisURL   = flag.String("redis", bench.RedisURLFromEnv(), "Redis server for the Redis systems, redis://HOST:PORT/DB (default $RIPPLE_BENCH_REDIS_URL, else $RIPPLE_TEST_REDIS_URL)")
		natsURL    = flag.String("nats", bench.NATSURLFromEnv(), "NATS server (JetStream enabled) for the NATS systems, nats://HOST:PORT (default $RIPPLE_BENCH_NATS_URL, else $RIPPLE_TEST_NATS_URL)")
		amqpURL    = flag.String("amqp", bench.AMQPURLFromEnv(), "RabbitMQ broker for the amqp systems, amqp://USER:PASS@HOST:PORT/ (default $RIPPLE_BENCH_AMQP_URL, else $RIPPLE_TEST_AMQP_URL)")
		pgURL      = flag.String("postgres", bench.PostgresURLFromEnv(), "PostgreSQL server for the PostgreSQL systems, postgres://… (default $RIPPLE_BENCH_POSTGRES_URL, else $RIPPLE_TEST_POSTGRES_URL)")
		scenarios  = flag.String("scenarios", "all", "comma-separated scenarios: pub1, pub16, e2e1, e2e16, fan5, latency, or all (those six); and the sqlite storage scenarios growth, bounded, which run only when named")
		n          = flag.Int("n", 100_000, "events per throughput scenario, at most")
		maxPublish = flag.Duration("max-publish", 5*time.Second, "time cap of each publish phase")
		drain      = flag.Duration("drain", 60*time.Second, "how long to wait for handlers to finish the published events")
		rate       = flag.Int("rate", 1000, "paced publish rate of the latency scenario, events/s")
		latencyFor = flag.Duration("latency-for", 4*time.Second, "how long the latency scenario publishes")
		warmup     = flag.Int("warmup", 200, "events each fresh instance handles before measuring")
		cpuprofile = flag.String("cpuprofile", "", "write a CPU profile of the whole run to this file")
		commitLat  = flag.Bool("commit-latency", false, "before the systems, measure raw SQLite FULL commits paced like the latency scenario (-rate, -latency-for) and print their p50, p99 and stalls: the disk's share of the sqlite latency tails")
		traceFile  = flag.String("trace", "", "write an execution trace of the whole run to this file (go tool trace: where goroutines wait)")
		quiet      = flag.Bool("q", false, "do not print progress lines")
		redisMem   = flag.Bool("redis-memory", true, "when ripple-redis runs, measure its Redis memory per event after the scenarios")
		pgExtras   = flag.Bool("postgres-extras", true, "when ripple-postgres runs, also measure what PublishTx adds to a one-row transaction and, with -redis, the outbox relay rate to Redis")
		txN        = flag.Int("tx-n", 2000, "transactions of each kind in the PublishTx overhead measurement")
		relayN     = flag.Int("relay-n", 50_000, "events the outbox relay measurement moves")
		backlogs   = flag.String("backlogs", "10000,1000000", "growth: comma-separated backlog sizes, events waiting when the handler starts")
		drained    = flag.Int("drained", bench.DefaultDrained, "growth: events handled from the front of each backlog (capped at the smallest backlog)")
		rounds     = flag.Int("growth-rounds", bench.DefaultGrowthRounds, "growth: timed drains per backlog size, each after topping the backlog up again (the median is reported)")
		maxWaiting = flag.Int("bounded-max-waiting", 0, "bounded: when positive, publishers wait while this many published events are not handled yet (0: they never wait)")
		backlogPub = flag.Int("backlog-publishers", bench.DefaultBacklogPublishers, "growth: goroutines publishing the backlog (untimed)")
		boundedN   = flag.Int("bounded-n", bench.DefaultBoundedN, "bounded: events published and handled in each run")
		boundedEv  = flag.Int("bounded-every", bench.DefaultBoundedEvery, "bounded: handled events between two file size samples")
		drainProf  = flag.String("drain-cpuprofile", "", "growth: write a CPU profile of each timed drain to PREFIX-SYSTEM-BACKLOG.pprof (not with -cpuprofile)")
		shortRet   = flag.Duration("short-retention", bench.DefaultShortRetention, "bounded: DedupWindow and KeepCompleted age of the second run")
	)
	flag.Parse()
	if flag.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q; every setting is a flag (see -h)", flag.Args())
	}
	sys, notes, err := bench.Select(*systems, bench.Env{RedisURL: *redisURL, NATSURL: *natsURL, AMQPURL: *amqpURL, PostgresURL: *pgURL, InstallNode: true})
	if err != nil {
		return err
	}
	for _, n := range notes {
		fmt.Fprintln(os.Stderr, "note:", n)
	}
	scs, err := bench.ParseScenarios(*scenarios)
	if err != nil {
		return err
	}
	if *n < 1 || *rate < 1 || *warmup < 1 {
		return fmt.Errorf("-n, -rate and -warmup must be at least 1")
	}
	sizes, err := parseSizes(*backlogs)
	if err != nil {
		return err
	}
	if *rounds < 1 || *maxWaiting < 0 {
		return fmt.Errorf("-growth-rounds must be at least 1 and -bounded-max-waiting at least 0")
	}
	if *drained < 1 || *backlogPub < 1 || *boundedN < 1 || *boundedEv < 1 || *shortRet <= 0 {
		return fmt.Errorf("-drained, -backlog-publishers, -bounded-n, -bounded-every and -short-retention must be positive")
	}
	cfg := bench.Config{
		N: *n, MaxPublish: *maxPublish, Drain: *drain, Rate: *rate,
		LatencyFor: *latencyFor, Warmup: *warmup, Scenarios: scs,
		Backlogs: sizes, Drained: *drained, BacklogPublishers: *backlogPub,
		BoundedN: *boundedN, BoundedEvery: *boundedEv, ShortRetention: *shortRet,
		DrainProfile: *drainProf, GrowthRounds: *rounds, BoundedMaxWaiting: *maxWaiting,
	}
	if *drainProf != "" && *cpuprofile != "" {
		return fmt.Errorf("-drain-cpuprofile and -cpuprofile cannot be used together: the process has one CPU profile at a time")
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

	if *traceFile != "" {
		f, err := os.Create(*traceFile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := trace.Start(f); err != nil {
			return err
		}
		defer trace.Stop()
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if *commitLat {
		c, err := bench.MeasureCommitLatency(ctx, "FULL", *rate, *latencyFor)
		if err != nil {
			return fmt.Errorf("commit latency: %w", err)
		}
		fmt.Fprintf(os.Stderr, "%-22s %-8s %s\n", "sqlite-raw-full", "commits", c)
	}
	start := time.Now()
	results := bench.Run(ctx, sys, cfg)
	if ctx.Err() != nil {
		return fmt.Errorf("interrupted")
	}
	var mem *bench.RedisMemory
	var memErr error
	if *redisMem && slices.ContainsFunc(sys, func(s bench.System) bool { return s.Name == "ripple-redis" }) {
		m, err := bench.MeasureRippleRedisMemory(ctx, *redisURL, *n)
		mem, memErr = &m, err
		if !*quiet {
			fmt.Fprintf(os.Stderr, "%-22s %-8s %.0f bytes/event waiting, %.0f bytes/event handled (err %v)\n", "ripple-redis", "memory", m.WaitingPerEvent, m.HandledPerEvent, err)
		}
	}

	var pgx *bench.PostgresExtras
	if *pgExtras && slices.ContainsFunc(sys, func(s bench.System) bool { return s.Name == "ripple-postgres" }) {
		x := bench.PostgresExtras{}
		x.Tx, x.TxErr = bench.MeasureTxOverhead(ctx, *pgURL, *txN)
		if *redisURL != "" {
			x.RelayRan = true
			x.Relay, x.RelayErr = bench.MeasureOutboxRelay(ctx, *pgURL, *redisURL, *relayN)
		}
		pgx = &x
		if !*quiet {
			bench.WritePostgresExtras(os.Stderr, x)
		}
	}

	w := bufio.NewWriter(os.Stdout)
	defer w.Flush()
	fmt.Fprintf(w, "Machine: %s, %d CPUs (GOMAXPROCS %d), %s, %s/%s\n\n",
		cpuModel(), runtime.NumCPU(), runtime.GOMAXPROCS(0), runtime.Version(), runtime.GOOS, runtime.GOARCH)
	if slices.ContainsFunc(scs, func(sc bench.Scenario) bool { return slices.Contains(bench.AllScenarios, sc) }) {
		fmt.Fprintf(w, "Workload: %d-byte JSON events, one counting handler at concurrency %d; up to %d events or %v per publish phase, %d warm-up events; latency paced at %d events/s for %v. Run took %v.\n\n",
			bench.PayloadSize, bench.HandlerConcurrency, *n, *maxPublish, *warmup, *rate, *latencyFor, time.Since(start).Round(time.Second))
	} else {
		fmt.Fprintf(w, "Workload: %d-byte JSON events, one counting handler at concurrency %d. Run took %v.\n",
			bench.PayloadSize, bench.HandlerConcurrency, time.Since(start).Round(time.Second))
	}
	bench.WriteTable(w, results)
	if growth := slices.Contains(scs, bench.Growth); growth || slices.Contains(scs, bench.Bounded) {
		fmt.Fprintln(w)
		if growth {
			fmt.Fprintf(w, "Growth: for each backlog size, a fresh file; the handler subscribes, the backlog is published by %d publishers with no handler running, then, %d times, the handler starts on a fresh bus and handles the first %d events (timed from Start to the last of them counted) and the bus closes, and the backlog is topped up again.\n\n",
				*backlogPub, *rounds, min(*drained, slices.Min(sizes)))
			bench.WriteGrowth(w, results)
		}
		if slices.Contains(scs, bench.Bounded) {
			pace := "at full speed"
			if *maxWaiting > 0 {
				pace = fmt.Sprintf("waiting while %d published events are not handled yet", *maxWaiting)
			}
			fmt.Fprintf(w, "\nBounded: %d events published by 16 publishers %s to one running handler; file sizes every %d handled events.\n",
				*boundedN, pace, min(*boundedEv, *boundedN))
			bench.WriteBounded(w, results)
		}
	}
	fmt.Fprintln(w)
	bench.WriteSetup(w, results)
	for _, n := range notes {
		fmt.Fprintf(w, "- note: %s\n", n)
	}
	if mem != nil {
		fmt.Fprintln(w, "\nRedis memory, ripple-redis (INFO memory used_memory before and after, divided by the events):")
		fmt.Fprintln(w)
		if memErr != nil {
			fmt.Fprintf(w, "- error: %v\n", memErr)
		} else {
			bench.WriteRedisMemory(w, *mem)
		}
	}
	if pgx != nil {
		fmt.Fprintln(w, "\nPostgreSQL transactions and outbox:")
		fmt.Fprintln(w)
		bench.WritePostgresExtras(w, *pgx)
	}
	vs := bench.Check(results)
	if pgx != nil {
		vs = append(vs, bench.CheckPostgresExtras(*pgx)...)
	}
	if len(vs) > 0 {
		fmt.Fprintln(w)
		bench.WriteVerdicts(w, vs)
	}
	return nil
}

// parseSizes parses a comma-separated list of positive event counts.
func parseSizes(list string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(list, ",") {
		v, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || v < 1 {
			return nil, fmt.Errorf("-backlogs %q: each size must be a positive number of events, such as 10000,1000000", list)
		}
		out = append(out, v)
	}
	return out, nil
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
