package ripple

import (
	"fmt"
	"strings"
	"unicode"
)

// MaxNameLength is the longest event name, pattern or handler name, in bytes.
const MaxNameLength = 255

// ValidateName checks an event name against Ripple's grammar: lowercase,
// dot-separated, at least two segments, each made of [a-z0-9_-], at most
// 255 bytes. The grammar is the intersection of what every transport
// accepts as a subject, topic or routing key, so a name valid here is valid
// everywhere. Names like "user.signup.completed" pass.
func ValidateName(name string) error {
	return validateSegments(name, "event name", false)
}

// ValidatePattern checks a subscription pattern: an event name whose
// segments may also be "*" (exactly one segment) and whose last segment may
// be ">" (one or more trailing segments). The lone pattern ">" matches
// every event.
func ValidatePattern(pattern string) error {
	if pattern == ">" {
		return nil
	}
	return validateSegments(pattern, "pattern", true)
}

func validateSegments(s, what string, wildcards bool) error {
	bad := func(why string) error {
		return fmt.Errorf("ripple: %w: %s %q %s", ErrInvalidName, what, s, why)
	}
	if s == "" {
		return bad("is empty; use lowercase dot-separated segments such as \"user.signup.completed\"")
	}
	if len(s) > MaxNameLength {
		return bad(fmt.Sprintf("is %d bytes; the limit is %d", len(s), MaxNameLength))
	}
	if !strings.Contains(s, ".") {
		return bad("has one segment; name the entity and what happened, such as \"user.created\"")
	}
	// Segments are walked by index rather than split, as this runs on
	// every publish.
	for start := 0; start <= len(s); {
		end := strings.IndexByte(s[start:], '.')
		last := end < 0
		if last {
			end = len(s)
		} else {
			end += start
		}
		seg := s[start:end]
		start = end + 1
		switch {
		case seg == "":
			return bad("has an empty segment (a leading, trailing or doubled dot)")
		case wildcards && seg == "*":
			continue
		case wildcards && seg == ">":
			if !last {
				return bad("uses \">\" before the last segment; \">\" may only end a pattern")
			}
			continue
		}
		for _, r := range seg {
			if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '_' || r == '-' {
				continue
			}
			switch {
			case r == '*' || r == '>':
				if !wildcards {
					return bad("contains a wildcard; wildcards belong in subscription patterns, not in published names")
				}
				return bad(fmt.Sprintf("mixes %q with other characters in segment %q; a wildcard must be a whole segment", r, seg))
			case r >= 'A' && r <= 'Z':
				return bad("contains upper case; event names are lowercase, such as \"user.signup.completed\"")
			case r > unicode.MaxASCII:
				return bad(fmt.Sprintf("contains the non-ASCII character %q; use [a-z0-9_-]", r))
			default:
				return bad(fmt.Sprintf("contains %q; segments may hold only a-z, 0-9, '_' and '-'", r))
			}
		}
	}
	return nil
}

// ValidateHandlerName checks a handler name: 1 to 128 bytes of
// [a-z0-9_.-], starting with a letter or digit. The handler name is the
// durable subscription's identity on every transport (a consumer group on
// Redis and Kafka, a durable consumer on NATS, a queue on RabbitMQ), so
// renaming a handler starts a new subscription.
func ValidateHandlerName(name string) error {
	bad := func(why string) error {
		return fmt.Errorf("ripple: %w: handler name %q %s", ErrInvalidName, name, why)
	}
	if name == "" {
		return bad("is empty; name what the handler does, such as \"email.welcome\"")
	}
	if len(name) > 128 {
		return bad(fmt.Sprintf("is %d bytes; the limit is 128", len(name)))
	}
	if c := name[0]; !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9') {
		return bad("must start with a lowercase letter or digit")
	}
	for _, r := range name {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '_' || r == '-' || r == '.') {
			return bad(fmt.Sprintf("contains %q; use only a-z, 0-9, '_', '-' and '.'", r))
		}
	}
	return nil
}

// imperativeVerbs are words that, first or last in an event name, make it
// read as a command rather than as a fact that happened; each maps to the
// past participle that states the fact.
var imperativeVerbs = map[string]string{
	"create": "created", "update": "updated", "delete": "deleted", "remove": "removed", "add": "added",
	"send": "sent", "handle": "handled", "process": "processed", "do": "done", "make": "made",
	"get": "got", "set": "set", "notify": "notified", "run": "run", "execute": "executed",
	"start": "started", "stop": "stopped", "sync": "synced", "trigger": "triggered", "compute": "computed",
	"charge": "charged", "register": "registered", "save": "saved", "fetch": "fetched", "emit": "emitted",
}

// Lint returns advice about an event name beyond the hard grammar that
// ValidateName enforces: names should state a fact in the past tense
// ("user.signup.completed"), not give an order ("createUser",
// "handle-signup"), and should be lowercase ("USER_CREATED"). An empty
// result means no advice. Lint also reports grammar errors, as advice.
func Lint(name string) []string {
	var out []string
	if name != strings.ToLower(name) {
		out = append(out, fmt.Sprintf("%q uses upper case; write %q", name, suggestName(name)))
	}
	if err := ValidateName(name); err != nil && name == strings.ToLower(name) {
		out = append(out, err.Error())
	}
	words := splitWords(name)
	verb := ""
	switch {
	case len(words) > 0 && imperativeVerbs[words[0]] != "":
		verb = words[0]
	case len(words) > 1 && imperativeVerbs[words[len(words)-1]] != "" && imperativeVerbs[words[len(words)-1]] != words[len(words)-1]:
		// Last, a verb whose past participle is itself ("set", "run")
		// already states the fact: "config.set".
		verb = words[len(words)-1]
	}
	if verb != "" {
		out = append(out, fmt.Sprintf("%q reads as a command (%q); name the fact that happened, such as %q",
			name, verb, suggestName(name)))
	}
	return out
}

// splitWords breaks a name at dots, dashes, underscores and camelCase humps,
// lowercasing each word.
func splitWords(s string) []string {
	var words []string
	var cur []rune
	flush := func() {
		if len(cur) > 0 {
			words = append(words, strings.ToLower(string(cur)))
			cur = cur[:0]
		}
	}
	for i, r := range s {
		switch {
		case r == '.' || r == '-' || r == '_' || unicode.IsSpace(r):
			flush()
		case unicode.IsUpper(r) && i > 0 && len(cur) > 0 && !unicode.IsUpper(cur[len(cur)-1]):
			flush()
			cur = append(cur, r)
		default:
			cur = append(cur, r)
		}
	}
	flush()
	return words
}

// suggestName rewrites s as a lowercase dotted name that states a fact:
// "createUser" and "user.create" become "user.created".
func suggestName(s string) string {
	words := splitWords(s)
	if len(words) == 1 && imperativeVerbs[words[0]] != "" {
		return "<entity>." + imperativeVerbs[words[0]]
	}
	if len(words) > 1 {
		if past := imperativeVerbs[words[0]]; past != "" {
			words = append(words[1:], past)
		} else if past := imperativeVerbs[words[len(words)-1]]; past != "" {
			words[len(words)-1] = past
		}
	}
	return strings.Join(words, ".")
}
