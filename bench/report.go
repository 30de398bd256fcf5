package bench

import (
	"fmt"
	"io"
	"strings"
	"time"
)

var columns = []struct {
	sc    Scenario
	title string
}{
	{Pub1, "publish, 1 publisher (ev/s)"},
	{Pub16, "publish, 16 publishers (ev/s)"},
	{E2E1, "end-to-end, 1 publisher (ev/s)"},
	{E2E16, "end-to-end, 16 publishers (ev/s)"},
	{Fan5, "end-to-end, 16 publishers, 5 handlers (ev/s · deliveries/s)"},
	{Latency, "latency p50 / p99 (ms)"},
}

// WriteTable writes the results as one markdown table, a row per system and
// a column per scenario, followed by notes on measurements that did not run
// as planned.
func WriteTable(w io.Writer, results []Result) {
	// A run of the storage scenarios alone has no column here.
	has := false
	for _, r := range results {
		for _, c := range columns {
			if _, ok := r.By[c.sc]; ok {
				has = true
			}
		}
	}
	if !has {
		return
	}
	var b strings.Builder
	b.WriteString("| system |")
	for _, c := range columns {
		b.WriteString(" " + c.title + " |")
	}
	b.WriteString("\n|---|")
	for range columns {
		b.WriteString("---:|")
	}
	b.WriteString("\n")
	var notes []string
	for _, r := range results {
		b.WriteString("| " + r.System.Name + " |")
		for _, c := range columns {
			m, ok := r.By[c.sc]
			cell := "—"
			switch {
			case !ok:
			case m.Err != nil:
				cell = "error"
				notes = append(notes, fmt.Sprintf("%s %s: %v", r.System.Name, c.sc, m.Err))
			case c.sc == Latency:
				cell = ms(m.P50) + " / " + ms(m.P99)
			case c.sc == Fan5:
				cell = count(m.PerSec) + " · " + count(m.DeliveriesPerSec)
			default:
				cell = count(m.PerSec)
			}
			if ok && m.Err == nil && m.Note != "" {
				cell += " *"
				notes = append(notes, fmt.Sprintf("%s %s: %s", r.System.Name, c.sc, m.Note))
			}
			b.WriteString(" " + cell + " |")
		}
		b.WriteString("\n")
	}
	for _, n := range notes {
		b.WriteString("\n* " + n + "\n")
	}
	_, _ = io.WriteString(w, b.String())
}

// WriteSetup writes how each system in results was set up.
func WriteSetup(w io.Writer, results []Result) {
	for _, r := range results {
		fmt.Fprintf(w, "- %s: %s\n", r.System.Name, r.System.Notes)
	}
}

func ms(d time.Duration) string {
	return fmt.Sprintf("%.2f", float64(d)/float64(time.Millisecond))
}

// count formats an events/s figure with thousands separators.
func count(v float64) string {
	s := fmt.Sprintf("%.0f", v)
	var out []byte
	for i := range len(s) {
		if i > 0 && (len(s)-i)%3 == 0 {
			out = append(out, ',')
		}
		out = append(out, s[i])
	}
	return string(out)
}

// Verdict is one performance target checked against a run's results.
type Verdict struct {
	// Target states the goal.
	Target string
	// Measured states the numbers and the ratio found.
	Measured string
	// Pass is true when the target is met.
	Pass bool
}

