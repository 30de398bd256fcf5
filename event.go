package ripple

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"
	"time"

	"github.com/google/uuid"
	"github.com/ripplehq/ripple/transport"
)

// CloudEvents attribute names Ripple stores beside the data.
const (
	attrSource          = "source"
	attrDataContentType = "datacontenttype"
	attrDataVersion     = "dataversion"
	attrCorrelationID   = "correlationid"
	attrCausationID     = "causationid"
	attrTraceParent     = "traceparent"
	attrSpecVersion     = "specversion"
)

// Event is a CloudEvents 1.0 event with Ripple's extensions. Handlers
// receive it; Publish returns the stored one.
type Event struct {
	// ID is unique and time-ordered (UUIDv7) unless set with WithID.
	ID string
	// Type is the event name, such as "user.signup.completed".
	Type string
	// Source identifies the publisher (CloudEvents "source").
	Source string
	// Time is when the event was published.
	Time time.Time
	// DataContentType is the media type of Data, "application/json" for
	// payloads Ripple encoded.
	DataContentType string
	// DataVersion is the payload's schema version (extension
	// "dataversion"); 0 when unset.
	DataVersion int
	// CorrelationID ties together every event caused by one request
	// (extension "correlationid"). A handler that publishes with its ctx
	// passes it on.
	CorrelationID string
	// CausationID is the id of the event whose handler published this one
	// (extension "causationid").
	CausationID string
	// Key is the ordering key (extension "partitionkey").
	Key string
	// TraceParent is the W3C trace context (extension "traceparent").
	TraceParent string
	// Priority orders waiting events for one handler, higher first.
	Priority int
	// Headers holds other extension attributes set with WithHeader.
	Headers map[string]string
	// Data is the encoded payload.
	Data []byte

	// Attempt is, in a handler, the 1-based number of this attempt.
	Attempt int
	// Handler is, in a handler, the handler's name.
	Handler string
	// Duplicate is set on the event Publish returns when an event with the
	// same source and id was already stored: nothing new was stored, and
	// the returned event is the one kept (its time and data are the first
	// publish's). Publishing again after a lost reply is therefore safe,
	// and a caller that reused an id by mistake can tell.
	Duplicate bool
}

// Decode unmarshals the event's JSON data into v. In a handler, wrap a
// decode error with Permanent: no retry will make bad data decode.
func (e Event) Decode(v any) error {
	if len(e.Data) == 0 {
		return fmt.Errorf("ripple: event %s (%s) has no data to decode", e.ID, e.Type)
	}
	if err := json.Unmarshal(e.Data, v); err != nil {
		return fmt.Errorf("ripple: decode %s (%s) into %T: %w", e.ID, e.Type, v, err)
	}
	return nil
}

// MarshalJSON writes the event in CloudEvents JSON structured format, so
// any CloudEvents tool can read it.
func (e Event) MarshalJSON() ([]byte, error) {
	m := map[string]any{
		attrSpecVersion: "1.0",
		"id":            e.ID,
		"type":          e.Type,
		"source":        e.Source,
		"time":          e.Time.UTC().Format(time.RFC3339Nano),
	}
	if e.DataContentType != "" {
		m[attrDataContentType] = e.DataContentType
	}
	if e.DataVersion != 0 {
		m[attrDataVersion] = e.DataVersion
	}
	if e.CorrelationID != "" {
		m[attrCorrelationID] = e.CorrelationID
	}
	if e.CausationID != "" {
		m[attrCausationID] = e.CausationID
	}
	if e.Key != "" {
		m["partitionkey"] = e.Key
	}
	if e.TraceParent != "" {
		m[attrTraceParent] = e.TraceParent
	}
	for k, v := range e.Headers {
		if _, taken := m[k]; !taken {
			m[k] = v
		}
	}
	if len(e.Data) > 0 {
		if e.DataContentType == "" || e.DataContentType == "application/json" {
			if json.Valid(e.Data) {
				m["data"] = json.RawMessage(e.Data)
			} else {
				m["data_base64"] = e.Data
			}
		} else {
			m["data_base64"] = e.Data
		}
	}
	return json.Marshal(m)
}

