package kafka

import (
	"context"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ripplehq/ripple/transport"
)

func TestParseURL(t *testing.T) {
	o, err := parseURL("kafka://a:1,b?namespace=app&partitions=8&replication=3&retention=48h&session_timeout=10s&tls=true&sasl=scram-sha-256&dial_timeout=2s")
	if err == nil {
		t.Fatalf("sasl without a user was accepted: %+v", o)
	}
	o, err = parseURL("kafka://u:p%40ss@a:1,b?namespace=app&partitions=8&replication=3&retention=48h&session_timeout=10s&tls=true&sasl=scram-sha-256&dial_timeout=2s")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(o.seeds, ",") != "a:1,b:9092" || o.namespace != "app" || o.partitions != 8 || o.replication != 3 ||
		o.retention != 48*time.Hour || o.sessionTimeout != 10*time.Second || !o.tls || o.mechanism != "scram-sha-256" ||
		o.user != "u" || o.password != "p@ss" || o.dialTimeout != 2*time.Second {
		t.Errorf("parsed %+v", o)
	}
	for _, bad := range []string{
		"kafka://", "kafka://a:1/path", "kafka://a:1?namespace=a/b", "kafka://a:1?partitions=0",
		"kafka://a:1?replication=x", "kafka://a:1?retention=-1s", "kafka://a:1?tls=maybe",
		"kafka://a:1?sasl=gssapi", "kafka://a:1?nope=1", "kafka://a:1,,b:2", "redis://a:1",
	} {
		if _, err := parseURL(bad); err == nil {
			t.Errorf("parseURL(%q) accepted", bad)
		}
	}
	_, err = parseURL("kafka://user:s3cret@a:1?bogus=1")
	if err == nil || strings.Contains(err.Error(), "s3cret") {
		t.Errorf("error %v; want a refusal without the password", err)
	}
	if got := redact("kafka://user:s3cr@t@a:1,b:2?x=1"); strings.Contains(got, "s3cr") || !strings.Contains(got, "a:1,b:2") {
		t.Errorf("redact = %q", got)
	}
}

func TestMetaRoundTrip(t *testing.T) {
	pt := &part{next: 20, completed: 7, failed: 3}
	now := time.Now()
	pt.entries = []*entry{
		{off: 10, attempts: 2, leased: true, until: now.Add(time.Minute)},
		{off: 11, done: true, attempts: 1},
		{off: 14, attempts: 0, ts: now.Add(-time.Second)},
		{off: 15, attempts: 4, due: now.Add(time.Hour)},
	}
	off, s, ok := commitPoint(pt, now)
	if !ok || off != 10 {
		t.Fatalf("commitPoint = %d, %v", off, ok)
	}
	m := parseMeta(off, s)
	if m.completed != 7 || m.failed != 3 || m.active != 1 || m.waiting != 1 || m.delayed != 1 || m.next != 20 {
		t.Errorf("meta %q parsed as %+v", s, m)
	}
	// Every unfinished entry is listed, so that the next owner skips
	// the finished ones (11) below known.
	if m.attempts[10] != 2 || m.attempts[14] != 0 || m.attempts[15] != 4 || len(m.attempts) != 3 || m.known != 20 {
		t.Errorf("attempts %v known %d from %q", m.attempts, m.known, s)
	}
	// What a previous owner listed beyond what this one has read is
	// carried over.
	pt.known, pt.attempts = 30, map[int64]int{25: 3}
	off, s, _ = commitPoint(pt, now)
	if m := parseMeta(off, s); m.attempts[25] != 3 || m.known != 30 || len(m.attempts) != 4 {
		t.Errorf("restored attempts %v known %d from %q", m.attempts, m.known, s)
	}
	if m := parseMeta(5, "garbage"); m.next != -1 || m.attempts != nil {
		t.Errorf("garbage parsed as %+v", m)
	}
}

// murmur2 is the Java client's hash (org.apache.kafka.common.utils.Utils).
func murmur2(data []byte) int32 {
	const m = 0x5bd1e995
	length := len(data)
	h := uint32(0x9747b28c) ^ uint32(length)
	for i := 0; i+4 <= length; i += 4 {
		k := uint32(data[i]) | uint32(data[i+1])<<8 | uint32(data[i+2])<<16 | uint32(data[i+3])<<24
		k *= m
		k ^= k >> 24
		k *= m
		h *= m
		h ^= k
	}
	tail := data[length&^3:]
	switch len(tail) {
	case 3:
		h ^= uint32(tail[2]) << 16
		fallthrough
	case 2:
		h ^= uint32(tail[1]) << 8
		fallthrough
	case 1:
		h ^= uint32(tail[0])
		h *= m
	}
	h ^= h >> 13
	h *= m
	h ^= h >> 15
	return int32(h)
}

