// Package all registers every transport Ripple ships, so that a program
// can open any supported URL and move between them by changing only the
// URL:
//
//	import _ "github.com/ripplehq/ripple/transport/all"
//
//	bus, err := ripple.Open(ctx, os.Getenv("RIPPLE_URL"))
//
// Importing it links every transport's client library into the program.
// A program that uses one transport can import that transport's package
// instead and stay smaller.
package all

import (
	// Each import registers its URL scheme with package transport.
	_ "github.com/ripplehq/ripple/transport/amqp"
	_ "github.com/ripplehq/ripple/transport/kafka"
	_ "github.com/ripplehq/ripple/transport/memory"
	_ "github.com/ripplehq/ripple/transport/nats"
	_ "github.com/ripplehq/ripple/transport/postgres"
	_ "github.com/ripplehq/ripple/transport/redis"
	_ "github.com/ripplehq/ripple/transport/sqlite"
)
