package ripple_test

import (
	"context"
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/ripplehq/ripple"
)

// What MarshalJSON writes, UnmarshalJSON reads back: every attribute and
// extension, and the payload whether it went out inline or as base64.
func TestEventJSONRoundTrip(t *testing.T) {
	at := time.Date(2026, 3, 1, 12, 30, 45, 123456789, time.UTC)
	for _, ev := range []ripple.Event{
		{ID: "e1", Type: "user.signup.completed", Source: "ripple://app", Subject: "user-42", Time: at,
			DataContentType: "application/json", DataSchema: "https://example.com/schemas/signup.json",
			DataVersion: 2, CorrelationID: "c1", CausationID: "p1", Key: "user-42",
			TraceParent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
			Headers:     map[string]string{"tenant": "acme", "region": "eu1"}, Data: []byte(`{"email":"ada@example.com"}`)},
		{ID: "e2", Type: "file.uploaded", Source: "/storage", Time: at, DataContentType: "application/octet-stream", Data: []byte{0, 1, 2, 255}},
		{ID: "e3", Type: "note.added", Source: "/notes", Time: at, DataContentType: "text/plain; charset=utf-8", Data: []byte("hello, world")},
		{ID: "e4", Type: "order.placed", Source: "/shop", Time: at, DataContentType: "application/vnd.shop.order+json", Data: []byte(`{"n":1}`)},
		{ID: "e5", Type: "order.placed", Source: "/shop", Time: at},
	} {
		b, err := json.Marshal(ev)
		if err != nil {
			t.Fatal(err)
		}
		var got ripple.Event
		if err := json.Unmarshal(b, &got); err != nil {
			t.Fatalf("%s: unmarshal %s: %v", ev.ID, b, err)
		}
		if !got.Time.Equal(ev.Time) {
			t.Errorf("%s: time %s, want %s", ev.ID, got.Time, ev.Time)
		}
		got.Time = ev.Time
		if !reflect.DeepEqual(got, ev) {
			t.Errorf("%s: round trip through %s\n got %+v\nwant %+v", ev.ID, b, got, ev)
		}
	}

	// What ripple dlq list --json prints reads back too.
	dl := []ripple.DeadLetter{{Event: ripple.Event{ID: "d1", Type: "a.b", Source: "/s", Time: at, DataContentType: "application/json", Data: []byte(`{"n":1}`)},
		Handler: "h", Attempts: 3, Error: "boom", First: at, DeadAt: at}}
	b, err := json.Marshal(dl)
	if err != nil {
		t.Fatal(err)
	}
	var back []ripple.DeadLetter
	if err := json.Unmarshal(b, &back); err != nil || len(back) != 1 || back[0].Event.ID != "d1" || string(back[0].Event.Data) != `{"n":1}` || back[0].Attempts != 3 {
		t.Errorf("dead letters through %s: %v %+v", b, err, back)
	}
}

// JSON payloads go out inline whatever JSON media type names them; others
// go out as data_base64.
func TestEventJSONInlinesJSONMediaTypes(t *testing.T) {
	for ct, inline := range map[string]bool{
		"":                                true,
		"application/json":                true,
		"application/json; charset=utf-8": true,
		"text/json":                       true,
		"application/cloudevents+json":    true,
		"application/vnd.acme.order+json": true,
		"Application/Problem+JSON":        true,
		"text/plain":                      false,
		"application/octet-stream":        false,
		"application/jsonl":               false,
	} {
		b, err := json.Marshal(ripple.Event{ID: "1", Type: "a.b", Source: "/s", DataContentType: ct, Data: []byte(`{"x":1}`)})
		if err != nil {
			t.Fatal(err)
		}
		var m map[string]json.RawMessage
		if err := json.Unmarshal(b, &m); err != nil {
			t.Fatal(err)
		}
		_, data := m["data"]
		_, b64 := m["data_base64"]
		if data != inline || b64 == inline {
			t.Errorf("%q: %s; want inline data %v", ct, b, inline)
		}
	}
}