// TestKeyPartition: a keyed event lands on the partition the Java
// client's default partitioner picks, toPositive(murmur2(key)) % n.
func TestKeyPartition(t *testing.T) {
	dr, err := Open(context.Background(), newURL(t, "partitions=7"), transport.Config{})
	if err != nil {
		t.Fatal(err)
	}
	d := dr.(*Driver)
	defer d.Close()
	keys := []string{"user-1", "user-2", "a", "bb", "ccc", "dddd", "tenant/42", "ü-key", "order-123456789"}
	for _, k := range keys {
		if err := d.Publish(bg, []*transport.Message{{ID: "id-" + k, Type: "key.partition.checked", Key: k, Time: time.Now(), Attrs: map[string]string{"source": "t"}}}); err != nil {
			t.Fatal(err)
		}
	}
	got := map[string]int32{}
	if err := d.scan(bg, d.topic, nil, func(r *kgo.Record) { got[string(r.Key)] = r.Partition }); err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		want := (murmur2([]byte(k)) & 0x7fffffff) % 7
		if p, ok := got[k]; !ok || p != want {
			t.Errorf("key %q on partition %d (found %v), want %d as the Java client", k, p, ok, want)
		}
	}
}

// TestRetention: the event topic's retention.ms is reported, and the
// retention= URL parameter sets it when Ripple creates the topic.
func TestRetention(t *testing.T) {
	dr, err := Open(context.Background(), newURL(t, "retention=48h"), transport.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer dr.Close()
	r, err := dr.(*Driver).Retention(context.Background())
	if err != nil || r != 48*time.Hour {
		t.Errorf("Retention = %s, %v; want 48h", r, err)
	}
}

// TestStoreParameter: store= (and its older spelling claims=) names a
// transport that keeps claims; kafka itself, memory, unknown schemes and
// non-URLs are refused, and so are two spellings at once.
func TestStoreParameter(t *testing.T) {
	file := "sqlite%3A%2F%2F" + strings.ReplaceAll(t.TempDir(), "/", "%2F") + "%2Fc.db"
	for _, c := range []struct{ param, want string }{
		{"store=kafka%3A%2F%2Fa%3A1", "cannot be a kafka:// URL"},
		{"store=memory%3A%2F%2F", "inside this process only"},
		{"claims=nosuch%3A%2F%2Fx", "claims=nosuch://x: no transport is registered"},
		{"store=notaurl", "not a transport URL"},
		{"store=" + file + "&claims=" + file, "both name the side store"},
	} {
		_, err := Open(context.Background(), newURL(t, c.param), transport.Config{})
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Open with %s: %v; want an error saying %q", c.param, err, c.want)
		}
	}
	for _, param := range []string{"store", "claims"} {
		dr, err := Open(context.Background(), newURL(t, param+"="+file), transport.Config{})
		if err != nil {
			t.Fatal(err)
		}
		defer dr.Close()
		c, ok := dr.(transport.Claimer)
		if !ok {
			t.Fatalf("a kafka driver opened with %s= is not a Claimer", param)
		}
		if caps := dr.Capabilities(); !caps.Dedup || !caps.SharedRateLimit {
			t.Errorf("with %s= (sqlite), capabilities %+v; want Dedup and SharedRateLimit", param, caps)
		}
		if _, ok := dr.(transport.RateLimiter); !ok {
			t.Errorf("a kafka driver opened with %s= is not a RateLimiter", param)
		}
		if r, err := c.Claim(context.Background(), "h", "e1", time.Minute); err != nil || r != transport.Claimed {
			t.Errorf("Claim through %s= = %v, %v; want Claimed", param, r, err)
		}
		if r, err := c.Claim(context.Background(), "h", "e1", time.Minute); err != nil || r != transport.Busy {
			t.Errorf("second Claim through %s= = %v, %v; want Busy", param, r, err)
		}
	}
	plain, err := Open(context.Background(), newURL(t), transport.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	if _, ok := plain.(transport.Claimer); ok {
		t.Error("a kafka driver without store= declares idempotency claims")
	}
	if caps := plain.Capabilities(); caps.Dedup || caps.SharedRateLimit {
		t.Errorf("a kafka driver without store= declares %+v", caps)
	}
}

// TestStoreEnv: store_env= (and claims_env=) reads the store's URL from
// the environment.
func TestStoreEnv(t *testing.T) {
	t.Setenv("RIPPLE_TEST_KAFKA_STORE", "sqlite://"+t.TempDir()+"/store.db")
	for _, param := range []string{"store_env", "claims_env"} {
		dr, err := Open(context.Background(), newURL(t, param+"=RIPPLE_TEST_KAFKA_STORE"), transport.Config{})
		if err != nil {
			t.Fatal(err)
		}
		defer dr.Close()
		if _, ok := dr.(transport.Claimer); !ok {
			t.Errorf("%s did not give a store", param)
		}
		if _, err := Open(context.Background(), newURL(t, param+"=RIPPLE_TEST_KAFKA_UNSET_VAR"), transport.Config{}); err == nil || !strings.Contains(err.Error(), "unset") {
			t.Errorf("%s of an unset variable: %v", param, err)
		}
	}
}

// TestRedactStore: a password inside a percent-encoded store= (or
// claims=) value is hidden too.
func TestRedactStore(t *testing.T) {
	raw := "kafka://u:kpass@a:1?namespace=x&store=" + url.QueryEscape("redis://:spass@cache:6379/0")
	got := redact(raw)
	if strings.Contains(got, "kpass") || strings.Contains(got, "spass") || !strings.Contains(got, "namespace=x") {
		t.Errorf("redact(%q) = %q", raw, got)
	}
	if _, err := parseURL("kafka://a:1?claims=" + url.QueryEscape("redis://:spass@cache:6379/0") + "&bogus=1"); err == nil || strings.Contains(err.Error(), "spass") {
		t.Errorf("error %v; want a refusal without the store's password", err)
	}
}
