// BullMQ side of Ripple's benchmark (github.com/ripplehq/ripple/bench).
//
// Runs one scenario of the benchmark's workload against BullMQ and prints
// one JSON line on stdout:
//
//   {"events":N,"elapsed_ns":T,"p50_ns":P,"p99_ns":Q,"note":"..."}
//
// or {"error":"..."}. The Go harness starts it once per scenario:
//
//   node run.js --scenario pub1|pub16|e2e1|e2e16|latency --n 100000 \
//     --redis redis://127.0.0.1:6379/0 [--max-publish-ms 5000] [--drain-ms 60000]
//     [--warmup 200] [--publishers 16] [--rate 1000] [--latency-ms 4000]
//
// The workload mirrors bench/run.go: 200-byte JSON events, one Worker at
// concurrency 10 whose processor counts, Queue.add awaited per event, a
// warm-up before measuring, and a publish phase that stops after N events
// or its time cap. Every run uses its own key prefix and obliterates its
// queue and deletes its keys before exiting.
'use strict';

const { Queue, Worker } = require('bullmq');
const IORedis = require('ioredis');
const crypto = require('node:crypto');
const { performance } = require('node:perf_hooks');

const PAYLOAD_SIZE = 200;
const DIGITS = 20;

function parseArgs(argv) {
  const opts = {
    scenario: '', n: 100000, redis: '', maxPublishMs: 5000, drainMs: 60000,
    warmup: 200, publishers: 16, rate: 1000, latencyMs: 4000,
  };
  const names = {
    '--scenario': 'scenario', '--n': 'n', '--redis': 'redis',
    '--max-publish-ms': 'maxPublishMs', '--drain-ms': 'drainMs', '--warmup': 'warmup',
    '--publishers': 'publishers', '--rate': 'rate', '--latency-ms': 'latencyMs',
  };
  for (let i = 0; i < argv.length; i += 2) {
    const key = names[argv[i]];
    if (!key || i + 1 >= argv.length) {
      throw new Error(`unknown or incomplete argument ${JSON.stringify(argv[i])}; see the usage at the top of run.js`);
    }
    const v = argv[i + 1];
    if (typeof opts[key] === 'number') {
      const num = Number(v);
      if (!Number.isInteger(num) || num < 1) {
        throw new Error(`${argv[i]} wants a positive integer, got ${JSON.stringify(v)}`);
      }
      opts[key] = num;
    } else {
      opts[key] = v;
    }
  }
  if (!['pub1', 'pub16', 'e2e1', 'e2e16', 'latency'].includes(opts.scenario)) {
    throw new Error(`--scenario must be pub1, pub16, e2e1, e2e16 or latency, got ${JSON.stringify(opts.scenario)}`);
  }
  if (!/^rediss?:\/\//.test(opts.redis)) {
    throw new Error(`--redis wants a redis://HOST:PORT/DB URL, got ${JSON.stringify(opts.redis)}`);
  }
  return opts;
}

// nowNs is a monotonic clock in nanoseconds, precise to the microsecond;
// producer and worker share this process, so it serves for latency.
function nowNs() {
  return BigInt(Math.round((performance.timeOrigin + performance.now()) * 1e3)) * 1000n;
}

function padded(v) {
  return v.toString().padStart(DIGITS, '0');
}

// payload builds the same 200-byte JSON document as bench.NewPayload.
function payload(seq, sentNs) {
  const head = `{"seq":"${padded(seq)}","sent":"${padded(sentNs)}","pad":"`;
  const tail = '"}';
  return head + 'x'.repeat(PAYLOAD_SIZE - head.length - tail.length) + tail;
}

function sentOf(data) {
  const i = data.indexOf('"sent":"');
  return i < 0 ? null : BigInt(data.slice(i + 8, i + 8 + DIGITS));
}

