package redis

import (
	"context"
	"sync"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/ripplehq/ripple/transport"
)

// A job is one caller's share of a batched round trip: a Publish (sub is
// nil) or a Settle of sub, with its script arguments, its size for the
// batch limits, and where its result goes.
type job struct {
	sub    *subscription
	args   []any
	direct []directMsg // direct publishes (see route.go)
	// msgs are a publish script job's messages, in the order of args, and
	// nonce the value that tells its dedup records from other calls'
	// (see publishScript).
	msgs  []*transport.Message
	nonce string
	n     int // items (messages or settlements)
	size  int // approximate bytes
	err   error
	// stored tells that Redis appended at least one of the job's direct
	// events, so an error of the job is not one where nothing was stored.
	stored bool
	// done receives err when the job was queued for a background batch;
	// do makes it then, as a job run by its caller needs none.
	done chan error
	// alone is the batch of a job run by its caller, kept in the job so
	// that such a batch costs no allocation.
	alone [1]*job
}

// combiner groups concurrent calls into batches, so that many callers
// share one round trip (and, on a server with appendfsync always, one
// fsync) instead of each paying for their own. Up to maxActive batches
// are in flight at once. A caller that finds no batch in flight runs its
// own at once on its own goroutine, so a lone caller pays no goroutine
// hand-off. Otherwise it queues; a background loop takes a free slot and
// sends everything queued as the next batch, so under load batches grow
// instead of a free slot being spent on a batch of one.
type combiner struct {
	maxActive int
	maxItems  int
	maxBytes  int
	// exec runs one batch and sets each job's err.
	exec func(ctx context.Context, batch []*job)

	mu       sync.Mutex
	queue    []*job
	active   int
	starting bool // a loop was started and has not taken the queue yet
	idle     *sync.Cond
}

// do runs j, alone or batched with concurrent jobs, and returns its
// result. A job run alone uses ctx for its call, which go-redis checks
// before sending and between retries but not while it waits for the reply
// (that wait is bounded by the read timeout). A queued job returns when
// ctx ends; it may still be executed with its batch.
func (c *combiner) do(ctx context.Context, j *job) error {
	c.mu.Lock()
	if c.active == 0 {
		// Nothing in flight implies an empty queue, so this batch is j
		// alone.
		c.active++
		c.mu.Unlock()
		j.alone[0] = j
		c.exec(ctx, j.alone[:])
		c.finish()
		return j.err
	}
	j.done = make(chan error, 1)
	c.queue = append(c.queue, j)
	if c.active < c.maxActive && !c.starting {
		c.active++
		c.starting = true
		go c.loop()
	}
	c.mu.Unlock()
	select {
	case err := <-j.done:
		return err
	case <-ctx.Done():
		// The batch may still run; the caller must treat the outcome as
		// unknown, as with any timed-out write.
		return ctx.Err()
	}
}

// finish ends a batch: the slot is released, or handed to a background
// loop when jobs queued meanwhile.
func (c *combiner) finish() {
	c.mu.Lock()
	if len(c.queue) > 0 {
		c.mu.Unlock()
		go c.loop()
		return
	}
	c.release()
	c.mu.Unlock()
}

// release frees a slot; c.mu is held.
func (c *combiner) release() {
	c.active--
	if c.active == 0 && c.idle != nil {
		c.idle.Broadcast()
	}
}

// loop runs queued batches until the queue is empty, holding one slot.
func (c *combiner) loop() {
	for {
		c.mu.Lock()
		c.starting = false
		if len(c.queue) == 0 {
			c.release()
			c.mu.Unlock()
			return
		}
		n, items, size := 0, 0, 0
		for n < len(c.queue) && (n == 0 || items+c.queue[n].n <= c.maxItems && size+c.queue[n].size <= c.maxBytes) {
			items += c.queue[n].n
			size += c.queue[n].size
			n++
		}
		batch := c.queue[:n:n]
		c.queue = c.queue[n:]
		if len(c.queue) == 0 {
			c.queue = nil
		}
		c.mu.Unlock()

		// The batch carries several callers' jobs, so no one caller's
		// ctx may cancel it.
		ctx, cancel := context.WithTimeout(context.Background(), batchTimeout)
		c.exec(ctx, batch)
		cancel()
		for _, j := range batch {
			j.done <- j.err
		}
	}
}

// wait blocks until no batch is in flight.
func (c *combiner) wait() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.idle == nil {
		c.idle = sync.NewCond(&c.mu)
	}
	for c.active > 0 {
		c.idle.Wait()
	}
}

// A scriptCall is one script call of a batch and the jobs it carries.
type scriptCall struct {
	script *goredis.Script
	sub    *subscription // nil for the publish script
	args   []any
	jobs   []*job
	cmd    *goredis.Cmd
}

