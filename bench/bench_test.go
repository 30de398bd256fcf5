package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"
)

func TestPayload(t *testing.T) {
	sent := time.Unix(1_700_000_000, 123_456_789)
	for _, seq := range []int64{0, 7, 1 << 40} {
		p := NewPayload(seq, sent)
		if len(p) != PayloadSize {
			t.Fatalf("payload %d has %d bytes, want %d: %s", seq, len(p), PayloadSize, p)
		}
		var v struct{ Seq, Sent, Pad string }
		if err := json.Unmarshal(p, &v); err != nil {
			t.Fatalf("payload is not JSON: %v: %s", err, p)
		}
		got, ok := SentTime(p)
		if !ok || !got.Equal(sent) {
			t.Fatalf("SentTime = %v, %v; want %v", got, ok, sent)
		}
		// Systems that wrap the payload in an envelope still yield it.
		wrapped := append(append([]byte(`{"event":`), p...), '}')
		if got, ok := SentTime(wrapped); !ok || !got.Equal(sent) {
			t.Fatalf("SentTime(wrapped) = %v, %v; want %v", got, ok, sent)
		}
		// PostgreSQL's jsonb writes a space after each colon.
		spaced := bytes.ReplaceAll(p, []byte(`":"`), []byte(`": "`))
		if got, ok := SentTime(spaced); !ok || !got.Equal(sent) {
			t.Fatalf("SentTime(jsonb) = %v, %v; want %v: %s", got, ok, sent, spaced)
		}
	}
	if _, ok := SentTime([]byte(`{"x":1}`)); ok {
		t.Fatal("SentTime found a time in a payload without one")
	}
}

func TestSinkWait(t *testing.T) {
	k := &sink{done: make(chan struct{}, 1)}
	go func() {
		for range 50 {
			k.handle(nil)
		}
	}()
	if !k.wait(50, 5*time.Second) {
		t.Fatalf("wait(50) timed out with %d handled", k.handled.Load())
	}
	start := time.Now()
	if k.wait(51, 50*time.Millisecond) {
		t.Fatal("wait(51) returned true with 50 handled")
	}
	if time.Since(start) < 50*time.Millisecond {
		t.Fatal("wait(51) returned before its timeout")
	}
}

func TestPercentile(t *testing.T) {
	var d []time.Duration
	for i := 1; i <= 100; i++ {
		d = append(d, time.Duration(i))
	}
	if p := percentile(d, 50); p != 50 {
		t.Fatalf("p50 = %d, want 50", p)
	}
	if p := percentile(d, 99); p != 99 {
		t.Fatalf("p99 = %d, want 99", p)
	}
	if p := percentile(d[:1], 99); p != 1 {
		t.Fatalf("p99 of one = %d, want 1", p)
	}
}

func TestCount(t *testing.T) {
	for v, want := range map[float64]string{0: "0", 999: "999", 1000: "1,000", 1234567.4: "1,234,567"} {
		if got := count(v); got != want {
			t.Errorf("count(%v) = %q, want %q", v, got, want)
		}
	}
}

