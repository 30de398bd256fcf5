package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"time"
)

// bullmqDir returns the directory of the Node.js script, bench/bullmq,
// found from this source file so that it works from any working directory.
func bullmqDir() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "bullmq")
}

// BullMQ is the Node.js queue BullMQ, run by bench/bullmq/run.js in a
// separate node process per scenario, which measures the scenario itself
// with the same workload: Queue.add awaited per event (16 concurrent add
// loops for 16 publishers), a Worker at concurrency 10 that counts, and
// latency from the moment an event is handed to the publishers to the
// Worker's processor. Completed jobs are kept by count (1,000), like
// Ripple's default retention.
//
// It needs node and the script's node_modules. When they are missing and
// install is true, it runs `npm ci` in bench/bullmq; it returns an error
// saying what is missing when it cannot run.
func BullMQ(url string, install bool) (System, error) {
	dir := bullmqDir()
	node, err := exec.LookPath("node")
	if err != nil {
		return System{}, errors.New("node is not installed (BullMQ runs in Node.js)")
	}
	if _, err := os.Stat(filepath.Join(dir, "node_modules", "bullmq")); err != nil {
		if !install {
			return System{}, fmt.Errorf("its Node.js packages are not installed; run `npm ci` in %s", dir)
		}
		if err := npmCI(dir); err != nil {
			return System{}, err
		}
	}
	return System{
		Name:     "bullmq",
		Group:    "redis",
		Consumes: true,
		Notes:    "BullMQ (Node.js " + nodeVersion(node) + "), Queue.add awaited per event, Worker concurrency 10, removeOnComplete 1,000; measured inside the node process",
		Measure: func(ctx context.Context, sc Scenario, cfg Config) Measurement {
			return runBullMQ(ctx, node, dir, url, sc, cfg)
		},
	}, nil
}

func npmCI(dir string) error {
	npm, err := exec.LookPath("npm")
	if err != nil {
		return fmt.Errorf("its Node.js packages are not installed and npm is not available to install them (npm ci in %s)", dir)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, npm, "ci", "--no-audit", "--no-fund")
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("npm ci in %s failed: %v: %s", dir, err, bytes.TrimSpace(out))
	}
	return nil
}

func nodeVersion(node string) string {
	out, err := exec.Command(node, "--version").Output()
	if err != nil {
		return "unknown version"
	}
	return string(bytes.TrimSpace(out))
}

// bullmqResult is the JSON line run.js prints.
type bullmqResult struct {
	Events    int64  `json:"events"`
	ElapsedNS int64  `json:"elapsed_ns"`
	P50NS     int64  `json:"p50_ns"`
	P99NS     int64  `json:"p99_ns"`
	Note      string `json:"note"`
	Error     string `json:"error"`
}

func runBullMQ(ctx context.Context, node, dir, url string, sc Scenario, cfg Config) Measurement {
	if sc == Fan5 {
		return Measurement{Err: errors.New("BullMQ workers on one queue compete; it cannot fan out")}
	}
	ms := func(d time.Duration) string { return strconv.FormatInt(d.Milliseconds(), 10) }
	args := []string{filepath.Join(dir, "run.js"),
		"--scenario", string(sc), "--n", strconv.Itoa(cfg.N), "--redis", url,
		"--max-publish-ms", ms(cfg.MaxPublish), "--drain-ms", ms(cfg.Drain),
		"--warmup", strconv.Itoa(cfg.Warmup), "--publishers", strconv.Itoa(cfg.Publishers),
		"--rate", strconv.Itoa(cfg.Rate), "--latency-ms", ms(cfg.LatencyFor),
	}
	// The process gets its own deadline: publish cap, drain and latency
	// phase, plus start-up and cleanup.
	limit := cfg.MaxPublish + 2*cfg.Drain + cfg.LatencyFor + time.Minute
	cctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	cmd := exec.CommandContext(cctx, node, args...)
	cmd.Dir = dir
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	runErr := cmd.Run()

	// The result is the last line of stdout.
	lines := bytes.Split(bytes.TrimSpace(stdout.Bytes()), []byte("\n"))
	var r bullmqResult
	if err := json.Unmarshal(lines[len(lines)-1], &r); err != nil {
		return Measurement{Err: fmt.Errorf("node run.js: %v; no result line (stdout %q, stderr %q)", runErr, stdout.Bytes(), bytes.TrimSpace(stderr.Bytes()))}
	}
	if r.Error != "" {
		return Measurement{Err: fmt.Errorf("node run.js: %s", r.Error)}
	}
	if runErr != nil {
		return Measurement{Err: fmt.Errorf("node run.js: %w (stderr %q)", runErr, bytes.TrimSpace(stderr.Bytes()))}
	}
	m := throughput(r.Events, time.Duration(r.ElapsedNS), nil)
	if sc == Latency {
		m.PerSec = float64(cfg.Rate) * cfg.LatencyFor.Seconds() / max(m.Elapsed.Seconds(), 1e-9)
		m.P50, m.P99 = time.Duration(r.P50NS), time.Duration(r.P99NS)
	}
	m.Note = r.Note
	return m
}