// Check evaluates Ripple's performance targets against results. A target
// whose systems or scenarios are missing from results is left out.
func Check(results []Result) []Verdict {
	find := func(name string, sc Scenario) (Measurement, bool) {
		for _, r := range results {
			if r.System.Name == name {
				return r.Get(sc)
			}
		}
		return Measurement{}, false
	}
	var out []Verdict
	// ratio appends a verdict on aName's rate over bName's and reports
	// whether both were measured.
	ratio := func(target, aName string, aSc Scenario, bName string, bSc Scenario, min float64) bool {
		a, ok1 := find(aName, aSc)
		b, ok2 := find(bName, bSc)
		if !ok1 || !ok2 || b.PerSec == 0 {
			return false
		}
		r := a.PerSec / b.PerSec
		out = append(out, Verdict{
			Target:   target,
			Measured: fmt.Sprintf("%s %s / %s %s = %s / %s = %.2f×", aName, aSc, bName, bSc, count(a.PerSec), count(b.PerSec), r),
			Pass:     r >= min,
		})
		return true
	}

	for _, sync := range []string{"full", "normal"} {
		ratio(fmt.Sprintf("one awaiting publisher ≥ 0.8× raw single-commit ceiling (%s)", strings.ToUpper(sync)),
			"ripple-sqlite-"+sync, Pub1, "sqlite-raw-"+sync, Pub1, 0.8)
	}
	if a, ok := find("ripple-sqlite-full", Pub16); ok {
		out = append(out, Verdict{
			Target:   "16 concurrent publishers at FULL ≥ 50,000 durable publishes/s",
			Measured: fmt.Sprintf("ripple-sqlite-full pub16 = %s/s", count(a.PerSec)),
			Pass:     a.PerSec >= 50_000,
		})
	}
	ratio("16 concurrent publishers at FULL ≥ 15× the single-commit ceiling",
		"ripple-sqlite-full", Pub16, "sqlite-raw-full", Pub1, 15)
	ratio("end-to-end, 16 publishers at FULL ≥ 0.5× Watermill GoChannel",
		"ripple-sqlite-full", E2E16, "watermill-gochannel", E2E16, 0.5)
	for _, peer := range []string{"river-sqlite", "goqite"} {
		for _, sc := range []Scenario{E2E1, E2E16} {
			ratio(fmt.Sprintf("end-to-end (%s) at FULL ≥ 10× %s", sc, peer),
				"ripple-sqlite-full", sc, peer, sc, 10)
		}
	}
	for _, name := range []string{"ripple-sqlite-full", "ripple-sqlite-normal", "ripple-memory"} {
		if m, ok := find(name, Latency); ok {
			out = append(out, Verdict{
				Target:   fmt.Sprintf("p99 publish→handler ≤ 2 ms at the paced rate (%s)", name),
				Measured: fmt.Sprintf("p50 %s ms, p99 %s ms", ms(m.P50), ms(m.P99)),
				Pass:     m.P99 <= 2*time.Millisecond && m.Note == "",
			})
		}
	}
	for _, sc := range []Scenario{E2E1, E2E16} {
		ratio(fmt.Sprintf("memory transport end-to-end (%s) ≥ 1× Watermill GoChannel", sc),
			"ripple-memory", sc, "watermill-gochannel", sc, 1)
	}
	for _, name := range []string{"ripple-memory", "ripple-sqlite-full", "ripple-sqlite-normal", "ripple-redis"} {
		one, ok1 := find(name, E2E16)
		five, ok2 := find(name, Fan5)
		if !ok1 || !ok2 || five.PerSec == 0 {
			continue
		}
		cost := one.PerSec / five.PerSec
		out = append(out, Verdict{
			Target:   fmt.Sprintf("five handlers cost ≤ 2× one handler (%s)", name),
			Measured: fmt.Sprintf("e2e16 %s/s with one, %s/s with five: %.2f× the time", count(one.PerSec), count(five.PerSec), cost),
			Pass:     cost <= 2,
		})
	}

	// Fan-out on memory: five handlers' deliveries against GoChannel's five
	// subscribers', and what a delivery costs with five handlers against
	// one (five handlers do five times the deliveries, so at most 5× the
	// time of one).
	if a, ok := find("ripple-memory", Fan5); ok {
		if b, ok := find("watermill-gochannel", Fan5); ok && b.DeliveriesPerSec > 0 {
			r := a.DeliveriesPerSec / b.DeliveriesPerSec
			measured := fmt.Sprintf("ripple-memory fan5 / watermill-gochannel fan5 = %s / %s deliveries/s = %.2f×", count(a.DeliveriesPerSec), count(b.DeliveriesPerSec), r)
			if a.CPU > 0 && b.CPU > 0 && a.Deliveries > 0 && b.Deliveries > 0 {
				measured += fmt.Sprintf("; CPU per delivery %s / %s", perDelivery(a), perDelivery(b))
			}
			out = append(out, Verdict{
				Target:   "memory: five handlers' deliveries/s ≥ Watermill GoChannel's with five subscribers",
				Measured: measured,
				Pass:     r >= 1,
			})
		}
		if one, ok := find("ripple-memory", E2E16); ok && a.PerSec > 0 {
			cost := one.PerSec / a.PerSec
			out = append(out, Verdict{
				Target:   "memory: five handlers cost ≤ 5× one handler (the deliveries' own work)",
				Measured: fmt.Sprintf("e2e16 %s/s with one, %s/s with five: %.2f× the time", count(one.PerSec), count(a.PerSec), cost),
				Pass:     cost <= 5,
			})
		}
	}

	ratio("Redis: end-to-end, one awaiting publisher ≥ 0.8× one awaited raw XADD",
		"ripple-redis", E2E1, "redis-raw-xadd-awaited", Pub1, 0.8)
	for _, p := range []struct {
		name string
		min  float64
	}{{"watermill-redis", 2}, {"asynq", 3}, {"bullmq", 6}} {
		if !ratio(fmt.Sprintf("Redis: end-to-end, one awaiting publisher ≥ %g× %s", p.min, p.name),
			"ripple-redis", E2E1, p.name, E2E1, p.min) {
			continue
		}
		// A peer multiple asks for a rate: set it beside the fastest one
		// awaiting publisher reached with bare XADDs in this run, the
		// round-trip rate of this machine without a consumer beside it.
		peer, _ := find(p.name, E2E1)
		var ceiling string
		var best float64
		for _, raw := range []string{"redis-raw-xadd-awaited", "redis-raw-xadd-pipelined"} {
			if m, ok := find(raw, Pub1); ok && m.PerSec > best {
				ceiling, best = raw, m.PerSec
			}
		}
		if best > 0 {
			want := p.min * peer.PerSec
			out[len(out)-1].Measured += fmt.Sprintf("; the target asks %s/s, %.2f× the fastest one-publisher raw XADD (%s pub1, %s/s)",
				count(want), want/best, ceiling, count(best))
		}
	}
	ratio("Redis: end-to-end, 16 publishers ≥ 0.5× pipelined raw XADD",
		"ripple-redis", E2E16, "redis-raw-xadd-pipelined", Pub16, 0.5)
	if m, ok := find("ripple-redis", Latency); ok {
		out = append(out, Verdict{
			Target:   "Redis: p99 publish→handler ≤ 1 ms at the paced rate (ripple-redis)",
			Measured: fmt.Sprintf("p50 %s ms, p99 %s ms", ms(m.P50), ms(m.P99)),
			Pass:     m.P99 <= time.Millisecond && m.Note == "",
		})
	}
	out = append(out, checkStorage(results)...)
	return append(append(append(append(out, checkNATS(find)...), checkAMQP(find)...), checkPostgres(find)...), checkKafka(find)...)
}

