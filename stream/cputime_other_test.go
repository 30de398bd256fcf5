//go:build !unix

package stream_test

import "time"

// cpuTime is not measured here: the benchmark reports events/s only.
func cpuTime() time.Duration { return 0 }
