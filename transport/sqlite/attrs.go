package sqlite

import "encoding/binary"

// encodeAttrs stores attributes as length-prefixed strings: compact, and
// cheaper on the publish path than JSON, which would reflect.
func encodeAttrs(m map[string]string) []byte {
	if len(m) == 0 {
		return nil
	}
	n := binary.MaxVarintLen64
	for k, v := range m {
		n += len(k) + len(v) + 2*binary.MaxVarintLen64
	}
	b := make([]byte, 0, n)
	b = binary.AppendUvarint(b, uint64(len(m)))
	for k, v := range m {
		b = binary.AppendUvarint(b, uint64(len(k)))
		b = append(b, k...)
		b = binary.AppendUvarint(b, uint64(len(v)))
		b = append(b, v...)
	}
	return b
}

// decodeAttrs is the inverse of encodeAttrs; damaged input yields what could
// be read rather than an error, since attributes are advisory metadata.
func decodeAttrs(b []byte) map[string]string {
	if len(b) == 0 {
		return nil
	}
	cnt, n := binary.Uvarint(b)
	if n <= 0 || cnt > uint64(len(b)) {
		return nil
	}
	b = b[n:]
	m := make(map[string]string, cnt)
	next := func() (string, bool) {
		l, n := binary.Uvarint(b)
		if n <= 0 || l > uint64(len(b)-n) {
			return "", false
		}
		s := string(b[n : n+int(l)])
		b = b[n+int(l):]
		return s, true
	}
	for i := uint64(0); i < cnt; i++ {
		k, ok := next()
		if !ok {
			break
		}
		v, ok := next()
		if !ok {
			break
		}
		m[k] = v
	}
	return m
}