// execBatch runs a batch of publish and settle jobs: one publish script
// call for all publishes and one settle script call per subscription,
// sent together in one pipeline. Each call succeeds or fails on its own,
// so a publish refused by a full Redis does not fail a settle sent with it.
//
// All the jobs of the publish script call share its error. On a full
// Redis that is true of each of them: the script has no shebang flags, so
// Redis checks maxmemory at its first write only, against the memory used
// when the call began, and lets a call that started below the limit write
// everything. A refused call has stored nothing, and a call that wrote
// once stores all its messages.
func (d *Driver) execBatch(ctx context.Context, batch []*job) {
	var calls []*scriptCall
	find := func(sub *subscription) *scriptCall {
		for _, c := range calls {
			if c.sub == sub {
				return c
			}
		}
		c := &scriptCall{script: publishScript, sub: sub}
		if sub != nil {
			c.script = settleScript
		}
		calls = append(calls, c)
		return c
	}
	for _, j := range batch {
		c := find(j.sub)
		c.jobs = append(c.jobs, j)
	}
	for _, c := range calls {
		// Each job's arguments start with room for the script's header
		// (publish: prefix; settle: prefix, name, dead count), so a call
		// with one job uses its slice as it is.
		head := publishHead
		if c.sub != nil {
			head = 3
		}
		if len(c.jobs) == 1 {
			c.args = c.jobs[0].args
		} else {
			n := head
			for _, j := range c.jobs {
				n += len(j.args) - head
			}
			c.args = make([]any, head, n)
			for _, j := range c.jobs {
				c.args = append(c.args, j.args[head:]...)
			}
		}
		c.args[0] = d.prefix
		if c.sub != nil {
			c.args[1], c.args[2] = c.sub.name, int64(d.ret.DeadCount)
		}
	}
	// A batch with publishes goes on the client that never resends a
	// command that may have reached Redis (see retryDial): after a lost
	// reply, go-redis's resend would end with the error of its last try
	// (a refused dial, say), hiding that the first was sent. Instead the
	// publish's dedup records tell what happened (resolveRecords).
	cl := d.client
	for _, c := range calls {
		if c.sub == nil {
			cl = d.noRetry
		}
	}
	if len(calls) == 1 {
		c := calls[0]
		_ = d.retryDial(ctx, func() error {
			c.cmd = c.script.Run(ctx, cl, nil, c.args...)
			return c.cmd.Err()
		})
	} else {
		_ = d.retryDial(ctx, func() error {
			pipe := cl.Pipeline()
			for _, c := range calls {
				c.cmd = pipe.EvalSha(ctx, c.script.Hash(), nil, c.args...)
			}
			_, err := pipe.Exec(ctx) // each command's error is checked below
			return err
		})
		for _, c := range calls {
			if goredis.HasErrorPrefix(c.cmd.Err(), "NOSCRIPT") {
				// Redis lost its script cache (a restart): Run sends the
				// source again.
				c.cmd = c.script.Run(ctx, cl, nil, c.args...)
			}
		}
	}
	for _, c := range calls {
		if c.sub == nil {
			err := c.cmd.Err()
			if err == nil {
				markDuplicates(c.jobs, c.cmd)
			}
			for _, j := range c.jobs {
				j.err = nil
				// A lost reply: the job's dedup records tell whether the
				// call ran.
				if err != nil && !(outcomeUnknown(err) && d.resolveRecords(ctx, j)) {
					j.err = publishErr(err, true)
				}
			}
			continue
		}
		err := c.sub.settled(c.cmd)
		for _, j := range c.jobs {
			j.err = err
		}
	}
}

// resolveRecords finds out, after a publish script call carrying job j
// lost its connection before its reply, whether the call ran: it stores
// every message or none, and leaves a dedup record for each, so when
// every message of j has a record the call ran (or the events were stored
// meanwhile by another call, which makes j's duplicates), and it reports
// true, with Message.Duplicate set for those whose record is another
// call's. A message without a record (none kept: the dedup window is
// off) leaves the outcome unknown, as does any failure; ctx bounds it.
func (d *Driver) resolveRecords(ctx context.Context, j *job) bool {
	if ctx.Err() != nil || len(j.msgs) == 0 {
		return false
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	args := make([]any, 0, 2+len(j.msgs))
	args = append(args, d.prefix, j.nonce)
	for _, m := range j.msgs {
		args = append(args, transport.IdentityKey(m.Source(), m.ID))
	}
	res, err := recordsScript.Run(ctx, d.client, nil, args...).Slice()
	if err != nil || len(res) != len(j.msgs) {
		return false
	}
	for _, r := range res {
		if n, ok := r.(int64); ok && n == 0 {
			return false
		}
	}
	for i, r := range res {
		if fields, ok := r.([]any); ok {
			if kept, _, _, ok := parseEntry(fields); ok {
				j.msgs[i].Duplicate = &kept
			}
		}
	}
	return true
}

// markDuplicates sets Message.Duplicate on the messages that the publish
// script call found already stored: its reply lists {position among the
// call's messages, 1-based, the fields first stored}.
func markDuplicates(jobs []*job, cmd *goredis.Cmd) {
	dups, _ := cmd.Val().([]any)
	for _, r := range dups {
		pair, _ := r.([]any)
		if len(pair) != 2 {
			continue
		}
		pos, _ := pair[0].(int64)
		fields, _ := pair[1].([]any)
		i := int(pos) - 1
		for _, j := range jobs {
			if i < len(j.msgs) {
				if i >= 0 {
					if kept, _, _, ok := parseEntry(fields); ok {
						j.msgs[i].Duplicate = &kept
					}
				}
				break
			}
			i -= len(j.msgs)
		}
	}
}