// verdicts collects the verdicts of one broker's targets from the
// measurements of a run. A target whose measurements are missing (the
// system was not run) gives no verdict.
type verdicts struct {
	find func(string, Scenario) (Measurement, bool)
	out  []Verdict
}

// ratio: aName's rate in aSc is at least min times bName's in bSc.
func (v *verdicts) ratio(target, aName string, aSc Scenario, bName string, bSc Scenario, min float64) {
	a, ok1 := v.find(aName, aSc)
	b, ok2 := v.find(bName, bSc)
	if !ok1 || !ok2 || b.PerSec == 0 {
		return
	}
	r := a.PerSec / b.PerSec
	v.out = append(v.out, Verdict{
		Target:   target,
		Measured: fmt.Sprintf("%s %s / %s %s = %s / %s = %.2f×", aName, aSc, bName, bSc, count(a.PerSec), count(b.PerSec), r),
		Pass:     r >= min,
	})
}

// p99: name's publish→handler p99 at the paced rate is at most max.
func (v *verdicts) p99(target, name string, max time.Duration) {
	if m, ok := v.find(name, Latency); ok {
		v.out = append(v.out, Verdict{
			Target:   target,
			Measured: fmt.Sprintf("p50 %s ms, p99 %s ms", ms(m.P50), ms(m.P99)),
			Pass:     m.P99 <= max && m.Note == "",
		})
	}
}

// fanCost: five handlers take at most max times as long as one.
func (v *verdicts) fanCost(target, name string, max float64) {
	one, ok1 := v.find(name, E2E16)
	five, ok2 := v.find(name, Fan5)
	if !ok1 || !ok2 || five.PerSec <= 0 {
		return
	}
	cost := one.PerSec / five.PerSec
	v.out = append(v.out, Verdict{
		Target:   target,
		Measured: fmt.Sprintf("e2e16 %s/s with one, %s/s with five: %.2f× the time", count(one.PerSec), count(five.PerSec), cost),
		Pass:     cost <= max,
	})
}