function percentile(sorted, p) {
  const i = Math.floor((sorted.length * p + 99) / 100);
  return sorted[Math.min(Math.max(i - 1, 0), sorted.length - 1)];
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  const prefix = 'bench-' + crypto.randomBytes(4).toString('hex');
  const queueName = 'events';
  const producerConn = new IORedis(opts.redis, { maxRetriesPerRequest: null, lazyConnect: false });
  const workerConn = new IORedis(opts.redis, { maxRetriesPerRequest: null, lazyConnect: false });
  // Completed jobs are kept by count, like Ripple's default retention of
  // 1,000 completed events, so the queue does not grow for the whole run.
  const queue = new Queue(queueName, {
    connection: producerConn,
    prefix,
    defaultJobOptions: { removeOnComplete: { count: 1000 }, removeOnFail: { count: 10000 } },
  });

  let handled = 0;
  let recording = false;
  const latencies = [];
  let waiter = null;
  const worker = new Worker(queueName, async (job) => {
    if (recording) {
      const sent = sentOf(job.data.e);
      if (sent !== null) latencies.push(Number(nowNs() - sent));
    }
    handled++;
    if (waiter && handled >= waiter.want) {
      const w = waiter;
      waiter = null;
      w.resolve(true);
    }
  }, { connection: workerConn, prefix, concurrency: 10 });
  worker.on('error', () => {});

  // waitFor resolves true once want events are handled in total, false
  // after timeoutMs.
  const waitFor = (want, timeoutMs) => {
    if (handled >= want) return Promise.resolve(true);
    return new Promise((resolve) => {
      const t = setTimeout(() => { waiter = null; resolve(handled >= want); }, timeoutMs);
      waiter = { want, resolve: (v) => { clearTimeout(t); resolve(v); } };
    });
  };

  // publishPhase adds payloads from pubs concurrent loops, each awaiting its
  // add, until all are added or the cap has passed.
  const publishPhase = async (pubs, count, capMs) => {
    let next = 0;
    let published = 0;
    const start = performance.now();
    const deadline = start + capMs;
    const loop = async () => {
      for (;;) {
        const i = next++;
        if (i >= count || performance.now() > deadline) return;
        await queue.add('bench.event.created', { e: payload(i, nowNs()) });
        published++;
      }
    };
    await Promise.all(Array.from({ length: pubs }, loop));
    return { published, elapsedMs: performance.now() - start };
  };

  let result;
  try {
    await queue.waitUntilReady();
    await worker.waitUntilReady();

    const warm = await publishPhase(1, opts.warmup, opts.maxPublishMs);
    if (!(await waitFor(warm.published, opts.drainMs))) {
      throw new Error(`warm-up: handled ${handled} of ${warm.published} events in ${opts.drainMs} ms`);
    }
    const base = handled;

    switch (opts.scenario) {
      case 'pub1':
      case 'pub16': {
        const pubs = opts.scenario === 'pub1' ? 1 : opts.publishers;
        const r = await publishPhase(pubs, opts.n, opts.maxPublishMs);
        result = { events: r.published, elapsed_ns: Math.round(r.elapsedMs * 1e6) };
        break;
      }
      case 'e2e1':
      case 'e2e16': {
        const pubs = opts.scenario === 'e2e1' ? 1 : opts.publishers;
        const start = performance.now();
        const r = await publishPhase(pubs, opts.n, opts.maxPublishMs);
        const ok = await waitFor(base + r.published, opts.drainMs);
        result = { events: r.published, elapsed_ns: Math.round((performance.now() - start) * 1e6) };
        if (!ok) result.note = `drain timed out: ${handled - base} of ${r.published} deliveries`;
        break;
      }
      case 'latency': {
        const total = Math.floor(opts.rate * opts.latencyMs / 1000);
        const intervalMs = 1000 / opts.rate;
        recording = true;
        // A pacer stamps each event when it hands it to a pool of
        // publishers, so a slow add delays the events queued behind it.
        const queued = [];
        const idle = [];
        let done = false;
        const wakeAll = () => { for (const w of idle.splice(0)) w(); };
        const pool = Array.from({ length: opts.publishers }, async () => {
          for (;;) {
            if (queued.length > 0) {
              await queue.add('bench.event.created', { e: queued.shift() });
            } else if (done) {
              return;
            } else {
              await new Promise((r) => { idle.push(r); });
            }
          }
        });
        const start = performance.now();
        for (let i = 0; i < total; i++) {
          const d = start + i * intervalMs - performance.now();
          if (d > 1) await sleep(d);
          queued.push(payload(i, nowNs()));
          if (idle.length > 0) idle.shift()();
        }
        done = true;
        wakeAll();
        await Promise.all(pool);
        const spanMs = performance.now() - start;
        const ok = await waitFor(base + total, opts.drainMs);
        const lat = latencies.slice().sort((a, b) => a - b);
        if (lat.length === 0) throw new Error('no event was handled');
        result = {
          events: lat.length, elapsed_ns: Math.round(spanMs * 1e6),
          p50_ns: percentile(lat, 50), p99_ns: percentile(lat, 99),
        };
        const notes = [];
        if (!ok) notes.push(`drain timed out: ${lat.length} of ${total} handled`);
        if (spanMs - opts.latencyMs > opts.latencyMs / 10) {
          notes.push(`publishing fell behind the pace by ${Math.round(spanMs - opts.latencyMs)}ms`);
        }
        if (notes.length) result.note = notes.join('; ');
        break;
      }
    }
  } finally {
    await worker.close(true).catch(() => {});
    await queue.obliterate({ force: true }).catch(() => {});
    await queue.close().catch(() => {});
    // obliterate leaves the queue's meta and event-stream keys; delete
    // everything under this run's prefix.
    const keys = [];
    const stream = producerConn.scanStream({ match: `${prefix}:*`, count: 1000 });
    for await (const batch of stream) keys.push(...batch);
    for (let i = 0; i < keys.length; i += 500) await producerConn.del(...keys.slice(i, i + 500));
    producerConn.disconnect();
    workerConn.disconnect();
  }
  return result;
}

main().then(
  (r) => { process.stdout.write(JSON.stringify(r) + '\n'); process.exit(0); },
  (err) => { process.stdout.write(JSON.stringify({ error: String(err && err.message || err) }) + '\n'); process.exit(1); },
);