// CloudEvents JSON as other producers write it.
func TestEventUnmarshalCloudEvents(t *testing.T) {
	var e ripple.Event
	in := `{"specversion":"1.0","id":"A234-1234-1234","source":"https://github.com/cloudevents/spec/pull",
		"subject":"123","type":"com.github.pull_request.opened","time":"2018-04-05T17:31:00Z",
		"comexampleextension1":"value","comexampleothervalue":5,"flag":true,"dataversion":"3",
		"datacontenttype":"text/xml","data":"<much wow=\"xml\"/>"}`
	if err := json.Unmarshal([]byte(in), &e); err != nil {
		t.Fatal(err)
	}
	want := ripple.Event{ID: "A234-1234-1234", Source: "https://github.com/cloudevents/spec/pull", Subject: "123",
		Type: "com.github.pull_request.opened", Time: time.Date(2018, 4, 5, 17, 31, 0, 0, time.UTC),
		DataContentType: "text/xml", DataVersion: 3, Data: []byte(`<much wow="xml"/>`),
		Headers: map[string]string{"comexampleextension1": "value", "comexampleothervalue": "5", "flag": "true"}}
	if !reflect.DeepEqual(e, want) {
		t.Errorf("got  %+v\nwant %+v", e, want)
	}

	if err := json.Unmarshal([]byte(`{"specversion":"1.0","id":"1","source":"/s","type":"a.b","data_base64":"AAEC"}`), &e); err != nil || string(e.Data) != "\x00\x01\x02" {
		t.Errorf("data_base64: %v %q", err, e.Data)
	}
	if err := json.Unmarshal([]byte(`{"specversion":"1.0","id":"1","source":"/s","type":"a.b","data": {"a" : [1, 2]}}`), &e); err != nil || string(e.Data) != `{"a":[1,2]}` {
		t.Errorf("JSON data: %v %q", err, e.Data)
	}

	for in, want := range map[string]string{
		`{"id":"1","source":"/s","type":"a.b"}`:                                               "no specversion",
		`{"specversion":"0.3","id":"1","source":"/s","type":"a.b"}`:                           `specversion "0.3"`,
		`{"specversion":"1.0","source":"/s","type":"a.b"}`:                                    `"id"`,
		`{"specversion":"1.0","id":"1","type":"a.b"}`:                                         `"source"`,
		`{"specversion":"1.0","id":"1","source":"/s","type":7}`:                               `"type" is 7`,
		`{"specversion":"1.0","id":"1","source":"/s","type":"a.b","time":"yesterday"}`:        "RFC 3339",
		`{"specversion":"1.0","id":"1","source":"/s","type":"a.b","data":1,"data_base64":""}`: "both data and data_base64",
		`{"specversion":"1.0","id":"1","source":"/s","type":"a.b","data_base64":"!!"}`:        "not base64",
		`{"specversion":"1.0","id":"1","source":"/s","type":"a.b","dataversion":"v2"}`:        "dataversion",
		`[1]`: "decode CloudEvents JSON",
	} {
		err := json.Unmarshal([]byte(in), &e)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: error %v, want one mentioning %s", in, err, want)
		}
	}
}

// WithSubject, WithDataSchema and WithEventTime reach the handler; the
// attributes WithHeader cannot set name the option that does.
func TestPublishCloudEventsAttributes(t *testing.T) {
	ctx := context.Background()
	bus := newMemoryBus(t)
	got := make(chan ripple.Event, 1)
	if err := bus.On("invoice.paid", "books", func(_ context.Context, e ripple.Event) error {
		got <- e
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := bus.Start(ctx); err != nil {
		t.Fatal(err)
	}
	happened := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	sent, err := bus.Publish(ctx, "invoice.paid", map[string]int{"cents": 1200},
		ripple.WithSubject("invoice-7"), ripple.WithDataSchema("https://example.com/schemas/invoice-paid.json"),
		ripple.WithEventTime(happened), ripple.WithDeliverAt(time.Now().Add(-time.Minute)))
	if err != nil {
		t.Fatal(err)
	}
	var e ripple.Event
	select {
	case e = <-got:
	case <-time.After(10 * time.Second):
		t.Fatal("the event was not delivered")
	}
	for _, ev := range []ripple.Event{sent, e} {
		if ev.Subject != "invoice-7" || ev.DataSchema != "https://example.com/schemas/invoice-paid.json" || !ev.Time.Equal(happened) || len(ev.Headers) != 0 {
			t.Errorf("event %+v: want subject, dataschema and the event time set, no headers", ev)
		}
	}
	b, _ := json.Marshal(e)
	if !strings.Contains(string(b), `"subject":"invoice-7"`) || !strings.Contains(string(b), `"dataschema":"https://example.com/schemas/invoice-paid.json"`) {
		t.Errorf("CloudEvents JSON %s lacks subject or dataschema", b)
	}

	for name, opt := range map[string]string{"subject": "WithSubject", "dataschema": "WithDataSchema", "time": "WithEventTime", "partitionkey": "WithKey"} {
		_, err := bus.Publish(ctx, "invoice.paid", 1, ripple.WithHeader(name, "x"))
		if !errors.Is(err, ripple.ErrInvalidOption) || !strings.Contains(err.Error(), opt) {
			t.Errorf("WithHeader(%q): %v, want an error naming %s", name, err, opt)
		}
	}
	for _, o := range []ripple.PublishOption{ripple.WithSubject(""), ripple.WithDataSchema("schemas/x.json"),
		ripple.WithDataSchema(""), ripple.WithEventTime(time.Time{}), ripple.WithDeliverAt(time.Time{})} {
		if _, err := bus.Publish(ctx, "invoice.paid", 1, o); !errors.Is(err, ripple.ErrInvalidOption) {
			t.Errorf("bad option accepted: %v", err)
		}
	}
}
