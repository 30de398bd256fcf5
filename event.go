package ripple

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"mime"
	"strconv"
	"strings"
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
	attrSubject         = "subject"
	attrDataSchema      = "dataschema"
	attrPartitionKey    = "partitionkey"
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
	// Subject is what the event is about within its source, such as the
	// id of the user a "user.signup.completed" event concerns
	// (CloudEvents "subject"); empty when unset. See WithSubject.
	Subject string
	// Time is when the event happened (CloudEvents "time"): when it was
	// published unless the publisher set it with WithEventTime.
	Time time.Time
	// DataContentType is the media type of Data, "application/json" for
	// payloads Ripple encoded.
	DataContentType string
	// DataSchema is the URI of the schema Data adheres to (CloudEvents
	// "dataschema"); empty when unset. See WithDataSchema.
	DataSchema string
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
// any CloudEvents tool can read it: the attributes, the extensions
// (Ripple's and Headers) as top-level members, and the payload as "data"
// when its content type is JSON (application/json, text/json or
// application/*+json, or none) and it is valid JSON, else as
// "data_base64". Priority and the handler-side fields (Attempt, Handler,
// Duplicate) are delivery details, not part of the event, and are not
// written. UnmarshalJSON reads the same form back.
func (e Event) MarshalJSON() ([]byte, error) {
	m := map[string]any{
		attrSpecVersion: "1.0",
		"id":            e.ID,
		"type":          e.Type,
		"source":        e.Source,
		"time":          e.Time.UTC().Format(time.RFC3339Nano),
	}
	if e.Subject != "" {
		m[attrSubject] = e.Subject
	}
	if e.DataContentType != "" {
		m[attrDataContentType] = e.DataContentType
	}
	if e.DataSchema != "" {
		m[attrDataSchema] = e.DataSchema
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
		m[attrPartitionKey] = e.Key
	}
	if e.TraceParent != "" {
		m[attrTraceParent] = e.TraceParent
	}
	for k, v := range e.Headers {
		if _, taken := m[k]; !taken && !reservedAttrs[k] {
			m[k] = v
		}
	}
	if len(e.Data) > 0 {
		if isJSONMediaType(e.DataContentType) && json.Valid(e.Data) {
			m["data"] = json.RawMessage(e.Data)
		} else {
			m["data_base64"] = e.Data
		}
	}
	return json.Marshal(m)
}

// isJSONMediaType reports whether a datacontenttype says JSON, as
// CloudEvents' JSON format reads it: empty (JSON is the format's
// default), application/json, text/json or any application/*+json, with
// or without parameters such as charset.
func isJSONMediaType(ct string) bool {
	if ct == "" {
		return true
	}
	mt, _, err := mime.ParseMediaType(ct)
	if err != nil {
		mt = strings.ToLower(strings.TrimSpace(strings.Split(ct, ";")[0]))
	}
	return mt == "application/json" || mt == "text/json" ||
		strings.HasPrefix(mt, "application/") && strings.HasSuffix(mt, "+json")
}

