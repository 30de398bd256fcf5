//go:build tools

// Package natsserver pins the NATS server that scripts/test builds and
// runs for the nats transport's tests:
//
//	go build -o nats-server github.com/nats-io/nats-server/v2
//
// It is a module of its own so that the server's dependencies stay out of
// Ripple's go.mod.
package natsserver

import _ "github.com/nats-io/nats-server/v2"
