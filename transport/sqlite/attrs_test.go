package sqlite

import (
	"maps"
	"testing"
)

// FuzzDecodeAttrs: decodeAttrs reads the attributes column of a database
// file, which may be damaged or written by something else, so any bytes
// must decode without a panic or a huge allocation (a count or length
// prefix larger than the input); and whatever encodeAttrs writes must
// decode to the same attributes. The seed corpus runs under plain go test;
// go test -fuzz FuzzDecodeAttrs explores further.
func FuzzDecodeAttrs(f *testing.F) {
	f.Add([]byte{}, "source", "urn:x")
	f.Add([]byte{0x02, 0x01, 'a'}, "", "")                                                       // count 2, a truncated key
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01}, "k", "v")          // count 2^64-1
	f.Add([]byte{0x01, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f, 'k'}, "k\x00", "v") // key length 2^63-1
	f.Add([]byte{0x01, 0x01, 'k', 0x05, 'v'}, "tenant", "acme")                                  // value shorter than its length
	f.Add(encodeAttrs(map[string]string{"source": "urn:ripple", "h:tenant": "acme"}), "ü", "\xff\xfe")
	f.Fuzz(func(t *testing.T, raw []byte, k, v string) {
		if m := decodeAttrs(raw); len(m) > len(raw) {
			t.Fatalf("decodeAttrs(%q) returned %d attributes from %d bytes", raw, len(m), len(raw))
		}
		in := map[string]string{k: v, "x" + k: v + "y"}
		if out := decodeAttrs(encodeAttrs(in)); !maps.Equal(in, out) {
			t.Fatalf("decodeAttrs(encodeAttrs(%q)) = %q", in, out)
		}
	})
}
