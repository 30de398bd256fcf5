// Package transporttest is the conformance suite for Ripple transports.
// Every transport runs it, so that application code sees the same semantics
// whichever URL it opens: the cases check, through the public ripple API,
// each semantic listed in Ripple's contract (fan-out, competing consumers,
// at-least-once delivery, retries and dead letters, delays, priority,
// concurrency and rate limits, ordering, idempotency and event identity,
// retention, replay and starting from history, ephemeral handlers, pause,
// capability gaps and bad input) and, for durable transports, that events
// survive a process killed with SIGKILL.
//
// # Using it from a driver
//
// A driver package adds one test that describes how to reach a fresh store:
//
//	func TestConformance(t *testing.T) {
//		transporttest.Run(t, transporttest.Harness{
//			NewURL: func(t testing.TB) string {
//				return "sqlite://" + filepath.Join(t.TempDir(), "ripple.db")
//			},
//		})
//	}
//
// The driver must be registered (imported) in the test binary. Run starts
// every case as a parallel subtest with its own store, so cases do not see
// each other's events; run a single one with
// go test -run 'TestConformance/Retries'.
//
// # Capabilities
//
// Cases for optional semantics read the driver's declared
// [transport.Capabilities] and its optional interfaces
// ([transport.Replayer], [transport.Claimer], [transport.Inspector],
// [transport.DeadLetterQueue]). When a driver lacks one, the case asserts
// instead that asking for it fails with an error matching
// ripple.ErrNotSupported and naming the transport, because an option a
// transport cannot honour must never be silently ignored.
//
// # Crash tests
//
// For transports that declare Durable, the suite kills processes with
// SIGKILL: the test binary starts itself again as a child process (running
// only the calling test, with an environment variable that tells Run which
// role to play), and the parent kills the child while it is handling or
// publishing events. Run must therefore be called at the start of a
// top-level test function, and NewURL must return a URL that another
// process can open.
//
// # Timing
//
// The cases use short leases and backoffs so that the whole suite takes
// seconds, not minutes, and they wait for outcomes by polling with generous
// bounds rather than by sleeping, so that a slow or busy machine makes them
// slower, not flaky. Lower bounds on time (a delayed event must not arrive
// early) are checked exactly, with a few milliseconds of tolerance for
// transports that store times at millisecond precision.
package transporttest

import (
	"context"
	"os"
	"strings"
	"testing"

	"github.com/ripplehq/ripple"
	"github.com/ripplehq/ripple/transport"
)

// Harness tells the suite how to reach a transport's stores.
type Harness struct {
	// NewURL returns the URL of a fresh, empty store for one test case.
	// Opening the same URL twice (two buses in this process, or a child
	// process) must reach the same store. Use t for cleanup (t.TempDir,
	// t.Cleanup) of whatever the store needs.
	NewURL func(t testing.TB) string
	// Options added to every ripple.Open (e.g. a logger). They come after
	// the suite's own logger option, so a logger given here wins.
	Options []ripple.Option
	// DuplicateIsResent says that the transport reports a duplicate
	// publish as the message resent, not the copy it kept: a broker
	// transport that deduplicates through a side store cannot read the
	// broker's copy back by id (see package sidestore). The duplicate
	// cases then check the Duplicate mark, id, type and source, and that
	// handlers get the first copy once, but not the kept data and time.
	DuplicateIsResent bool
}

// Run runs the conformance suite against the transport that h reaches.
// Call it from a top-level test function: when the test binary is started
// again as a crash-test child process, Run plays the child's role and
// exits the process instead of testing.
func Run(t *testing.T, h Harness) {
	if role := os.Getenv(envRole); role != "" {
		runChild(t, h, role, os.Getenv(envURL))
		return
	}
	if h.NewURL == nil {
		t.Fatal("transporttest: Harness.NewURL is nil; set it to a func returning the URL of a fresh store, such as \"memory://\" + a unique name")
	}
	s := &suite{h: h, topTest: strings.SplitN(t.Name(), "/", 2)[0]}
	s.probe(t)
	t.Logf("transporttest: %s transport, capabilities %+v, replay=%v claims=%v stats=%v dead-letters=%v",
		s.name, s.caps, s.replayer, s.claimer, s.inspector, s.dlq)
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			c.run(t, s)
		})
	}
}

// testCase is one semantic the suite checks.
type testCase struct {
	name string
	run  func(t *testing.T, s *suite)
}

