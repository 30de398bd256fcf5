package bench

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strings"
)

// HandleFunc is the counting handler every system calls once per delivery,
// with the event's payload as the system delivers it.
type HandleFunc func(data []byte)

// Instance is one running copy of a system: its handlers are subscribed and
// running, and Publish stores one event.
type Instance interface {
	// Publish publishes one event and returns once the system reports it
	// published (stored durably, for durable systems).
	Publish(ctx context.Context, payload []byte) error
	// Close stops the handlers and releases the instance's resources.
	Close() error
}

// System is one system under test.
type System struct {
	// Name identifies the system in flags and in the result table.
	Name string
	// Ripple marks Ripple's own transports, which also run the fan-out
	// scenario.
	Ripple bool
	// FanOut marks a peer that delivers every event to each of several
	// handlers and so runs the fan-out scenario beside Ripple's transports.
	FanOut bool
	// Consumes is false for systems that only write (the raw SQLite
	// loop): they have no end-to-end or latency results.
	Consumes bool
	// Notes says how the system is set up, for the report.
	Notes string
	// Group names the family of systems selectable together with
	// -systems GROUP ("redis" for every system that talks to the Redis
	// server); empty for systems in no group.
	Group string
	// Open starts a fresh instance whose files live in dir (an empty
	// directory that is removed afterwards), with handlers handlers
	// subscribed to EventType, each at concurrency 10 and each calling h
	// once per delivery. Systems that cannot fan out fail for handlers > 1.
	Open func(ctx context.Context, dir string, handlers int, h HandleFunc) (Instance, error)
	// SQLiteURL, set for Ripple's sqlite systems only, returns the
	// sqlite:// URL of an instance whose file lives in dir. The growth and
	// bounded scenarios run on the systems that set it and open their
	// buses with it.
	SQLiteURL func(dir string) string
	// Measure, when set, replaces Open for a system that runs outside this
	// process (BullMQ, in Node.js) and measures a scenario itself, with the
	// same workload and cfg. Open is then nil.
	Measure func(ctx context.Context, sc Scenario, cfg Config) Measurement
}

// HandlerConcurrency is how many events each handler runs at once.
const HandlerConcurrency = 10

// Env says where the systems that need a server find it.
type Env struct {
	// RedisURL is the Redis server every Redis system uses
	// (redis://HOST:PORT/DB). Empty leaves the Redis systems out.
	RedisURL string
	// NATSURL is the NATS server (JetStream enabled) every NATS system
	// uses (nats://HOST:PORT). Empty leaves the NATS systems out.
	NATSURL string
	// AMQPURL is the RabbitMQ broker the amqp systems use
	// (amqp://USER:PASS@HOST:PORT/). Empty leaves them out.
	AMQPURL string
	// PostgresURL is the PostgreSQL server of the PostgreSQL systems
	// (postgres://…). Empty leaves them out.
	PostgresURL string
	// InstallNode lets BullMQ's system run `npm ci` in bench/bullmq when
	// its node_modules are missing.
	InstallNode bool
}

// RedisURLFromEnv returns the Redis URL set in RIPPLE_BENCH_REDIS_URL or,
// failing that, RIPPLE_TEST_REDIS_URL (which the project's test script
// exports), or "".
func RedisURLFromEnv() string {
	if u := os.Getenv("RIPPLE_BENCH_REDIS_URL"); u != "" {
		return u
	}
	return os.Getenv("RIPPLE_TEST_REDIS_URL")
}

// Systems returns every system the benchmark can run with env, in report
// order, and a note for each system it had to leave out and why.
func Systems(env Env) ([]System, []string) {
	out := []System{
		RippleSystem("ripple-memory", "in-process transport, not durable",
			func(string) string { return "memory://" }),
		rippleSQLite("ripple-sqlite-full", "sqlite transport, synchronous=FULL (default)",
			func(dir string) string { return "sqlite://" + dir + "/ripple.db" }),
		rippleSQLite("ripple-sqlite-normal", "sqlite transport, synchronous=NORMAL",
			func(dir string) string { return "sqlite://" + dir + "/ripple.db?synchronous=normal" }),
		SQLite2Bus(),
		WatermillGoChannel(),
		RiverSQLite(),
		Goqite(),
		RawSQLite("FULL"),
		RawSQLite("NORMAL"),
	}
	var notes []string
	out = append(out, KafkaSystems()...)
	if env.PostgresURL != "" {
		out = append(out, PostgresSystems(env.PostgresURL)...)
	}
	if env.RedisURL == "" {
		notes = append(notes, "the Redis systems ("+strings.Join(redisSystemNames, ", ")+") were left out: no Redis server was given; pass -redis redis://HOST:PORT/DB or set RIPPLE_BENCH_REDIS_URL")
	} else {
		redis, rnotes := RedisSystems(env)
		out = append(out, redis...)
		notes = append(notes, rnotes...)
	}
	if env.NATSURL == "" {
		notes = append(notes, "the NATS systems ("+strings.Join(natsSystemNames, ", ")+") were left out: no NATS server was given; pass -nats nats://HOST:PORT or set RIPPLE_BENCH_NATS_URL")
	} else {
		out = append(out, NATSSystems(env.NATSURL)...)
	}
	if env.AMQPURL == "" {
		notes = append(notes, "the RabbitMQ systems ("+strings.Join(amqpSystemNames, ", ")+") were left out: no broker was given; pass -amqp amqp://USER:PASS@HOST:PORT/ or set RIPPLE_BENCH_AMQP_URL")
	} else {
		out = append(out, AMQPSystems(env.AMQPURL)...)
	}
	return out, notes
}

