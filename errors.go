package ripple

import (
	"errors"
	"fmt"
	"time"

	"github.com/ripplehq/ripple/transport"
)

// Sentinel errors. Every error Ripple returns that falls in one of these
// classes matches it with errors.Is.
var (
	// ErrClosed is returned by calls on a bus that has been shut down.
	ErrClosed = errors.New("ripple: bus is closed")
	// ErrNotSupported is returned when an option asks for a semantic the
	// bus's transport cannot give. The error names transport and option.
	ErrNotSupported = errors.New("not supported by this transport")
	// ErrInvalidOption is returned for option values that make no sense,
	// such as Concurrency(0) or a negative delay.
	ErrInvalidOption = errors.New("invalid option")
	// ErrInvalidName is returned for event names, patterns and handler
	// names that break Ripple's naming grammar.
	ErrInvalidName = errors.New("invalid name")
	// ErrTooLarge is returned by Publish when the encoded payload exceeds
	// the bus's MaxEventSize.
	ErrTooLarge = errors.New("event too large")
	// ErrDuplicateHandler is returned by On when the handler name is
	// already registered on this bus.
	ErrDuplicateHandler = errors.New("duplicate handler name")
	// ErrUnknownTransport is returned by Open for a URL scheme whose
	// transport package has not been imported.
	ErrUnknownTransport = errors.New("unknown transport")
	// ErrUnknownHandler is returned by dead-letter and replay calls that
	// name a handler the transport does not know.
	ErrUnknownHandler = errors.New("unknown handler")
	// ErrOutcomeUnknown is returned by Publish when the connection to the
	// transport failed after the event was sent and before it was
	// acknowledged: the event may or may not be stored. Publishing it again
	// with the same id (WithID(ev.ID)) is safe; deduplication stores it
	// at most once.
	ErrOutcomeUnknown = transport.ErrOutcomeUnknown
	// ErrStorageFull is returned when the transport's disk or memory is
	// full. Nothing of the failed call was stored.
	ErrStorageFull = transport.ErrStorageFull
	// ErrCorrupt is returned when the transport's stored data is damaged;
	// the error says what to do.
	ErrCorrupt = transport.ErrCorrupt
)

// NotSupportedError reports an option a transport cannot honour. It
// matches ErrNotSupported.
type NotSupportedError struct {
	Transport string // transport name, for example "kafka"
	Option    string // option name, for example "WithPriority"
	Hint      string // what to do instead, if anything
}

func (e *NotSupportedError) Error() string {
	msg := fmt.Sprintf("ripple: %s is not supported by the %s transport", e.Option, e.Transport)
	if e.Hint != "" {
		msg += ": " + e.Hint
	}
	return msg
}

// Is makes errors.Is(err, ErrNotSupported) true.
func (e *NotSupportedError) Is(target error) bool { return target == ErrNotSupported }

type permanentError struct{ err error }

func (e *permanentError) Error() string { return "permanent: " + e.err.Error() }
func (e *permanentError) Unwrap() error { return e.err }

// Permanent wraps err so that the handler is not retried: the event goes
// straight to the handler's dead-letter queue with err's text. Use it for
// failures no retry can fix, such as a payload that does not decode.
// Permanent(nil) is nil, like the error it wraps: a handler that returns
// Permanent(err) with a nil err succeeds.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return &permanentError{err: err}
}

// IsPermanent reports whether err was made by Permanent.
func IsPermanent(err error) bool {
	var p *permanentError
	return errors.As(err, &p)
}

type retryAfterError struct {
	err   error
	delay time.Duration
}

func (e *retryAfterError) Error() string {
	return fmt.Sprintf("retry after %s: %v", e.delay, e.err)
}
func (e *retryAfterError) Unwrap() error { return e.err }

// RetryAfter wraps err so that the next attempt waits delay instead of the
// handler's backoff, for example when a remote API answered 429 with a
// Retry-After header. The attempt still counts against MaxAttempts.
func RetryAfter(delay time.Duration, err error) error {
	if err == nil {
		err = errors.New("retry requested")
	}
	if delay < 0 {
		delay = 0
	}
	return &retryAfterError{err: err, delay: delay}
}

func retryDelay(err error) (time.Duration, bool) {
	var r *retryAfterError
	if errors.As(err, &r) {
		return r.delay, true
	}
	return 0, false
}

func invalidOption(format string, args ...any) error {
	return fmt.Errorf("ripple: %w: %s", ErrInvalidOption, fmt.Sprintf(format, args...))
}
