package transport

import "strings"

// Match reports whether the event type matches the subscription pattern.
// Segments are separated by dots; "*" matches exactly one segment and ">"
// as the last segment matches one or more trailing segments. Both pattern
// and type are assumed valid (package ripple validates them).
func Match(pattern, typ string) bool {
	for {
		pseg, prest, pmore := strings.Cut(pattern, ".")
		if pseg == ">" && !pmore {
			return typ != ""
		}
		tseg, trest, tmore := strings.Cut(typ, ".")
		if pseg != "*" && pseg != tseg {
			return false
		}
		if !pmore || !tmore {
			return pmore == tmore
		}
		pattern, typ = prest, trest
	}
}
