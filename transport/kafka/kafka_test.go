package kafka

import (
	"context"
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
	if m.attempts[10] != 2 || m.attempts[15] != 4 || len(m.attempts) != 2 {
		t.Errorf("attempts %v from %q", m.attempts, s)
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

// TestClaimsParameter: claims= names a transport that keeps claims;
// kafka itself, unknown schemes and transports without claims are
// refused.
func TestClaimsParameter(t *testing.T) {
	for _, c := range []struct{ param, want string }{
		{"claims=kafka%3A%2F%2Fa%3A1", "no atomic claim"},
		{"claims=nosuch%3A%2F%2Fx", "no transport is registered"},
		{"claims=notaurl", "not a transport URL"},
	} {
		_, err := Open(context.Background(), newURL(t, c.param), transport.Config{})
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Open with %s: %v; want an error saying %q", c.param, err, c.want)
		}
	}
	dr, err := Open(context.Background(), newURL(t, "claims=sqlite%3A%2F%2F"+strings.ReplaceAll(t.TempDir(), "/", "%2F")+"%2Fc.db"), transport.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer dr.Close()
	c, ok := dr.(transport.Claimer)
	if !ok {
		t.Fatal("a kafka driver opened with claims= is not a Claimer")
	}
	if r, err := c.Claim(context.Background(), "h", "e1", time.Minute); err != nil || r != transport.Claimed {
		t.Errorf("Claim = %v, %v", r, err)
	}
	if r, err := c.Claim(context.Background(), "h", "e1", time.Minute); err != nil || r != transport.Busy {
		t.Errorf("second Claim = %v, %v; want Busy", r, err)
	}
	plain, err := Open(context.Background(), newURL(t), transport.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	if _, ok := plain.(transport.Claimer); ok {
		t.Error("a kafka driver without claims= declares idempotency claims")
	}
}

// TestClaimsEnv: claims_env= reads the claim store's URL from the
// environment.
func TestClaimsEnv(t *testing.T) {
	t.Setenv("RIPPLE_TEST_KAFKA_CLAIMS", "sqlite://"+t.TempDir()+"/claims.db")
	dr, err := Open(context.Background(), newURL(t, "claims_env=RIPPLE_TEST_KAFKA_CLAIMS"), transport.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer dr.Close()
	if _, ok := dr.(transport.Claimer); !ok {
		t.Error("claims_env did not give a claim store")
	}
	if _, err := Open(context.Background(), newURL(t, "claims_env=RIPPLE_TEST_KAFKA_UNSET_VAR"), transport.Config{}); err == nil || !strings.Contains(err.Error(), "unset") {
		t.Errorf("claims_env of an unset variable: %v", err)
	}
}
