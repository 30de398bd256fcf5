// Package cloudevents holds Ripple's interoperability tests against the
// CloudEvents Go SDK (github.com/cloudevents/sdk-go/v2): every kind of
// event Ripple produces passes the SDK's validation, and an event the SDK
// produced goes through a Ripple bus with every attribute intact. It is a
// module of its own so that Ripple itself does not depend on the SDK;
// scripts/test runs it.
package cloudevents