// checkAMQP evaluates the RabbitMQ targets for ripple-amqp (quorum handler
// queues, the default) and, where it ran, ripple-amqp-classic, against the
// raw amqp091 confirm ceilings and Watermill's AMQP Pub/Sub of the same
// run.
func checkAMQP(find func(string, Scenario) (Measurement, bool)) []Verdict {
	v := verdicts{find: find}
	for _, name := range []string{"ripple-amqp", "ripple-amqp-classic"} {
		v.ratio(fmt.Sprintf("RabbitMQ: end-to-end, one awaiting publisher ≥ 0.8× raw publish awaiting each confirm (%s)", name),
			name, E2E1, "amqp-raw-confirm-awaited", Pub1, 0.8)
		v.ratio(fmt.Sprintf("RabbitMQ: end-to-end, 16 publishers ≥ 0.5× raw publish with 16 confirms in flight (%s)", name),
			name, E2E16, "amqp-raw-confirm-pipelined", Pub16, 0.5)
		for _, sc := range []Scenario{E2E1, E2E16} {
			v.ratio(fmt.Sprintf("RabbitMQ: end-to-end (%s) ≥ 2× watermill-amqp (%s)", sc, name), name, sc, "watermill-amqp", sc, 2)
		}
		v.p99(fmt.Sprintf("RabbitMQ: p99 publish→handler ≤ 3 ms at the paced rate (%s)", name), name, 3*time.Millisecond)
		v.fanCost(fmt.Sprintf("RabbitMQ: five handlers cost ≤ 2× one handler (%s)", name), name, 2)
	}
	return v.out
}

// checkNATS evaluates the NATS targets. The server's sync_interval decides
// every one of these numbers; scripts/test runs it with sync_interval:
// always (an fsync per write).
func checkNATS(find func(string, Scenario) (Measurement, bool)) []Verdict {
	v := verdicts{find: find}
	v.ratio("NATS: end-to-end, one awaiting publisher ≥ 0.8× raw awaited jetstream.Publish",
		"ripple-nats", E2E1, "nats-raw-publish-awaited", Pub1, 0.8)
	v.ratio("NATS: end-to-end, 16 publishers ≥ 0.5× raw PublishAsync with 16 in flight",
		"ripple-nats", E2E16, "nats-raw-publishasync-16", Pub16, 0.5)
	for _, sc := range []Scenario{E2E1, E2E16} {
		v.ratio(fmt.Sprintf("NATS: end-to-end (%s) ≥ 2× watermill-nats", sc), "ripple-nats", sc, "watermill-nats", sc, 2)
	}
	v.p99("NATS: p99 publish→handler ≤ 2 ms at the paced rate (ripple-nats)", "ripple-nats", 2*time.Millisecond)
	v.fanCost("NATS: five handlers cost ≤ 2× one handler (ripple-nats)", "ripple-nats", 2)
	return v.out
}

// checkPostgres evaluates the PostgreSQL targets of ripple-postgres against
// the raw single-row INSERT and COPY-100 ceilings and against River and
// Watermill SQL on the same server. The PublishTx and relay targets are
// in CheckPostgresExtras.
func checkPostgres(find func(string, Scenario) (Measurement, bool)) []Verdict {
	v := verdicts{find: find}
	v.ratio("Postgres: one awaiting publisher ≥ 0.8× the raw single-row INSERT commit loop",
		"ripple-postgres", Pub1, "postgres-raw-insert", Pub1, 0.8)
	v.ratio("Postgres: 16 publishers ≥ 0.5× COPY-100",
		"ripple-postgres", Pub16, "postgres-copy-100", Pub16, 0.5)
	for _, peer := range []string{"river-postgres", "watermill-sql-postgres"} {
		for _, sc := range []Scenario{E2E1, E2E16} {
			v.ratio(fmt.Sprintf("Postgres: end-to-end (%s) ≥ 10× %s", sc, peer), "ripple-postgres", sc, peer, sc, 10)
		}
	}
	v.p99("Postgres: p99 publish→handler ≤ 5 ms at the paced rate (ripple-postgres)", "ripple-postgres", 5*time.Millisecond)
	return v.out
}

// WriteVerdicts writes the targets as a markdown table.
func WriteVerdicts(w io.Writer, vs []Verdict) {
	fmt.Fprintln(w, "| target | measured | result |")
	fmt.Fprintln(w, "|---|---|---|")
	for _, v := range vs {
		res := "MISS"
		if v.Pass {
			res = "PASS"
		}
		fmt.Fprintf(w, "| %s | %s | %s |\n", v.Target, v.Measured, res)
	}
}
