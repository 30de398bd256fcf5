package transport

import (
	"fmt"
	"sort"
	"strings"
	"sync"
)

var (
	registryMu sync.RWMutex
	registry   = map[string]Opener{}
)

// Register makes a driver available under a URL scheme (without "://").
// Drivers call it from an init function, as database/sql drivers do. It
// panics if the scheme is registered twice, since that is a build mistake.
func Register(scheme string, open Opener) {
	registryMu.Lock()
	defer registryMu.Unlock()
	if open == nil {
		panic("transport: Register opener is nil for scheme " + scheme)
	}
	if _, dup := registry[scheme]; dup {
		panic("transport: Register called twice for scheme " + scheme)
	}
	registry[scheme] = open
}

// Lookup returns the opener registered for scheme.
func Lookup(scheme string) (Opener, bool) {
	registryMu.RLock()
	defer registryMu.RUnlock()
	o, ok := registry[scheme]
	return o, ok
}

// Schemes lists the registered schemes, sorted.
func Schemes() []string {
	registryMu.RLock()
	defer registryMu.RUnlock()
	out := make([]string, 0, len(registry))
	for s := range registry {
		out = append(out, s)
	}
	sort.Strings(out)
	return out
}

// Scheme splits the scheme off a URL ("sqlite://app.db" → "sqlite").
func Scheme(url string) (string, error) {
	i := strings.Index(url, "://")
	if i <= 0 {
		return "", fmt.Errorf("transport URL %q has no scheme; write it as scheme://address, for example sqlite://app.db", url)
	}
	return strings.ToLower(url[:i]), nil
}
