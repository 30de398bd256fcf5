package bench

import (
	"bytes"
	"context"
	"os"
	"strings"
	"testing"
	"time"
)

func postgresURLOrSkip(t *testing.T) string {
	t.Helper()
	url := PostgresURLFromEnv()
	if url == "" {
		if os.Getenv("RIPPLE_TEST_REQUIRE_SERVERS") == "1" {
			t.Fatal("RIPPLE_TEST_POSTGRES_URL is not set but RIPPLE_TEST_REQUIRE_SERVERS=1: start PostgreSQL (scripts/test does) and export RIPPLE_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:PORT/postgres?sslmode=disable")
		}
		t.Skip("no PostgreSQL server: set RIPPLE_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable to run the PostgreSQL systems")
	}
	return url
}

// TestPostgresSystemsShort runs a tiny version of every scenario on the
// PostgreSQL systems (ripple-postgres, River, Watermill SQL and the two
// raw ceilings) and checks that every PostgreSQL target is evaluated.
func TestPostgresSystemsShort(t *testing.T) {
	url := postgresURLOrSkip(t)
	systems := PostgresSystems(url)
	for _, name := range postgresSystemNames {
		found := false
		for _, s := range systems {
			if s.Name == name && s.Group == "postgres" {
				found = true
			}
		}
		if !found {
			t.Errorf("PostgresSystems has no %s in the postgres group", name)
		}
	}
	if _, err := RiverPostgres(url).Open(context.Background(), t.TempDir(), 5, func([]byte) {}); err == nil {
		t.Error("river-postgres: Open with 5 handlers succeeded; a job goes to one worker")
	}
	checkShortRun(t, systems)

	results := Run(context.Background(), systems, Config{N: 150, Warmup: 10, Rate: 100, LatencyFor: 500 * time.Millisecond})
	var targets []string
	for _, v := range Check(results) {
		if strings.HasPrefix(v.Target, "Postgres:") {
			targets = append(targets, v.Target)
		}
	}
	for _, want := range []string{"raw single-row INSERT", "COPY-100", "10× river-postgres", "10× watermill-sql-postgres", "p99"} {
		if !strings.Contains(strings.Join(targets, "\n"), want) {
			t.Errorf("no Postgres verdict mentions %q; got %q", want, targets)
		}
	}
}

// TestCopyPostgresWritesEveryRow checks that the COPY-100 ceiling writes
// full batches while publishing and the rest when it closes.
func TestCopyPostgresWritesEveryRow(t *testing.T) {
	url := postgresURLOrSkip(t)
	ctx := context.Background()
	inst, err := CopyPostgres(url).Open(ctx, t.TempDir(), 1, nil)
	if err != nil {
		t.Fatal(err)
	}
	c := inst.(*copyPG)
	for i := range 250 {
		if err := c.Publish(ctx, NewPayload(int64(i), time.Now())); err != nil {
			t.Fatal(err)
		}
	}
	if n, err := c.Rows(ctx); err != nil || n != 200 {
		t.Errorf("after 250 publishes the table holds %d rows (err %v); want the two full batches, 200", n, err)
	}
	c.mu.Lock()
	left := len(c.rows)
	c.mu.Unlock()
	if left != 50 {
		t.Errorf("%d rows wait for the next batch; want 50", left)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestPostgresExtrasShort measures the PublishTx overhead and, with a
// Redis server, the outbox relay, on tiny sizes, and checks their verdicts.
func TestPostgresExtrasShort(t *testing.T) {
	url := postgresURLOrSkip(t)
	ctx := context.Background()
	var x PostgresExtras
	x.Tx, x.TxErr = MeasureTxOverhead(ctx, url, 40)
	if x.TxErr != nil {
		t.Fatal(x.TxErr)
	}
	if x.Tx.Plain.Events != 80 || x.Tx.Queued.Events != 40 || x.Tx.WithPublish.Events != 40 ||
		x.Tx.Plain.PerSec <= 0 || x.Tx.Queued.PerSec <= 0 || x.Tx.WithPublish.PerSec <= 0 {
		t.Errorf("tx overhead: %+v; want 80 plain transactions, 40 with the handler stopped and 40 with it running, at positive rates", x.Tx)
	}
	if redis := RedisURLFromEnv(); redis != "" {
		x.RelayRan = true
		x.Relay, x.RelayErr = MeasureOutboxRelay(ctx, url, redis, 300)
		if x.RelayErr != nil {
			t.Fatal(x.RelayErr)
		}
		if x.Relay.Events != 300 || x.Relay.PerSec <= 0 {
			t.Errorf("relay: %+v; want 300 events at a positive rate", x.Relay)
		}
	} else if os.Getenv("RIPPLE_TEST_REQUIRE_SERVERS") == "1" {
		t.Fatal("RIPPLE_TEST_REDIS_URL is not set but RIPPLE_TEST_REQUIRE_SERVERS=1: the outbox relay measurement needs Redis")
	}
	vs := CheckPostgresExtras(x)
	want := 2
	if x.RelayRan {
		want = 3
	}
	if len(vs) != want {
		t.Errorf("CheckPostgresExtras gave %d verdicts; want %d: %+v", len(vs), want, vs)
	}
	var b bytes.Buffer
	WritePostgresExtras(&b, x)
	WriteVerdicts(&b, vs)
	if strings.Contains(b.String(), "error") {
		t.Errorf("report has an error:\n%s", b.String())
	}
	t.Log("\n" + b.String())
}
