package bench

import (
	"bytes"
	"strconv"
	"strings"
	"time"
)

// PayloadSize is the size in bytes of every benchmark event's JSON payload.
const PayloadSize = 200

// EventType is the event name every system publishes and subscribes to.
const EventType = "bench.event.created"

// The payload is {"seq":"…","sent":"…","pad":"…"} with both numbers written
// as 20 zero-padded digits, so that every payload has exactly PayloadSize
// bytes whatever its values, and is valid JSON for systems that parse it.
const (
	payloadHead = `{"seq":"`
	payloadSent = `","sent":"`
	payloadPad  = `","pad":"`
	payloadTail = `"}`
	digits      = 20
	padLen      = PayloadSize - len(payloadHead) - len(payloadSent) - len(payloadPad) - len(payloadTail) - 2*digits
)

var sentKey = []byte(`"sent":`)

// NewPayload returns a 200-byte JSON event carrying seq and sent, the time
// the event is meant to be published, which the handler side reads back to
// measure latency.
func NewPayload(seq int64, sent time.Time) []byte {
	b := make([]byte, 0, PayloadSize)
	b = append(b, payloadHead...)
	b = appendPadded(b, seq)
	b = append(b, payloadSent...)
	b = appendPadded(b, sent.UnixNano())
	b = append(b, payloadPad...)
	b = append(b, strings.Repeat("x", padLen)...)
	b = append(b, payloadTail...)
	return b
}

func appendPadded(b []byte, v int64) []byte {
	s := strconv.FormatInt(v, 10)
	for i := len(s); i < digits; i++ {
		b = append(b, '0')
	}
	return append(b, s...)
}

// SentTime reads the sent time back from a payload made by NewPayload. It
// searches for the field rather than using a fixed offset because some
// systems deliver the payload wrapped in their own envelope. It reports
// false for data that holds no such field. It accepts a space after the
// colon, as PostgreSQL's jsonb writes the payload back (River on Postgres).
func SentTime(data []byte) (time.Time, bool) {
	i := bytes.Index(data, sentKey)
	if i < 0 {
		return time.Time{}, false
	}
	i += len(sentKey)
	for i < len(data) && data[i] == ' ' {
		i++
	}
	if i >= len(data) || data[i] != '"' || len(data) < i+1+digits {
		return time.Time{}, false
	}
	v, err := strconv.ParseInt(string(data[i+1:i+1+digits]), 10, 64)
	if err != nil {
		return time.Time{}, false
	}
	return time.Unix(0, v), true
}