// cases lists every case, grouped by the semantic of Ripple's contract
// they check.
var cases = []testCase{
	// 1. Publish and receive; durability.
	{"RoundTrip", testRoundTrip},
	{"CausationPropagation", testCausation},
	{"DurableReopen", testDurableReopen},
	{"PublishersCloseUnderLoad", testPublishersCloseUnderLoad},
	// 2. Fan-out, patterns, competing consumers.
	{"FanOut", testFanOut},
	{"Wildcards", testWildcards},
	{"Isolation", testIsolation},
	{"CompetingConsumers", testCompetingConsumers},
	{"CloseReopenConsumer", testCloseReopenConsumer},
	{"ConcurrentClose", testConcurrentClose},
	{"ConsumerScaling", testConsumerScaling},
	// 3. At-least-once delivery.
	{"LeaseExpiry", testLeaseExpiry},
	{"LeaseRenewal", testLeaseRenewal},
	{"TimeoutRedelivery", testTimeoutRedelivery},
	{"AbandonedHandler", testAbandonedHandler},
	{"PanicRetried", testPanic},
	{"PanicsNoLeak", testPanicsNoLeak},
	{"HungHandlerFreesSlot", testHungHandlerFreesSlot},
	// 4. Retries and dead letters.
	{"RetryBackoff", testRetryBackoff},
	{"RetryDoesNotBlock", testRetryDoesNotBlock},
	{"Permanent", testPermanent},
	{"DeadLetters", testDeadLetters},
	{"RetryAfter", testRetryAfter},
	{"CrashedAttempts", testCrashedAttempts},
	{"CrashedOnce", testCrashedOnce},
	{"ContinueAfterErrors", testContinueAfterErrors},
	{"RequeueTwiceRunsOnce", testRequeueTwiceRunsOnce},
	// 5. Delay, priority, concurrency, rate limit.
	{"Delay", testDelay},
	{"Priority", testPriority},
	{"Concurrency", testConcurrency},
	{"RateLimit", testRateLimit},
	// 6. Ordering.
	{"Ordered", testOrdered},
	{"OrderedFailingHead", testOrderedFailingHead},
	// 7. Idempotency.
	{"IdempotentClaims", testClaims},
	{"IdempotentRedelivery", testIdempotentRedelivery},
	{"PublishDedup", testPublishDedup},
	{"DuplicateIDAfterPublisherRestart", testDuplicateIDAfterPublisherRestart},
	{"DuplicateReported", testDuplicateReported},
	{"IdentityIsSourceAndID", testIdentityIsSourceAndID},
	// 8. Retention.
	{"RetentionCount", testRetentionCount},
	{"RetentionAge", testRetentionAge},
	// 9. Replay.
	{"Replay", testReplay},
	{"ReplayUnfinished", testReplayUnfinished},
	{"ReplayFinished", testReplayFinished},
	{"Unsubscribe", testUnsubscribe},
	{"StartFrom", testStartFrom},
	// Handler lifetime: ephemeral handlers, pause and resume.
	{"Ephemeral", testEphemeral},
	{"Pause", testPause},
	// 10. Capability gaps, bad input, closing.
	{"CapabilityGaps", testCapabilityGaps},
	{"InvalidInput", testInvalidInput},
	{"NamesRoundTrip", testNamesRoundTrip},
	{"Closed", testClosed},
	{"ShutdownStuck", testShutdownStuck},
	{"ShutdownStuckIdempotent", testShutdownStuckIdempotent},
	{"ShutdownStopsNewDeliveries", testShutdownStopsNewDeliveries},
	{"GracefulShutdownUsesNoAttempt", testGracefulShutdownUsesNoAttempt},
	// 11. Crashes (durable transports).
	{"CrashWorker", testCrashWorker},
	{"CrashPublisher", testCrashPublisher},
	{"CrashConcurrentPublishers", testCrashConcurrentPublishers},
}

// suite is what the cases share: the harness and what the driver declared.
type suite struct {
	h       Harness
	topTest string

	name      string
	caps      transport.Capabilities
	replayer  bool
	unsub     bool
	claimer   bool
	inspector bool
	dlq       bool
}

// probe opens one bus to learn the driver's name, capabilities and
// optional interfaces.
func (s *suite) probe(t *testing.T) {
	bus := s.open(t, s.h.NewURL(t))
	d := s.driver(t, bus)
	s.name = d.Name()
	s.caps = d.Capabilities()
	_, s.replayer = d.(transport.Replayer)
	_, s.unsub = d.(transport.Unsubscriber)
	_, s.claimer = d.(transport.Claimer)
	_, s.inspector = d.(transport.Inspector)
	_, s.dlq = d.(transport.DeadLetterQueue)
	if err := bus.Shutdown(context.Background()); err != nil {
		t.Fatalf("Shutdown of an idle bus: %v", err)
	}
}