// newID returns a time-ordered UUIDv7.
func newID() string {
	id, err := uuid.NewV7()
	if err != nil {
		// NewV7 fails only when the system's random source does; a random
		// v4 still gives a unique id.
		return uuid.NewString()
	}
	return id.String()
}

// size is the event's size for MaxEventSize: its payload and every
// string it carries besides.
func (e *Event) size() int {
	n := len(e.Data) + len(e.ID) + len(e.Type) + len(e.Source) + len(e.DataContentType) +
		len(e.CorrelationID) + len(e.CausationID) + len(e.TraceParent) + len(e.Key)
	for k, v := range e.Headers {
		n += len(k) + len(v)
	}
	return n
}

// toMessage converts an event to the transport's representation.
func (e *Event) toMessage(delay time.Duration) *transport.Message {
	attrs := make(map[string]string, 6+len(e.Headers))
	for k, v := range e.Headers {
		attrs[k] = v
	}
	attrs[attrSource] = e.Source
	if e.DataContentType != "" {
		attrs[attrDataContentType] = e.DataContentType
	}
	if e.DataVersion != 0 {
		attrs[attrDataVersion] = strconv.Itoa(e.DataVersion)
	}
	if e.CorrelationID != "" {
		attrs[attrCorrelationID] = e.CorrelationID
	}
	if e.CausationID != "" {
		attrs[attrCausationID] = e.CausationID
	}
	if e.TraceParent != "" {
		attrs[attrTraceParent] = e.TraceParent
	}
	return &transport.Message{
		ID:       e.ID,
		Type:     e.Type,
		Key:      e.Key,
		Priority: e.Priority,
		Time:     e.Time,
		Delay:    delay,
		Attrs:    attrs,
		Data:     e.Data,
	}
}

// eventFromMessage rebuilds an event from the transport's representation.
func eventFromMessage(m *transport.Message) Event {
	e := Event{
		ID:       m.ID,
		Type:     m.Type,
		Key:      m.Key,
		Priority: m.Priority,
		Time:     m.Time,
		Data:     m.Data,
	}
	for k, v := range m.Attrs {
		switch k {
		case attrSource:
			e.Source = v
		case attrDataContentType:
			e.DataContentType = v
		case attrDataVersion:
			e.DataVersion, _ = strconv.Atoi(v)
		case attrCorrelationID:
			e.CorrelationID = v
		case attrCausationID:
			e.CausationID = v
		case attrTraceParent:
			e.TraceParent = v
		default:
			if e.Headers == nil {
				e.Headers = make(map[string]string)
			}
			e.Headers[k] = v
		}
	}
	return e
}

// encodeData turns a payload into bytes and a content type.
func encodeData(data any) ([]byte, string, error) {
	switch d := data.(type) {
	case nil:
		return nil, "", fmt.Errorf("ripple: %w: payload is nil; publish a struct or map, or json.RawMessage(\"{}\") for an event without data", ErrInvalidOption)
	case json.RawMessage:
		if !json.Valid(d) {
			return nil, "", fmt.Errorf("ripple: %w: json.RawMessage payload is not valid JSON", ErrInvalidOption)
		}
		return bytes.Clone(d), "application/json", nil
	case []byte:
		return bytes.Clone(d), "application/octet-stream", nil
	}
	b, err := json.Marshal(data)
	if err != nil {
		return nil, "", fmt.Errorf("ripple: %w: payload of type %T does not encode to JSON: %v", ErrInvalidOption, data, err)
	}
	if string(b) == "null" {
		// A nil pointer, map or slice: refused like a plain nil.
		return nil, "", fmt.Errorf("ripple: %w: payload (%T) is nil and encodes to JSON null; publish a value, or json.RawMessage(\"{}\") for an event without data", ErrInvalidOption, data)
	}
	return b, "application/json", nil
}