func TestSelect(t *testing.T) {
	base, _ := Systems(Env{})
	all, notes, err := Select("all", Env{})
	if err != nil || len(all) != len(base) {
		t.Fatalf("Select(all) = %d systems, %v", len(all), err)
	}
	if !slices.ContainsFunc(notes, func(n string) bool { return strings.Contains(n, "RIPPLE_BENCH_REDIS_URL") }) ||
		!slices.ContainsFunc(notes, func(n string) bool { return strings.Contains(n, "RIPPLE_BENCH_NATS_URL") }) ||
		!slices.ContainsFunc(notes, func(n string) bool { return strings.Contains(n, "RIPPLE_BENCH_AMQP_URL") }) {
		t.Fatalf("Select(all) without servers: notes %q, want one naming each of RIPPLE_BENCH_REDIS_URL, RIPPLE_BENCH_NATS_URL and RIPPLE_BENCH_AMQP_URL", notes)
	}
	two, _, err := Select("ripple-memory, goqite", Env{})
	if err != nil || len(two) != 2 || two[1].Name != "goqite" {
		t.Fatalf("Select(two) = %v, %v", two, err)
	}
	if _, _, err := Select("no-such-system", Env{}); err == nil || !strings.Contains(err.Error(), "ripple-memory") {
		t.Fatalf("Select(no-such-system) error = %v, want one listing the known systems", err)
	}
	if k, _, err := Select("kafka", Env{}); err != nil || len(k) != 4 || !slices.ContainsFunc(k, func(s System) bool { return s.Name == "watermill-kafka" }) {
		t.Fatalf("Select(kafka) = %d systems, %v; want ripple-kafka, the two raw producers and watermill-kafka", len(k), err)
	}
	for _, n := range []string{"redis", "asynq", "ripple-memory,ripple-redis"} {
		if _, _, err := Select(n, Env{}); err == nil || !strings.Contains(err.Error(), "-redis") {
			t.Errorf("Select(%q) without Redis: error %v, want one saying to pass -redis", n, err)
		}
	}
	env := Env{RedisURL: "redis://127.0.0.1:1/0"}
	redis, notes, err := Select("redis", env)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, s := range redis {
		names = append(names, s.Name)
	}
	for _, n := range notes {
		names = append(names, strings.Fields(n)[0])
	}
	// BullMQ is a system where node is installed and a note where not.
	slices.Sort(names)
	if want := slices.Sorted(slices.Values(redisSystemNames)); !slices.Equal(names, want) {
		t.Errorf("Select(redis) = %v (notes %q), want %v", names, notes, redisSystemNames)
	}
	withRedis, _, err := Select("all", env)
	if err != nil || len(withRedis) != len(base)+len(redis) {
		t.Errorf("Select(all) with Redis = %d systems, %v; want %d", len(withRedis), err, len(base)+len(redis))
	}
	if _, err := ParseScenarios("pub1,nope"); err == nil {
		t.Fatal("ParseScenarios accepted an unknown scenario")
	}
}

// shortConfig sizes the tiny runs of the tests below.
var shortConfig = Config{
	N:          200,
	MaxPublish: time.Minute, // the tests check that all N events went through
	Drain:      time.Minute,
	Rate:       500,
	LatencyFor: 300 * time.Millisecond,
	Warmup:     20,
}

// TestAllSystemsShort runs a tiny version of every scenario on every
// system that needs no server, so that a broken adapter or a peer's changed
// API fails the build rather than the next full benchmark.
func TestAllSystemsShort(t *testing.T) {
	systems, _ := Systems(Env{})
	checkShortRun(t, systems)
}