// rippleSQLite is RippleSystem for a sqlite:// URL, which the storage
// scenarios also run on.
func rippleSQLite(name, notes string, url func(dir string) string) System {
	s := RippleSystem(name, notes, url)
	s.SQLiteURL = url
	return s
}

// Groups lists the names that select a family of systems, besides "all".
var Groups = []string{"redis", "nats", "amqp", "kafka", "postgres"}

// Select returns the systems named in the comma-separated list names (each
// a system name, a group name or "all") that can run with env, and a note
// for each one left out. Naming a Redis system or the redis group without
// a Redis URL is an error; "all" then leaves them out with a note.
func Select(names string, env Env) ([]System, []string, error) {
	avail, notes := Systems(env)
	if names == "all" || names == "" {
		return avail, notes, nil
	}
	var out []System
	var outNotes []string
	seen := map[string]bool{}
	add := func(s System) {
		if !seen[s.Name] {
			seen[s.Name] = true
			out = append(out, s)
		}
	}
	for _, n := range strings.Split(names, ",") {
		n = strings.TrimSpace(n)
		needsRedis := n == "redis" || slices.Contains(redisSystemNames, n)
		if needsRedis && env.RedisURL == "" {
			return nil, nil, fmt.Errorf("%q needs a Redis server: pass -redis redis://HOST:PORT/DB or set RIPPLE_BENCH_REDIS_URL", n)
		}
		if (n == "nats" || slices.Contains(natsSystemNames, n)) && env.NATSURL == "" {
			return nil, nil, fmt.Errorf("%q needs a NATS server with JetStream: pass -nats nats://HOST:PORT or set RIPPLE_BENCH_NATS_URL", n)
		}
		if (n == "amqp" || slices.Contains(amqpSystemNames, n)) && env.AMQPURL == "" {
			return nil, nil, fmt.Errorf("%q needs a RabbitMQ broker: pass -amqp amqp://USER:PASS@HOST:PORT/ or set RIPPLE_BENCH_AMQP_URL", n)
		}
		if (n == "postgres" || slices.Contains(postgresSystemNames, n)) && env.PostgresURL == "" {
			return nil, nil, fmt.Errorf("%q needs a PostgreSQL server: pass -postgres postgres://… or set RIPPLE_BENCH_POSTGRES_URL", n)
		}
		switch {
		case n == "all":
			for _, s := range avail {
				add(s)
			}
			outNotes = append(outNotes, notes...)
		case slices.Contains(Groups, n):
			for _, s := range avail {
				if s.Group == n {
					add(s)
				}
			}
			for _, note := range notes {
				if noteGroup(note) == n {
					outNotes = append(outNotes, note)
				}
			}
		default:
			i := slices.IndexFunc(avail, func(s System) bool { return s.Name == n })
			switch {
			case i >= 0:
				add(avail[i])
			case slices.Contains(SystemNames(), n):
				// Known but unavailable here (BullMQ without Node.js).
				for _, note := range notes {
					if strings.HasPrefix(note, n+" ") {
						outNotes = append(outNotes, note)
					}
				}
			default:
				return nil, nil, fmt.Errorf("unknown system %q; known systems: %s; groups: %s, all", n, strings.Join(SystemNames(), ", "), strings.Join(Groups, ", "))
			}
		}
	}
	// "all,redis" would otherwise repeat the notes.
	var uniq []string
	for _, n := range outNotes {
		if !slices.Contains(uniq, n) {
			uniq = append(uniq, n)
		}
	}
	return out, uniq, nil
}

// SystemNames lists every system name Select knows, including those that
// need a server.
func SystemNames() []string {
	all, _ := Systems(Env{})
	var names []string
	for _, s := range all {
		names = append(names, s.Name)
	}
	names = append(names, postgresSystemNames...)
	return append(append(append(names, redisSystemNames...), natsSystemNames...), amqpSystemNames...)
}

// noteGroup returns the group a note of Systems is about.
func noteGroup(note string) string {
	name, _, _ := strings.Cut(note, " ")
	switch {
	case strings.HasPrefix(note, "the Redis systems"), slices.Contains(redisSystemNames, name):
		return "redis"
	case strings.HasPrefix(note, "the NATS systems"), slices.Contains(natsSystemNames, name):
		return "nats"
	case strings.HasPrefix(note, "the RabbitMQ systems"), slices.Contains(amqpSystemNames, name):
		return "amqp"
	case strings.HasPrefix(note, "the PostgreSQL systems"), slices.Contains(postgresSystemNames, name):
		return "postgres"
	}
	return ""
}
