// Package wake lets the receivers of a database-backed driver sleep until
// something may have become deliverable for their subscription, instead of
// polling. A Set holds one Signal per subscription id; whoever changes a
// subscription's rows fires its signal, and every receiver waiting on it
// wakes and looks again.
package wake

import "sync"

// Signal wakes everyone waiting on it at the next Fire. The zero value is
// ready to use.
type Signal struct {
	mu sync.Mutex
	ch chan struct{}
}

// Wait returns a channel that is closed at the next Fire. Take it before
// looking for work, so that a Fire between the look and the wait is not
// missed.
func (s *Signal) Wait() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ch == nil {
		s.ch = make(chan struct{})
	}
	return s.ch
}

// Fire wakes every current waiter.
func (s *Signal) Fire() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ch != nil {
		close(s.ch)
		s.ch = nil
	}
}

// Set holds the signals of a driver's subscriptions by id. The zero value
// is ready to use.
type Set struct {
	mu sync.Mutex
	m  map[int64]*Signal
}

// For returns the signal of subscription id, making it on first use.
func (s *Set) For(id int64) *Signal {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.m == nil {
		s.m = make(map[int64]*Signal)
	}
	sig := s.m[id]
	if sig == nil {
		sig = &Signal{}
		s.m[id] = sig
	}
	return sig
}

// Fire wakes the receivers of subscription id, if it has any here.
func (s *Set) Fire(id int64) {
	s.mu.Lock()
	sig := s.m[id]
	s.mu.Unlock()
	if sig != nil {
		sig.Fire()
	}
}

// FireAll wakes the receivers of every subscription.
func (s *Set) FireAll() {
	s.mu.Lock()
	sigs := make([]*Signal, 0, len(s.m))
	for _, sig := range s.m {
		sigs = append(sigs, sig)
	}
	s.mu.Unlock()
	for _, sig := range sigs {
		sig.Fire()
	}
}

// Len returns how many subscriptions have a signal here.
func (s *Set) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.m)
}