// TestRedisSystemsShort does the same for the Redis systems, against the
// server in RIPPLE_TEST_REDIS_URL (or RIPPLE_BENCH_REDIS_URL), and checks
// that they leave no keys behind.
func TestRedisSystemsShort(t *testing.T) {
	url := RedisURLFromEnv()
	if url == "" {
		if os.Getenv("RIPPLE_TEST_REQUIRE_SERVERS") == "1" {
			t.Fatal("RIPPLE_TEST_REDIS_URL is not set but RIPPLE_TEST_REQUIRE_SERVERS=1: start redis-server (scripts/test does) and export RIPPLE_TEST_REDIS_URL=redis://127.0.0.1:PORT/0")
		}
		t.Skip("no Redis server: set RIPPLE_TEST_REDIS_URL=redis://127.0.0.1:6379/0 to run the Redis systems")
	}
	ctx := context.Background()
	c, err := newRedisClient(ctx, url, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	before := benchKeys(t, c)

	systems, notes := RedisSystems(Env{RedisURL: url})
	for _, n := range notes {
		t.Log("note:", n)
	}
	checkShortRun(t, systems)

	mem, err := MeasureRippleRedisMemory(ctx, url, 500)
	if err != nil {
		t.Fatalf("MeasureRippleRedisMemory: %v", err)
	}
	if mem.WaitingPerEvent < PayloadSize || mem.HandledPerEvent <= 0 || mem.StreamLen > 500 || mem.Keys == 0 {
		t.Errorf("memory %+v: want at least the payload's %d bytes per waiting event, and something retained", mem, PayloadSize)
	}
	var b bytes.Buffer
	WriteRedisMemory(&b, mem)
	t.Logf("\n%s", b.String())

	for k := range benchKeys(t, c) {
		if !before[k] {
			t.Errorf("key %q left behind", k)
		}
	}
}

// benchKeys returns the keys the benchmark's Redis systems write.
func benchKeys(t *testing.T, c *goredis.Client) map[string]bool {
	t.Helper()
	keys := map[string]bool{}
	for _, pattern := range []string{"bench-*", "asynq:{bench-*"} {
		iter := c.Scan(context.Background(), 0, pattern, 1000).Iterator()
		for iter.Next(context.Background()) {
			keys[iter.Val()] = true
		}
		if err := iter.Err(); err != nil {
			t.Fatal(err)
		}
	}
	return keys
}

func checkShortRun(t *testing.T, systems []System) {
	t.Helper()
	results := Run(context.Background(), systems, shortConfig)
	if len(results) != len(systems) {
		t.Fatalf("got %d results for %d systems", len(results), len(systems))
	}
	for _, r := range results {
		for _, sc := range AllScenarios {
			m, ok := r.By[sc]
			if !Applies(r.System, sc) {
				if ok {
					t.Errorf("%s %s: measured a scenario that does not apply", r.System.Name, sc)
				}
				continue
			}
			switch {
			case !ok:
				t.Errorf("%s %s: not measured", r.System.Name, sc)
			case m.Err != nil:
				t.Errorf("%s %s: %v", r.System.Name, sc, m.Err)
			case sc == Latency && (m.Events != 150 || m.P99 <= 0 || m.P50 > m.P99):
				t.Errorf("%s %s: %d events, p50 %v, p99 %v; want all 150 events with p50 ≤ p99", r.System.Name, sc, m.Events, m.P50, m.P99)
			case sc != Latency && (m.Events != 200 || m.PerSec <= 0):
				t.Errorf("%s %s: %d events at %.0f/s; want all 200", r.System.Name, sc, m.Events, m.PerSec)
			case sc == Fan5 && m.Deliveries != 5*m.Events:
				t.Errorf("%s %s: %d deliveries of %d events; want five per event", r.System.Name, sc, m.Deliveries, m.Events)
			case strings.HasPrefix(m.Note, "drain timed out"):
				t.Errorf("%s %s: %s", r.System.Name, sc, m.Note)
			}
		}
	}

	var table bytes.Buffer
	WriteTable(&table, results)
	for _, s := range systems {
		if !strings.Contains(table.String(), "| "+s.Name+" |") {
			t.Errorf("table has no row for %s:\n%s", s.Name, table.String())
		}
	}
	if strings.Contains(table.String(), "error") {
		t.Errorf("table reports errors:\n%s", table.String())
	}
	vs := Check(results)
	if len(vs) == 0 {
		t.Error("Check found no target to evaluate")
	}
	var verdicts bytes.Buffer
	WriteVerdicts(&verdicts, vs)
	t.Logf("\n%s\n%s", table.String(), verdicts.String())
}

func TestFanOutRefused(t *testing.T) {
	for _, s := range []System{RiverSQLite(), Goqite(), Asynq("redis://127.0.0.1:1/0")} {
		if _, err := s.Open(context.Background(), t.TempDir(), 5, func([]byte) {}); err == nil {
			t.Errorf("%s: Open with 5 handlers succeeded; it cannot fan out", s.Name)
		}
	}
}

// TestCheckSetsPeerMultiplesBesideTheRawCeiling checks that a peer
// multiple's verdict states the rate it asks for against the fastest
// one-publisher raw XADD of the run.
func TestCheckSetsPeerMultiplesBesideTheRawCeiling(t *testing.T) {
	res := func(name string, sc Scenario, perSec float64) Result {
		return Result{System: System{Name: name}, By: map[Scenario]Measurement{sc: {PerSec: perSec}}}
	}
	vs := Check([]Result{
		res("ripple-redis", E2E1, 24_000),
		res("bullmq", E2E1, 6_000),
		res("redis-raw-xadd-awaited", Pub1, 14_000),
		res("redis-raw-xadd-pipelined", Pub1, 28_000),
	})
	var got string
	for _, v := range vs {
		if strings.HasSuffix(v.Target, "6× bullmq") {
			got = v.Measured
		}
	}
	want := "ripple-redis e2e1 / bullmq e2e1 = 24,000 / 6,000 = 4.00×; the target asks 36,000/s, 1.29× the fastest one-publisher raw XADD (redis-raw-xadd-pipelined pub1, 28,000/s)"
	if got != want {
		t.Errorf("verdict for 6× bullmq:\n got %q\nwant %q", got, want)
	}
}

// TestNATSSystemsShort runs a tiny version of every scenario on the NATS
// systems, against the server in RIPPLE_TEST_NATS_URL (or
// RIPPLE_BENCH_NATS_URL).
func TestNATSSystemsShort(t *testing.T) {
	url := NATSURLFromEnv()
	if url == "" {
		if os.Getenv("RIPPLE_TEST_REQUIRE_SERVERS") == "1" {
			t.Fatal("RIPPLE_TEST_NATS_URL is not set but RIPPLE_TEST_REQUIRE_SERVERS=1: start nats-server -js (scripts/test does) and export RIPPLE_TEST_NATS_URL=nats://127.0.0.1:PORT")
		}
		t.Skip("no NATS server: set RIPPLE_TEST_NATS_URL=nats://127.0.0.1:4222 (nats-server -js) to run the NATS systems")
	}
	checkShortRun(t, NATSSystems(url))
}

// TestAMQPSystemsShort runs a tiny version of every scenario on the
// RabbitMQ systems, against the broker in RIPPLE_TEST_AMQP_URL (or
// RIPPLE_BENCH_AMQP_URL), checks that the RabbitMQ targets are evaluated
// (watermill-amqp among them), and that Watermill's queue config refuses
// to fan out.
func TestAMQPSystemsShort(t *testing.T) {
	url := AMQPURLFromEnv()
	if url == "" {
		if os.Getenv("RIPPLE_TEST_REQUIRE_SERVERS") == "1" {
			t.Fatal("RIPPLE_TEST_AMQP_URL is not set but RIPPLE_TEST_REQUIRE_SERVERS=1: start rabbitmq-server (scripts/test does) and export RIPPLE_TEST_AMQP_URL=amqp://guest:guest@127.0.0.1:PORT/")
		}
		t.Skip("no RabbitMQ broker: set RIPPLE_TEST_AMQP_URL=amqp://guest:guest@127.0.0.1:5672/ to run the RabbitMQ systems")
	}
	systems := AMQPSystems(url)
	if !slices.ContainsFunc(systems, func(s System) bool { return s.Name == "watermill-amqp" && s.Group == "amqp" }) {
		t.Fatal("AMQPSystems has no watermill-amqp in the amqp group")
	}
	if _, err := WatermillAMQP(url).Open(context.Background(), t.TempDir(), 5, func([]byte) {}); err == nil {
		t.Error("watermill-amqp: Open with 5 handlers succeeded; a queue config cannot fan out")
	}
	checkShortRun(t, systems)

	results := Run(context.Background(), []System{AMQPSystems(url)[0], WatermillAMQP(url)}, Config{
		N: 50, MaxPublish: time.Minute, Drain: time.Minute, Warmup: 10, Scenarios: []Scenario{E2E1},
	})
	var found bool
	for _, v := range Check(results) {
		if strings.Contains(v.Target, "2× watermill-amqp (ripple-amqp)") && strings.Contains(v.Measured, "watermill-amqp e2e1") {
			found = true
		}
	}
	if !found {
		t.Errorf("Check has no verdict of ripple-amqp against watermill-amqp: %+v", Check(results))
	}
}

// TestCheckFanOutOnMemory checks the memory fan-out verdicts: deliveries
// against GoChannel's five subscribers, and five handlers' cost against
// one.
func TestCheckFanOutOnMemory(t *testing.T) {
	results := []Result{
		{System: System{Name: "ripple-memory"}, By: map[Scenario]Measurement{
			E2E16: {PerSec: 200_000},
			Fan5:  {PerSec: 50_000, DeliveriesPerSec: 250_000},
		}},
		{System: System{Name: "watermill-gochannel"}, By: map[Scenario]Measurement{
			Fan5: {PerSec: 60_000, DeliveriesPerSec: 300_000},
		}},
	}
	var deliveries, cost *Verdict
	vs := Check(results)
	for i, v := range vs {
		switch {
		case strings.Contains(v.Target, "deliveries/s ≥ Watermill GoChannel"):
			deliveries = &vs[i]
		case strings.Contains(v.Target, "≤ 5× one handler"):
			cost = &vs[i]
		}
	}
	if deliveries == nil || cost == nil {
		t.Fatalf("Check has no memory fan-out verdicts: %+v", vs)
	}
	if deliveries.Pass || !strings.Contains(deliveries.Measured, "0.83×") {
		t.Errorf("deliveries verdict %+v: want a miss at 0.83×", *deliveries)
	}
	if !cost.Pass || !strings.Contains(cost.Measured, "4.00×") {
		t.Errorf("cost verdict %+v: want a pass at 4.00×", *cost)
	}
}

// TestStorageScenariosShort runs the growth and bounded scenarios with tiny
// sizes on ripple-sqlite-full and checks that every number they report is
// present and sane.
func TestStorageScenariosShort(t *testing.T) {
	systems, _, err := Select("ripple-sqlite-full", Env{})
	if err != nil {
		t.Fatal(err)
	}
	if !Applies(systems[0], Growth) || !Applies(systems[0], Bounded) {
		t.Fatal("the storage scenarios do not apply to ripple-sqlite-full")
	}
	all, _ := Systems(Env{})
	var storage []string
	for _, s := range all {
		if Applies(s, Growth) || Applies(s, Bounded) {
			storage = append(storage, s.Name)
		}
	}
	if want := []string{"ripple-sqlite-full", "ripple-sqlite-normal"}; !slices.Equal(storage, want) {
		t.Fatalf("the storage scenarios apply to %v, want %v", storage, want)
	}
	cfg := Config{
		Scenarios: []Scenario{Growth, Bounded},
		Backlogs:  []int{2000, 200}, Drained: 1000, BacklogPublishers: 8,
		BoundedN: 2000, BoundedEvery: 200, ShortRetention: time.Second,
		GrowthRounds: 2, BoundedMaxWaiting: 100,
	}
	res := Run(context.Background(), systems, cfg)
	if len(res) != 1 {
		t.Fatalf("Run returned %d results, want 1", len(res))
	}

	g, ok := res[0].Get(Growth)
	if !ok {
		t.Fatalf("growth: %+v", res[0].By[Growth])
	}
	if g.Growth == nil || len(g.Growth.Points) != 2 {
		t.Fatalf("growth: %+v, want two backlog sizes", g.Growth)
	}
	for i, p := range g.Growth.Points {
		// Sizes are sorted, and every size handles the same count, capped
		// at the smallest backlog.
		if want := []int{200, 2000}[i]; p.Backlog != want {
			t.Errorf("point %d: backlog %d, want %d", i, p.Backlog, want)
		}
		if p.Handled != 200 || p.PerSec <= 0 || p.Publish <= 0 || len(p.Rounds) != 2 {
			t.Errorf("point %d: %+v; want 200 handled in each of 2 rounds at a positive rate", i, p)
		}
		for j, r := range p.Rounds {
			if r.Handled != 200 || r.Elapsed <= 0 || r.PerSec <= 0 {
				t.Errorf("point %d round %d: %+v", i, j, r)
			}
		}
		if p.Files.DB <= 0 || p.BytesPerEvent <= 0 {
			t.Errorf("point %d: files %+v, %.0f bytes per event; want positive sizes", i, p.Files, p.BytesPerEvent)
		}
	}
	if g.Growth.Ratio <= 0 {
		t.Errorf("growth ratio %v, want > 0", g.Growth.Ratio)
	}

	b, ok := res[0].Get(Bounded)
	if !ok {
		t.Fatalf("bounded: %+v", res[0].By[Bounded])
	}
	if b.Bounded == nil || len(b.Bounded.Runs) != 2 {
		t.Fatalf("bounded: %+v, want a run with the default retention and one with a short retention", b.Bounded)
	}
	for i, r := range b.Bounded.Runs {
		if r.Events != 2000 || r.Note != "" || r.PerSec <= 0 {
			t.Errorf("run %d (%s): %d events, %.0f/s, note %q; want 2000 handled", i, r.Retention, r.Events, r.PerSec, r.Note)
		}
		if len(r.Samples) != 10 {
			t.Errorf("run %d (%s): %d samples, want one every 200 of 2000 handled events", i, r.Retention, len(r.Samples))
		}
		for j, s := range r.Samples {
			if s.Handled != int64(200*(j+1)) || s.Published < s.Handled || s.Files.DB <= 0 {
				t.Errorf("run %d sample %d: %+v", i, j, s)
			}
		}
		// Publishers wait while 100 events are not handled; each of the
		// 16 may have passed the check before the others' publishes count.
		if r.MaxWaiting != 100 || r.PeakWaiting <= 0 || r.PeakWaiting > 100+16 {
			t.Errorf("run %d (%s): at most %d waited (limit %d), want 1 to 116", i, r.Retention, r.PeakWaiting, r.MaxWaiting)
		}
		if r.Final.Total() <= 0 || r.Max < r.Final.Total() || r.BytesPerEvent <= 0 || r.Closed.DB <= 0 {
			t.Errorf("run %d (%s): final %+v, max %d, closed %+v, %.0f bytes/event; want positive sizes and max ≥ final", i, r.Retention, r.Final, r.Max, r.Closed, r.BytesPerEvent)
		}
	}
	if !strings.Contains(b.Bounded.Runs[1].Retention, "DedupWindow(1s)") {
		t.Errorf("second run's retention %q, want the short window", b.Bounded.Runs[1].Retention)
	}

	var out bytes.Buffer
	WriteGrowth(&out, res)
	WriteBounded(&out, res)
	WriteTable(&out, res)
	for _, want := range []string{"| ripple-sqlite-full | 2,000 |", "bytes on disk per waiting event", "| 2,000 |", "KeepCompleted(1000, 1s)", "publishers waited at 100"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("report lacks %q:\n%s", want, out.String())
		}
	}
	if strings.Contains(out.String(), "publish, 1 publisher") {
		t.Errorf("the scenario table is written for a run of the storage scenarios alone:\n%s", out.String())
	}
	vs := checkStorage(res)
	if len(vs) != 3 {
		t.Errorf("checkStorage gave %d verdicts, want one on growth and one per bounded run: %+v", len(vs), vs)
	}
}

func TestParseStorageScenarios(t *testing.T) {
	all, err := ParseScenarios("all")
	if err != nil || slices.Contains(all, Growth) || slices.Contains(all, Bounded) {
		t.Fatalf("ParseScenarios(all) = %v, %v; want the six comparison scenarios only", all, err)
	}
	got, err := ParseScenarios("growth, bounded")
	if err != nil || !slices.Equal(got, []Scenario{Growth, Bounded}) {
		t.Fatalf("ParseScenarios(growth, bounded) = %v, %v", got, err)
	}
}
