package signupapp

import (
	"context"
	"fmt"
	"strings"
	"sync"

	"github.com/ripplehq/ripple"
)

// Tally is a ripple.HandleHook that records, per handler and event, whether
// the handler completed the event, dead-lettered it, and how many failed
// attempts it retried. A redelivered event is therefore not counted twice.
// Pass it to ripple.Open with ripple.WithHooks. It is safe for concurrent
// use; it keeps a small record per event, which suits demos and tests.
type Tally struct {
	mu       sync.Mutex
	handlers map[string]map[string]*eventState // handler -> event id -> state
	changed  chan struct{}                     // closed and replaced on every change
}

type eventState struct {
	completed, dead bool
	retried         int
}

// HandlerCount is one handler's line in a Tally.
type HandlerCount struct {
	Handler   string `json:"handler"`
	Completed int    `json:"completed"` // events handled successfully
	Retried   int    `json:"retried"`   // failed attempts that were retried
	Dead      int    `json:"dead"`      // events in the dead-letter queue, never completed
}

// NewTally returns an empty Tally.
func NewTally() *Tally {
	return &Tally{handlers: make(map[string]map[string]*eventState), changed: make(chan struct{})}
}

// OnHandle implements ripple.HandleHook.
func (t *Tally) OnHandle(res ripple.HandleResult) {
	t.mu.Lock()
	defer t.mu.Unlock()
	events := t.handlers[res.Handler]
	if events == nil {
		events = make(map[string]*eventState)
		t.handlers[res.Handler] = events
	}
	e := events[res.Event.ID]
	if e == nil {
		e = &eventState{}
		events[res.Event.ID] = e
	}
	switch res.Outcome {
	case ripple.OutcomeSuccess:
		e.completed = true
	case ripple.OutcomeRetry:
		e.retried++
	case ripple.OutcomeDead:
		e.dead = true
	}
	close(t.changed)
	t.changed = make(chan struct{})
}

// Count returns the handler's counts over the given event ids, or over
// every event it has seen when no ids are given. A handler not seen yet
// has zeros.
func (t *Tally) Count(handler string, eventIDs ...string) HandlerCount {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.countLocked(handler, eventIDs)
}

func (t *Tally) countLocked(handler string, ids []string) HandlerCount {
	c := HandlerCount{Handler: handler}
	add := func(e *eventState) {
		switch {
		case e == nil:
		case e.completed:
			c.Completed++
		case e.dead:
			c.Dead++
		}
		if e != nil {
			c.Retried += e.retried
		}
	}
	events := t.handlers[handler]
	if ids == nil {
		for _, e := range events {
			add(e)
		}
		return c
	}
	for _, id := range ids {
		add(events[id])
	}
	return c
}

// Counts returns the counts of every handler seen, over every event,
// sorted by handler name.
func (t *Tally) Counts() []HandlerCount {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]HandlerCount, 0, len(t.handlers))
	for _, h := range sortedKeys(t.handlers) {
		out = append(out, t.countLocked(h, nil))
	}
	return out
}

// Wait blocks until each of the handlers has finished every one of the
// events, by completing or dead-lettering it, or until ctx ends. It
// returns nil once they have (check Count for dead letters), and otherwise
// an error wrapping ctx.Err() that says which handlers fell short.
func (t *Tally) Wait(ctx context.Context, handlers []string, eventIDs []string) error {
	if eventIDs == nil {
		eventIDs = []string{}
	}
	for {
		t.mu.Lock()
		var short []string
		for _, h := range handlers {
			c := t.countLocked(h, eventIDs)
			if done := c.Completed + c.Dead; done < len(eventIDs) {
				short = append(short, fmt.Sprintf("%s %d/%d", h, done, len(eventIDs)))
			}
		}
		changed := t.changed
		t.mu.Unlock()
		if len(short) == 0 {
			return nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return fmt.Errorf("handlers still busy (finished/expected): %s: %w", strings.Join(short, ", "), ctx.Err())
		}
	}
}
