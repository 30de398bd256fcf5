package kafka

import (
	"strconv"
	"strings"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ripplehq/ripple/transport"
)

// Record headers. The event is written in the CloudEvents Kafka binding's
// binary mode: ce_id, ce_type, ce_time and one ce_ header per other
// attribute, the data as the record value, the partition key as the record
// key, datacontenttype as content-type. Ripple's own bookkeeping headers
// start with ripple_.
const (
	hID          = "ce_id"
	hType        = "ce_type"
	hTime        = "ce_time"
	hSpec        = "ce_specversion"
	hContentType = "content-type"
	hAttrPrefix  = "ce_"

	hDue      = "ripple_due"      // unix ms before which the record is not delivered
	hAttempts = "ripple_attempts" // attempts already used (retry copies)
	hFirst    = "ripple_first"    // unix ms of the first delivery
	hError    = "ripple_error"    // the last error (dead letters)
	hDeadAt   = "ripple_dead_at"  // unix ms (dead letters)
	hRemoved  = "ripple_removed"  // dead-letter marker: offset of the removed dead letter
	hOrigin   = "ripple_origin"   // events-topic partition/offset a copy came from
)

// encode builds a record for m.
func encode(m *transport.Message, topic string, now time.Time) *kgo.Record {
	r := &kgo.Record{Topic: topic, Value: m.Data, Timestamp: now}
	if m.Key != "" {
		r.Key = []byte(m.Key)
	}
	h := make([]kgo.RecordHeader, 0, 4+len(m.Attrs))
	h = append(h,
		kgo.RecordHeader{Key: hSpec, Value: []byte("1.0")},
		kgo.RecordHeader{Key: hID, Value: []byte(m.ID)},
		kgo.RecordHeader{Key: hType, Value: []byte(m.Type)},
	)
	if !m.Time.IsZero() {
		h = append(h, kgo.RecordHeader{Key: hTime, Value: []byte(m.Time.UTC().Format(time.RFC3339Nano))})
	}
	for k, v := range m.Attrs {
		if k == "datacontenttype" {
			h = append(h, kgo.RecordHeader{Key: hContentType, Value: []byte(v)})
			continue
		}
		h = append(h, kgo.RecordHeader{Key: hAttrPrefix + k, Value: []byte(v)})
	}
	r.Headers = h
	return r
}

// decoded is a record read back.
type decoded struct {
	msg      transport.Message
	due      time.Time
	attempts int
	first    time.Time
	err      string
	deadAt   time.Time
	removed  int64 // offset of a removed dead letter; -1 if not a marker
	origin   string
}

// decode reads a record written by encode (or a retry, dead-letter or
// marker copy of one).
func decode(r *kgo.Record) decoded {
	d := decoded{removed: -1}
	d.msg.Data = r.Value
	if len(r.Key) > 0 {
		d.msg.Key = string(r.Key)
	}
	for _, h := range r.Headers {
		v := string(h.Value)
		switch h.Key {
		case hID:
			d.msg.ID = v
		case hType:
			d.msg.Type = v
		case hSpec:
		case hTime:
			d.msg.Time, _ = time.Parse(time.RFC3339Nano, v)
		case hContentType:
			d.attr("datacontenttype", v)
		case hDue:
			d.due = unixMilli(v)
		case hAttempts:
			d.attempts, _ = strconv.Atoi(v)
		case hFirst:
			d.first = unixMilli(v)
		case hError:
			d.err = v
		case hDeadAt:
			d.deadAt = unixMilli(v)
		case hRemoved:
			if n, err := strconv.ParseInt(v, 10, 64); err == nil {
				d.removed = n
			}
		case hOrigin:
			d.origin = v
		default:
			if k, ok := strings.CutPrefix(h.Key, hAttrPrefix); ok {
				d.attr(k, v)
			}
		}
	}
	return d
}

func (d *decoded) attr(k, v string) {
	if d.msg.Attrs == nil {
		d.msg.Attrs = map[string]string{}
	}
	d.msg.Attrs[k] = v
}

func unixMilli(v string) time.Time {
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n <= 0 {
		return time.Time{}
	}
	return time.UnixMilli(n)
}

func msHeader(k string, t time.Time) kgo.RecordHeader {
	return kgo.RecordHeader{Key: k, Value: []byte(strconv.FormatInt(t.UnixMilli(), 10))}
}

// copyRecord is a copy of a message for a handler's retry or dead-letter
// topic, with bookkeeping headers.
func copyRecord(m *transport.Message, topic string, now time.Time, extra ...kgo.RecordHeader) *kgo.Record {
	r := encode(m, topic, now)
	r.Headers = append(r.Headers, extra...)
	return r
}

// typeOf returns a record's event type without decoding the rest.
func typeOf(r *kgo.Record) string {
	for _, h := range r.Headers {
		if h.Key == hType {
			return string(h.Value)
		}
	}
	return ""
}