// UnmarshalJSON reads an event in CloudEvents 1.0 JSON structured format,
// such as MarshalJSON writes or a CloudEvents SDK produces. specversion
// must be "1.0" and id, source and type present. Ripple's extensions go
// to their fields (partitionkey to Key, dataversion to DataVersion,
// correlationid, causationid, traceparent); every other extension goes to
// Headers, its value in CloudEvents' string form (a number 7 becomes
// "7"). "data" becomes Data: as JSON text for a JSON content type, and
// for other content types a JSON string's text (a text/plain "hi" gives
// the two bytes hi); "data_base64" is decoded. Priority, Attempt, Handler
// and Duplicate are left zero: they are not part of the event.
func (e *Event) UnmarshalJSON(b []byte) error {
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(b, &raw); err != nil {
		return fmt.Errorf("ripple: decode CloudEvents JSON: %w", err)
	}
	if raw == nil {
		return errors.New("ripple: decode CloudEvents JSON: null is not an event")
	}
	var out Event
	str := func(name string) (string, bool, error) {
		v, ok := raw[name]
		if !ok || string(v) == "null" {
			return "", false, nil
		}
		var s string
		if err := json.Unmarshal(v, &s); err != nil {
			return "", true, fmt.Errorf("ripple: decode CloudEvents JSON: attribute %q is %s, want a string", name, v)
		}
		return s, true, nil
	}
	spec, ok, err := str(attrSpecVersion)
	switch {
	case err != nil:
		return err
	case !ok:
		return errors.New("ripple: decode CloudEvents JSON: no specversion; a CloudEvents 1.0 event has \"specversion\":\"1.0\"")
	case spec != "1.0":
		return fmt.Errorf("ripple: decode CloudEvents JSON: specversion %q; Ripple reads CloudEvents 1.0", spec)
	}
	for _, f := range []struct {
		name     string
		dst      *string
		required bool
	}{
		{"id", &out.ID, true},
		{"type", &out.Type, true},
		{"source", &out.Source, true},
		{attrSubject, &out.Subject, false},
		{attrDataContentType, &out.DataContentType, false},
		{attrDataSchema, &out.DataSchema, false},
		{attrCorrelationID, &out.CorrelationID, false},
		{attrCausationID, &out.CausationID, false},
		{attrTraceParent, &out.TraceParent, false},
		{attrPartitionKey, &out.Key, false},
	} {
		v, ok, err := str(f.name)
		if err != nil {
			return err
		}
		if f.required && (!ok || v == "") {
			return fmt.Errorf("ripple: decode CloudEvents JSON: required attribute %q is missing or empty", f.name)
		}
		*f.dst = v
	}
	if t, ok, err := str("time"); err != nil {
		return err
	} else if ok {
		if out.Time, err = time.Parse(time.RFC3339Nano, t); err != nil {
			return fmt.Errorf("ripple: decode CloudEvents JSON: time %q is not an RFC 3339 timestamp", t)
		}
	}
	if v, ok := raw[attrDataVersion]; ok && string(v) != "null" {
		text := extensionText(v)
		n, err := strconv.Atoi(text)
		if err != nil || n < 0 {
			return fmt.Errorf("ripple: decode CloudEvents JSON: dataversion %s is not a non-negative integer", v)
		}
		out.DataVersion = n
	}
	data, hasData := raw["data"]
	b64, hasB64 := raw["data_base64"]
	switch {
	case hasData && hasB64:
		return errors.New("ripple: decode CloudEvents JSON: both data and data_base64 are present; an event has one or the other")
	case hasB64 && string(b64) != "null":
		var enc string
		if err := json.Unmarshal(b64, &enc); err != nil {
			return errors.New("ripple: decode CloudEvents JSON: data_base64 is not a string")
		}
		if out.Data, err = base64.StdEncoding.DecodeString(enc); err != nil {
			return fmt.Errorf("ripple: decode CloudEvents JSON: data_base64 is not base64: %v", err)
		}
	case hasData && string(data) != "null":
		var text string
		if !isJSONMediaType(out.DataContentType) && json.Unmarshal(data, &text) == nil {
			out.Data = []byte(text)
		} else {
			var buf bytes.Buffer
			if err := json.Compact(&buf, data); err != nil {
				return fmt.Errorf("ripple: decode CloudEvents JSON: data: %v", err)
			}
			out.Data = buf.Bytes()
		}
	}
	for k, v := range raw {
		if reservedAttrs[k] || k == attrSpecVersion || string(v) == "null" {
			continue
		}
		if out.Headers == nil {
			out.Headers = make(map[string]string)
		}
		out.Headers[k] = extensionText(v)
	}
	*e = out
	return nil
}

// extensionText is an extension value's CloudEvents string form: a
// JSON string's text, or the JSON text of a number or boolean.
func extensionText(v json.RawMessage) string {
	var s string
	if json.Unmarshal(v, &s) == nil {
		return s
	}
	return string(bytes.TrimSpace(v))
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
	n := len(e.Data) + len(e.ID) + len(e.Type) + len(e.Source) + len(e.DataContentType) + len(e.Subject) + len(e.DataSchema) +
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
	if e.Subject != "" {
		attrs[attrSubject] = e.Subject
	}
	if e.DataSchema != "" {
		attrs[attrDataSchema] = e.DataSchema
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
	var e Event
	e.setFromMessage(m)
	return e
}

// setFromMessage sets e, a zero Event, from the transport's
// representation, in place: a handler's event is built inside its flight
// without a copy.
func (e *Event) setFromMessage(m *transport.Message) {
	e.ID, e.Type, e.Key, e.Priority, e.Time, e.Data = m.ID, m.Type, m.Key, m.Priority, m.Time, m.Data
	a := m.Attrs
	if len(a) == 0 {
		return
	}
	// Looking the known attributes up costs less than iterating the map,
	// whose iterator set-up dominates for the few attributes an event
	// carries; only other attributes (headers) need the iteration.
	known := take(a, attrSource, &e.Source) + take(a, attrDataContentType, &e.DataContentType) +
		// Publish sets a correlation id on every event (its own id
		// unless the publisher or a parent event gave one).
		take(a, attrCorrelationID, &e.CorrelationID)
	if known == len(a) {
		return // the common case: a source, a content type and a correlation id
	}
	known += take(a, attrSubject, &e.Subject) + take(a, attrDataSchema, &e.DataSchema) +
		take(a, attrCausationID, &e.CausationID) + take(a, attrTraceParent, &e.TraceParent)
	if v, ok := a[attrDataVersion]; ok {
		e.DataVersion, _ = strconv.Atoi(v)
		known++
	}
	if known == len(a) {
		return
	}
	e.Headers = make(map[string]string, len(a)-known)
	for k, v := range a {
		switch k {
		case attrSource, attrDataContentType, attrSubject, attrDataSchema, attrDataVersion, attrCorrelationID, attrCausationID, attrTraceParent:
		default:
			e.Headers[k] = v
		}
	}
}

// take sets *dst to attribute k of a when a has it, and returns 1 if so.
func take(a map[string]string, k string, dst *string) int {
	v, ok := a[k]
	if !ok {
		return 0
	}
	*dst = v
	return 1
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
