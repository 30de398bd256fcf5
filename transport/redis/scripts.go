package redis

import (
	"context"
	"fmt"

	goredis "github.com/redis/go-redis/v9"
)

// The Lua scripts below are the driver's only writers of Ripple's keys, so
// every state change (publish fan-out, settle, promotion of delayed
// entries) is atomic. Scripts build key names from the prefix in ARGV[1]
// rather than taking them in KEYS, which is fine on a single Redis server
// or a replicated pair but rules out Redis Cluster (see the package doc).
// Times come from the server's TIME, so processes with skewed clocks agree
// on delays and leases.

// Lua helpers. Each script includes only the helpers it calls: a script
// runs its whole text on every call, so every helper it carries costs a
// closure allocation per call.
const (
	luaNow = `
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
`
	luaMatch = `
-- match mirrors transport.Match: '*' matches one segment, a final '>' one
-- or more trailing segments.
local function match(pat, typ)
  local pi, ti = 1, 1
  while true do
    local pe = string.find(pat, '.', pi, true)
    local pseg = pe and string.sub(pat, pi, pe - 1) or string.sub(pat, pi)
    if pseg == '>' and not pe then return ti <= #typ end
    local te = string.find(typ, '.', ti, true)
    local tseg = te and string.sub(typ, ti, te - 1) or string.sub(typ, ti)
    if pseg ~= '*' and pseg ~= tseg then return false end
    if not pe or not te then return (pe == nil) == (te == nil) end
    pi, ti = pe + 1, te + 1
  end
end
`
	luaIDs = `
local function pid(id)
  local d = string.find(id, '-', 1, true)
  return tonumber(string.sub(id, 1, d - 1)), tonumber(string.sub(id, d + 1))
end

local function idless(a, b)
  local am, as = pid(a)
  local bm, bs = pid(b)
  return am < bm or (am == bm and as < bs)
end

local function idnext(id)
  local ms, sq = pid(id)
  return string.format('%.0f-%.0f', ms, sq + 1)
end
`
	luaGroups = `
-- gcall runs a consumer-group command, recreating the group when Redis
-- lost it (a restart without persistence, a FLUSHDB). The group starts at
-- 0: after such a loss redelivering is better than skipping.
local function gcall(s, name, ...)
  local r = redis.pcall(...)
  if type(r) == 'table' and r.err then
    if string.find(r.err, 'NOGROUP', 1, true) then
      redis.pcall('XGROUP', 'CREATE', s, name, '0', 'MKSTREAM')
      return redis.call(...)
    end
    return redis.error_reply(r.err)
  end
  return r
end

local function groupinfo(s, name)
  local gs = redis.pcall('XINFO', 'GROUPS', s)
  if type(gs) ~= 'table' or gs.err then return nil end
  for _, g in ipairs(gs) do
    local t = {}
    for i = 1, #g, 2 do t[g[i]] = g[i + 1] end
    if t['name'] == name then return t end
  end
  return nil
end
`
	luaStrip = `
-- strip drops the fields named in drop from a flat field list.
local function strip(f, drop)
  local o = {}
  for i = 1, #f, 2 do
    if not drop[f[i]] then
      o[#o + 1] = f[i]
      o[#o + 1] = f[i + 1]
    end
  end
  return o
end
`
	luaDelay = `
local function delay_member(p, f)
  return cmsgpack.pack(redis.call('INCR', p .. ':seq'), f)
end
`
)

// luaRegister registers a subscription under a pattern with a fresh
// registry version. When the pattern is new for the stream's entries (a
// change, or a stream left from before the registry was lost), it records
// the stream's last id in PREFIX:subsfrom: entries up to it were routed
// by what was registered before, and receivers never filter them out (see
// route.go).
const luaRegister = `
local function register(p, name, pattern, version)
  local subs, s = p .. ':subs', p .. ':s:' .. name
  if redis.call('HGET', subs, name) ~= pattern then
    local from = '0-0'
    if redis.call('EXISTS', s) == 1 then
      local info = redis.call('XINFO', 'STREAM', s)
      for i = 1, #info, 2 do
        if info[i] == 'last-generated-id' then from = info[i + 1] end
      end
    end
    redis.call('HSET', p .. ':subsfrom', name, from)
    redis.call('HSET', subs, name, pattern)
  end
  redis.call('SET', p .. ':subsv', version)
end
`

// luaEphemeral keeps ephemeral subscriptions (SubscriptionSpec.Ephemeral):
// PREFIX:eph maps each to "lease ms:last touched ms". Its receivers touch
// it at every receive script and lease renewal; one not touched for three
// leases and two seconds has lost every receiver (a process killed with
// SIGKILL) and is reaped, by the receive script of any process, a
// Subscribe, or Stats. delete_sub deletes a subscription with everything
// kept for it, as Unsubscribe does.
const luaEphemeral = `
local function delete_sub(p, name, version)
  for _, h in ipairs({':subs', ':subsfrom', ':paused', ':eph'}) do redis.call('HDEL', p .. h, name) end
  for _, k in ipairs({':s:', ':d:', ':x:', ':rw:', ':rl:', ':n:', ':l:'}) do redis.call('DEL', p .. k .. name) end
  -- pcall: a full Redis (maxmemory) refuses the SET, and a receive that
  -- reaps must not fail for it (publishers find the streams gone anyway).
  redis.pcall('SET', p .. ':subsv', version)
end

local function touch(p, name, lease, now)
  redis.pcall('HSET', p .. ':eph', name, lease .. ':' .. now)
end

local function reap(p, now, version)
  local all = redis.call('HGETALL', p .. ':eph')
  for i = 1, #all, 2 do
    local v = all[i + 1]
    local c = string.find(v, ':', 1, true)
    local l, u = tonumber(string.sub(v, 1, (c or 1) - 1)), tonumber(string.sub(v, (c or #v) + 1))
    if not l or not u or u + 3 * l + 2000 < now then delete_sub(p, all[i], version) end
  end
end
`

// luaLib is every helper.
const luaLib = luaNow + luaMatch + luaIDs + luaGroups + luaStrip + luaDelay + luaRegister

// publishScript stores a batch of messages. ARGV: prefix, then per
// message: delay ms, dedup record ms (0 = none), the event's identity
// (transport.IdentityKey of its source and id), the publish call's nonce,
// field count, fields (the first four are "id", id, "type", type). A
// message whose identity is still remembered is not stored again: it
// returns {its position among the call's messages, the fields first
// stored} unless the record carries the same nonce (a resend of this very
// call, which stored it). Every other message is appended to the stream
// (or the delayed set) of every subscription whose pattern matches, all in
// one atomic step, and its dedup record PREFIX:di:IDENTITY keeps the
// nonce and the fields, so that a later duplicate learns what was kept.
var publishScript = newScript(luaNow + luaMatch + luaDelay + `
local call = redis.call
local p = ARGV[1]
local di = p .. ':di:'
local subs = call('HGETALL', p .. ':subs')
local now
local routes = {}
local i, last = 2, #ARGV
local pos = 0
local dups = {}
while i <= last do
  local delay, ttl, ident, nonce, fs = tonumber(ARGV[i]), ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], i + 5
  local fe = fs + tonumber(ARGV[i + 4]) - 1
  local typ = ARGV[fs + 3]
  i = fe + 1
  pos = pos + 1
  local kept = ttl ~= '0' and call('GET', di .. ident)
  if kept then
    local n, f = cmsgpack.unpack(kept)
    if n ~= nonce then dups[#dups + 1] = {pos, f} end
  else
    -- routes caches, per event type, the names of the matching
    -- subscriptions, so a batch matches each type once.
    local r = routes[typ]
    if r == nil then
      r = {}
      for j = 1, #subs, 2 do
        if match(subs[j + 1], typ) then r[#r + 1] = subs[j] end
      end
      routes[typ] = r
    end
    if delay == 0 then
      for k = 1, #r do call('XADD', p .. ':s:' .. r[k], '*', unpack(ARGV, fs, fe)) end
    elseif #r > 0 then
      now = now or now_ms()
      -- Field "a" (no attempts used) marks the entry the receive script
      -- appends when it comes due as re-added by Ripple: it was routed
      -- now, so receivers never filter it out (see route.go).
      local f = {unpack(ARGV, fs, fe)}
      f[#f + 1] = 'a'
      f[#f + 1] = '0'
      for k = 1, #r do
        call('ZADD', p .. ':d:' .. r[k], now + delay, delay_member(p, f))
      end
    end
    -- The dedup record is written after the event, so that a write that
    -- fails leaves none and the publish can be retried.
    if ttl ~= '0' then
      call('SET', di .. ident, cmsgpack.pack(nonce, {unpack(ARGV, fs, fe)}), 'PX', ttl)
    end
  end
end
return dups
`)

// registryScript reads the subscription registry: {PREFIX:subsv or "",
// the PREFIX:subs hash as a flat list, the PREFIX:subsfrom field of ARGV[2]
// or ""}. ARGV: prefix, a subscription name or "". A script rather than
// MULTI: it reads atomically all the same, and a full Redis (maxmemory)
// runs it, where it discards a MULTI whole.
var registryScript = newScript(`
local p = ARGV[1]
local from = ARGV[2] ~= '' and redis.call('HGET', p .. ':subsfrom', ARGV[2])
return {redis.call('GET', p .. ':subsv') or '', redis.call('HGETALL', p .. ':subs'), from or ''}
`)

// delayedIDsScript lists the event ids of a range of a subscription's
// delayed set, by rank. ARGV: prefix, name, first rank, last rank.
var delayedIDsScript = newScript(`
local out = {}
for i, m in ipairs(redis.call('ZRANGE', ARGV[1] .. ':d:' .. ARGV[2], ARGV[3], ARGV[4])) do
  local _, f = cmsgpack.unpack(m)
  out[i] = ''
  for j = 1, #f - 1, 2 do
    if f[j] == 'id' then out[i] = f[j + 1] break end
  end
end
return out
`)

// delayedPageScript lists a range of a subscription's delayed set, by
// rank: {due ms, fields} per entry. ARGV: prefix, name, first rank, last
// rank.
var delayedPageScript = newScript(`
local out = {}
local r = redis.call('ZRANGE', ARGV[1] .. ':d:' .. ARGV[2], ARGV[3], ARGV[4], 'WITHSCORES')
for i = 1, #r, 2 do
  local _, f = cmsgpack.unpack(r[i])
  out[#out + 1] = {r[i + 1], f}
end
return out
`)

// addDelayedScript adds entries to a registered subscription's delayed
// set. ARGV: prefix, name, then per entry: due ms, field count, fields.
var addDelayedScript = newScript(luaDelay + `
local p, name = ARGV[1], ARGV[2]
if redis.call('HEXISTS', p .. ':subs', name) == 0 then return 0 end
local i, n = 3, 0
while i <= #ARGV do
  local due, nf = ARGV[i], tonumber(ARGV[i + 1])
  redis.call('ZADD', p .. ':d:' .. name, due, delay_member(p, {unpack(ARGV, i + 2, i + 1 + nf)}))
  i = i + 2 + nf
  n = n + 1
end
return n
`)

// subscribeScript registers (or updates) a subscription and creates its
// stream and consumer group, after reaping abandoned ephemeral
// subscriptions. ARGV: prefix, name, pattern, a fresh registry version
// (see route.go), "1" for an ephemeral subscription, the receiver's
// consumer and lease ms (ephemeral ones start with a live receiver), "1"
// to list where history ends (see startFrom). It returns {0, history}
// when it created the subscription, {1} when it existed, {-1} when an
// ephemeral one was asked for under a durable one's name, {-2} for the
// reverse. history lists, for every other subscription, {name, the last
// id of its stream, the last id of its dead-letter stream}.
var subscribeScript = newScript(luaNow + luaRegister + luaKeepLease + luaEphemeral + `
local p, name, pattern = ARGV[1], ARGV[2], ARGV[3]
local eph, consumer, lease = ARGV[5] == '1', ARGV[6], ARGV[7]
local now = now_ms()
reap(p, now, ARGV[4])
local existed = redis.call('HEXISTS', p .. ':subs', name) == 1
if existed then
  local was = redis.call('HEXISTS', p .. ':eph', name) == 1
  if eph and not was then return {-1} end
  if was and not eph then return {-2} end
end
local history = {}
if not existed and ARGV[8] == '1' then
  local subs = redis.call('HGETALL', p .. ':subs')
  for i = 1, #subs, 2 do
    local last = {}
    for j, k in ipairs({':s:', ':x:'}) do
      local e = redis.call('XREVRANGE', p .. k .. subs[i], '+', '-', 'COUNT', 1)
      last[j] = e[1] and e[1][1] or ''
    end
    history[#history + 1] = {subs[i], last[1], last[2]}
  end
end
register(p, name, pattern, ARGV[4])
local r = redis.pcall('XGROUP', 'CREATE', p .. ':s:' .. name, name, '0', 'MKSTREAM')
if type(r) == 'table' and r.err and not string.find(r.err, 'BUSYGROUP', 1, true) then
  return redis.error_reply(r.err)
end
if eph then
  touch(p, name, lease, now)
  keep_lease(p .. ':l:' .. name, consumer, lease, now)
end
if existed then return {1} end
return {0, history}
`)

// luaKeepLease and luaLeases keep the leases of a handler's live
// receivers, so that a receiver reclaims only entries idle for longer than
// the lease of any receiver that may hold them: the processes of one handler can run with
// different leases (a deploy that changes Lease rolls out one process at a
// time). PREFIX:l:NAME maps each receiver (consumer) to "lease ms:live
// until ms". A receiver writes its entry at every receive script and lease
// renewal, which a live receiver runs at least every 250ms while idle and
// every third of its lease while it holds entries; an entry not renewed by
// its live-until time, its lease plus a second, is a crashed or closed
// receiver's and no longer counts. Once such a receiver holds no entries
// (they were reclaimed), its entry and its consumer in the group are
// deleted, so that processes that come and go do not pile up consumers.
// Writes use pcall: a full Redis refusing one must not stop a receive or
// a renewal.
const (
	luaKeepLease = `
local function keep_lease(lk, consumer, lease, now)
  redis.pcall('HSET', lk, consumer, lease .. ':' .. (now + tonumber(lease) + 1000))
end
`
	luaLeases = `
-- drop_consumer deletes a consumer and its lease entry if it holds no
-- pending entries.
local function drop_consumer(s, name, lk, consumer)
  local held = redis.pcall('XPENDING', s, name, '-', '+', 1, consumer)
  if type(held) == 'table' and not held.err and not held[1] then
    redis.pcall('XGROUP', 'DELCONSUMER', s, name, consumer)
    redis.pcall('HDEL', lk, consumer)
  end
end

local function longest_lease(s, name, lk, lease, now)
  local all = redis.call('HGETALL', lk)
  local longest = tonumber(lease)
  for i = 1, #all, 2 do
    local v = all[i + 1]
    local c = string.find(v, ':', 1, true)
    local l, u = tonumber(string.sub(v, 1, (c or 1) - 1)), tonumber(string.sub(v, (c or #v) + 1))
    if not l or not u or u < now then
      drop_consumer(s, name, lk, all[i])
    elseif l > longest then
      longest = l
    end
  end
  return longest
end
`
)

// receiveScript is the non-blocking part of Receive: it re-registers the
// subscription if Redis lost it, moves due delayed entries to the stream,
// reclaims entries idle for longer than the longest lease of the handler's
// live receivers (when ARGV[5] is "1", see luaLeases), and reads new
// entries. ARGV: prefix, name, consumer, count, reclaim, lease ms, pattern,
// a fresh registry version (see route.go), where the reclaim scan starts,
// "1" for an ephemeral subscription (see luaEphemeral; the reclaim scan
// also reaps abandoned ones).
// It returns {ms until the next delayed entry is due or -1, ids XAUTOCLAIM found
// deleted, {id, delivery count, fields}..., the registry version, where
// the next reclaim scan starts, the error that stopped moving delayed
// entries or "", 1 when the handler is paused or 0}; after such an error
// the next try is a second later. Each scan goes on from where the last
// one stopped, so expired leases behind many live ones are reached too.
var receiveScript = newScript(luaNow + luaGroups + luaRegister + luaKeepLease + luaLeases + luaEphemeral + `
local p, name, consumer = ARGV[1], ARGV[2], ARGV[3]
local count = tonumber(ARGV[4])
local reclaim = ARGV[5] == '1'
local lease = ARGV[6]
local s, dk, subs, lk = p .. ':s:' .. name, p .. ':d:' .. name, p .. ':subs', p .. ':l:' .. name
if redis.call('HEXISTS', subs, name) == 0 then
  register(p, name, ARGV[7], ARGV[8])
end
local now = now_ms()
keep_lease(lk, consumer, lease, now)
if ARGV[10] == '1' then touch(p, name, lease, now) end
if reclaim then reap(p, now, ARGV[8]) end
local due = redis.call('ZRANGEBYSCORE', dk, '-inf', now, 'LIMIT', 0, 256)
-- A full Redis (maxmemory) refuses the XADD; the entries then stay
-- delayed, and the entries already in the stream are still read.
local moved, refused = {}, ''
for _, m in ipairs(due) do
  local _, f = cmsgpack.unpack(m)
  local r = redis.pcall('XADD', s, '*', unpack(f))
  if type(r) == 'table' and r.err then
    refused = r.err
    break
  end
  moved[#moved + 1] = m
end
if #moved > 0 then redis.call('ZREM', dk, unpack(moved)) end
local out, deleted, cursor = {}, {}, ARGV[9]
-- A paused handler (see Pause) gets nothing: its entries wait, expired
-- leases included, until it is resumed.
local paused = redis.call('HEXISTS', p .. ':paused', name)
if paused == 1 then
  reclaim = false
  count = 0
end
if reclaim then
  local r = gcall(s, name, 'XAUTOCLAIM', s, name, consumer, longest_lease(s, name, lk, lease, now), ARGV[9], 'COUNT', count)
  if r.err then return r end
  cursor = r[1] or ARGV[9]
  if r[3] then deleted = r[3] end
  for _, e in ipairs(r[2]) do
    if e[2] then
      local pe = redis.call('XPENDING', s, name, e[1], e[1], 1)
      local n = 1
      if pe[1] then n = pe[1][4] end
      out[#out + 1] = {e[1], n, e[2]}
    end
  end
end
if #out < count then
  local r = gcall(s, name, 'XREADGROUP', 'GROUP', name, consumer, 'COUNT', count - #out, 'STREAMS', s, '>')
  if r and r.err then return r end
  if r then
    for _, e in ipairs(r[1][2]) do out[#out + 1] = {e[1], 1, e[2]} end
  end
end
local nxt = -1
local first = redis.call('ZRANGE', dk, 0, 0, 'WITHSCORES')
if first[2] then nxt = math.max(tonumber(first[2]) - now, 0) end
if refused ~= '' then nxt = 1000 end
return {nxt, deleted, out, redis.call('GET', p .. ':subsv') or '', cursor, refused, paused}
`)

// settleScript records retries, releases and dead letters (completions
// are plain XACKs, see acker). ARGV: prefix, name, dead count to keep,
// then per settlement: op (r retry, l release, d dead), entry id,
// consumer, delivery count, attempts to record, first delivery ms, delay
// ms, error. A settlement whose entry is no longer pending for this
// consumer with that delivery count lost its lease and is skipped, as is a
// second settlement of an entry in the same call. It returns the ids found
// deleted from the stream.
var settleScript = newScript(luaNow + luaStrip + luaDelay + `
local call, pcall = redis.call, redis.pcall
local p, name = ARGV[1], ARGV[2]
local keepDead = tonumber(ARGV[3])
local s = p .. ':s:' .. name
local now
local drop = {a = true, f = true}
local lost, seen = {}, {}
for i = 4, #ARGV, 8 do
  local op, id = ARGV[i], ARGV[i + 1]
  if not seen[id] then
    local pe = pcall('XPENDING', s, name, id, id, 1)
    if type(pe) == 'table' and not pe.err and pe[1] and pe[1][2] == ARGV[i + 2] and pe[1][4] == tonumber(ARGV[i + 3]) then
      seen[id] = true
      local att, first, delay, err = ARGV[i + 4], ARGV[i + 5], tonumber(ARGV[i + 6]), ARGV[i + 7]
      now = now or now_ms()
      local e = call('XRANGE', s, id, id)
      if not e[1] then
        lost[#lost + 1] = id
      elseif op == 'd' then
        if keepDead > 0 then
          local f = strip(e[1][2], drop)
          f[#f + 1] = 'x_error'; f[#f + 1] = err
          f[#f + 1] = 'x_attempts'; f[#f + 1] = att
          f[#f + 1] = 'x_first'; f[#f + 1] = first
          f[#f + 1] = 'x_dead'; f[#f + 1] = tostring(now)
          call('XADD', p .. ':x:' .. name, 'MAXLEN', keepDead, '*', unpack(f))
        end
      else
        local f = strip(e[1][2], drop)
        f[#f + 1] = 'a'; f[#f + 1] = att
        f[#f + 1] = 'f'; f[#f + 1] = first
        if delay > 0 then
          call('ZADD', p .. ':d:' .. name, now + delay, delay_member(p, f))
        else
          call('XADD', s, '*', unpack(f))
        end
      end
      -- The entry goes only once its copy is written: a write that fails
      -- stops the script with the entry still pending, to be delivered
      -- again. The failure count is statistics, so it cannot stop it.
      if op ~= 'l' then pcall('HINCRBY', p .. ':n:' .. name, 'failed', 1) end
      call('XACK', s, name, id)
      call('XDEL', s, id)
    end
  end
end
return lost
`)

// extendScript resets the idle time of entries still held by this
// consumer with the given delivery count (XCLAIM JUSTID does not count a
// delivery), and renews the receiver's lease entry (see luaLeases). ARGV:
// prefix, name, the receiver's consumer and lease ms, "1" for an
// ephemeral subscription (touched, see luaEphemeral), then id, consumer,
// delivery count triples.
var extendScript = newScript(luaNow + luaKeepLease + luaEphemeral + `
local p, name = ARGV[1], ARGV[2]
local s = p .. ':s:' .. name
local n = 0
local now = now_ms()
keep_lease(p .. ':l:' .. name, ARGV[3], ARGV[4], now)
if ARGV[5] == '1' then touch(p, name, ARGV[4], now) end
for i = 6, #ARGV, 3 do
  local id, consumer, cnt = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  local pe = redis.pcall('XPENDING', s, name, id, id, 1)
  if type(pe) == 'table' and not pe.err and pe[1] and pe[1][2] == consumer and pe[1][4] == cnt then
    redis.call('XCLAIM', s, name, consumer, 0, id, 'JUSTID')
    n = n + 1
  end
end
return n
`)

// trimScript applies retention to a subscription's stream and dead-letter
// stream. Only entries older than every pending and undelivered entry are
// trimmed, so retention never removes work. ARGV: prefix, name, completed
// count, completed age ms, dead count, dead age ms, slack (how far over the
// count the stream may grow before a trim, to amortise it).
var trimScript = newScript(luaNow + luaIDs + luaGroups + `
local p, name = ARGV[1], ARGV[2]
local keepC, ageC, keepD, ageD, slack = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local s, x = p .. ':s:' .. name, p .. ':x:' .. name
local now = now_ms()
local trimmed = 0
local g = groupinfo(s, name)
if g then
  local sum = redis.call('XPENDING', s, name)
  local floor
  if tonumber(sum[1]) > 0 then floor = sum[2] else floor = idnext(g['last-delivered-id']) end
  -- An age longer than the time since 1970 cuts nothing.
  local cutoff = string.format('%.0f-0', math.max(now - ageC, 0))
  local minid = cutoff
  if idless(floor, cutoff) then minid = floor end
  local first = redis.call('XRANGE', s, '-', '+', 'COUNT', 1)
  if first[1] and idless(first[1][1], minid) then
    trimmed = trimmed + redis.call('XTRIM', s, 'MINID', minid)
  end
  -- Count trimming. The stream is: completed entries below floor, then
  -- the window from floor to the last delivered entry (pending and
  -- completed ones), then lag undelivered entries. Entries below floor
  -- are counted as XLEN minus the other two, so trimming the oldest
  -- (MAXLEN) removes only them. Counting the window reads its entries,
  -- but it is only as long as the deliveries in flight, where reading the
  -- entries to trim would cost a Lua table per trimmed entry.
  local lag = g['lag']
  if lag then
    local window = 0
    if tonumber(sum[1]) > 0 then
      window = #redis.call('XRANGE', s, floor, g['last-delivered-id'], 'COUNT', 1001)
    end
    if window <= 1000 then
      local xlen = redis.call('XLEN', s)
      local excess = xlen - window - lag - keepC
      if excess > slack then
        trimmed = trimmed + redis.call('XTRIM', s, 'MAXLEN', xlen - excess)
      end
    end
  end
end
redis.call('XTRIM', x, 'MINID', string.format('%.0f-0', math.max(now - ageD, 0)))
redis.call('XTRIM', x, 'MAXLEN', keepD)
return trimmed
`)

// statsScript reports one subscription's counts. ARGV: prefix, name.
// It returns {stream length, pending, waiting in the stream, oldest
// waiting entry ms or -1, delayed and not yet due, dead, failed, delayed
// and due}.
var statsScript = newScript(luaNow + luaIDs + luaGroups + `
local p, name = ARGV[1], ARGV[2]
local s = p .. ':s:' .. name
local xlen = redis.call('XLEN', s)
local g = groupinfo(s, name)
local pending, waiting, oldest = 0, xlen, -1
local after = '-'
if g then
  pending = g['pending']
  after = '(' .. g['last-delivered-id']
  waiting = g['lag']
  if not waiting then
    -- Redis leaves lag unknown once a delivered entry has been deleted (a
    -- retry, release or dead letter of the newest one) until the group
    -- reads again, which can be long when no handler runs. Count the
    -- shorter side of the last delivered entry, reading both a page at
    -- a time in turn: the undelivered entries after it (the backlog,
    -- unbounded), or the entries up to it (those kept by retention and
    -- those in flight), which leave the rest waiting.
    local last = g['last-delivered-id']
    local wfrom, dfrom, wn, dn = after, '-', 0, 0
    while true do
      local r = redis.call('XRANGE', s, wfrom, '+', 'COUNT', 1000)
      wn = wn + #r
      if #r < 1000 then
        waiting = wn
        break
      end
      wfrom = '(' .. r[#r][1]
      r = redis.call('XRANGE', s, dfrom, last, 'COUNT', 1000)
      dn = dn + #r
      if #r < 1000 then
        waiting = xlen - dn
        break
      end
      dfrom = '(' .. r[#r][1]
    end
  end
end
local o = redis.call('XRANGE', s, after, '+', 'COUNT', 1)
if o[1] then oldest = pid(o[1][1]) end
-- Delayed entries already due are waiting: they move to the stream at the
-- next receive, which may be a while when no handler runs.
local dk = p .. ':d:' .. name
local due = redis.call('ZCOUNT', dk, '-inf', now_ms())
if due > 0 then
  local first = tonumber(redis.call('ZRANGE', dk, 0, 0, 'WITHSCORES')[2])
  if oldest < 0 or first < oldest then oldest = first end
end
local failed = tonumber(redis.call('HGET', p .. ':n:' .. name, 'failed') or '0')
return {xlen, pending, waiting, oldest, redis.call('ZCARD', dk) - due, redis.call('XLEN', p .. ':x:' .. name), failed, due}
`)

// requeueScript moves dead letters back to the subscription's stream with
// a fresh attempt budget. ARGV: prefix, name, dead-letter stream ids.
var requeueScript = newScript(luaStrip + `
local p, name = ARGV[1], ARGV[2]
local s, x = p .. ':s:' .. name, p .. ':x:' .. name
local drop = {a = true, f = true, x_error = true, x_attempts = true, x_first = true, x_dead = true}
local n = 0
for i = 3, #ARGV do
  local e = redis.call('XRANGE', x, ARGV[i], ARGV[i])
  if e[1] then
    -- A fresh start (no attempts used), marked "a" as re-added by Ripple:
    -- it was routed when first published, so receivers never filter it
    -- out (see route.go).
    local f = strip(e[1][2], drop)
    f[#f + 1] = 'a'
    f[#f + 1] = '0'
    redis.call('XADD', s, '*', unpack(f))
    redis.call('XDEL', x, ARGV[i])
    n = n + 1
  end
end
return n
`)

// claimScript takes an idempotency claim. ARGV: key, lease ms. Returns
// 1 claimed, 2 done, 3 busy.
var claimScript = newScript(`
local v = redis.call('GET', ARGV[1])
if v == 'done' then return 2 end
if v then return 3 end
redis.call('SET', ARGV[1], 'busy', 'PX', ARGV[2])
return 1
`)

// finishScript marks a claim done (ARGV[2] = "1", kept for ARGV[3] ms) or
// drops a claim that is not done.
var finishScript = newScript(`
if ARGV[2] == '1' then
  redis.call('SET', ARGV[1], 'done', 'PX', ARGV[3])
elseif redis.call('GET', ARGV[1]) == 'busy' then
  redis.call('DEL', ARGV[1])
end
return 1
`)

// reserveScript is a sliding-window rate limiter shared by every process:
// at most n starts in any interval of length per. The key is a sorted set
// of the start times reserved (µs on the server's clock, some in the
// future), trimmed of those a period or more in the past, which can share
// no interval with a start from now on. A new start goes at the earliest
// time from now that is a period after the n-th most recent start and not
// before the latest, so every interval of length per that holds it holds
// at most n. ARGV: key, n, period µs, a unique member suffix. It returns
// how many µs the caller must wait before its start.
var reserveScript = newScript(`
local key, n, per = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
redis.call('ZREMRANGEBYSCORE', key, '-inf', now - per)
local k = redis.call('ZCARD', key)
local start = now
if k >= n then
  local nth = redis.call('ZRANGE', key, k - n, k - n, 'WITHSCORES')
  local latest = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
  start = math.max(now, tonumber(nth[2]) + per, tonumber(latest[2]))
end
redis.call('ZADD', key, start, string.format('%.0f', start) .. ':' .. ARGV[4])
redis.call('PEXPIRE', key, math.floor((start + per - now) / 1000) + 1)
return math.floor(start - now)
`)

// findScript looks for an event among a stream's newest entries: those
// added in the last ARGV[2] ms by the server's clock, newest first, at
// most ARGV[5] of them. ARGV: stream, lookback ms, event id, source,
// limit. It returns 1 when an entry has that id and source, 0 when none
// has, -1 when the limit was reached first.
var findScript = newScript(luaNow + `
local s, id, src, limit = ARGV[1], ARGV[3], ARGV[4], tonumber(ARGV[5])
local minid = string.format('%.0f', math.max(now_ms() - tonumber(ARGV[2]), 0))
local last, seen = '+', 0
while seen < limit do
  local es = redis.call('XREVRANGE', s, last, minid, 'COUNT', 200)
  for _, e in ipairs(es) do
    local f, fid, fsrc = e[2], nil, ''
    for i = 1, #f, 2 do
      if f[i] == 'id' then fid = f[i + 1] elseif f[i] == 'ce_source' then fsrc = f[i + 1] end
    end
    if fid == id and fsrc == src then return 1 end
  end
  if #es < 200 then return 0 end
  seen = seen + #es
  last = '(' .. es[#es][1]
end
return -1
`)

// recordsScript reads the dedup records of a publish call's messages (see
// publishScript). ARGV: prefix, the call's nonce, identities. It returns,
// per identity, 0 when there is no record, 1 when the record is the
// call's own, or the fields of the event another call stored.
var recordsScript = newScript(`
local p, nonce = ARGV[1], ARGV[2]
local out = {}
for i = 3, #ARGV do
  local v = redis.call('GET', p .. ':di:' .. ARGV[i])
  if not v then
    out[#out + 1] = 0
  else
    local n, f = cmsgpack.unpack(v)
    if n == nonce then out[#out + 1] = 1 else out[#out + 1] = f end
  end
end
return out
`)

// pauseScript pauses (ARGV[3] = "1") or resumes a registered handler: the
// hash PREFIX:paused holds the paused ones, which the receive script reads.
// ARGV: prefix, name, flag. It returns 0 for an unknown handler.
var pauseScript = newScript(`
local p, name = ARGV[1], ARGV[2]
if redis.call('HEXISTS', p .. ':subs', name) == 0 then return 0 end
if ARGV[3] == '1' then
  redis.call('HSET', p .. ':paused', name, '1')
else
  redis.call('HDEL', p .. ':paused', name)
end
return 1
`)

// leaveScript deletes a consumer that holds no pending entries, and its
// lease entry (see luaLeases), so closed receivers do not accumulate. For
// an ephemeral subscription (ARGV[4] = "1") whose other receivers are all
// gone, it deletes the subscription. ARGV: prefix, name, consumer,
// ephemeral flag, a fresh registry version.
var leaveScript = newScript(luaNow + luaLeases + luaEphemeral + `
local p, name, consumer = ARGV[1], ARGV[2], ARGV[3]
local lk = p .. ':l:' .. name
drop_consumer(p .. ':s:' .. name, name, lk, consumer)
if ARGV[4] == '1' then
  -- This receiver is gone even when it still holds entries: other
  -- receivers of the subscription reclaim them by their own leases.
  redis.call('HDEL', lk, consumer)
  local now = now_ms()
  local all = redis.call('HGETALL', lk)
  for i = 1, #all, 2 do
    local v = all[i + 1]
    local u = tonumber(string.sub(v, (string.find(v, ':', 1, true) or #v) + 1))
    if all[i] ~= consumer and u and u >= now then return 1 end
  end
  delete_sub(p, name, ARGV[5])
end
return 1
`)

// reapScript reaps abandoned ephemeral subscriptions (see luaEphemeral).
// ARGV: prefix, a fresh registry version.
var reapScript = newScript(luaNow + luaEphemeral + `
reap(ARGV[1], now_ms(), ARGV[2])
return 1
`)

// scriptSources keeps each script's source for loading.
var scriptSources = map[*goredis.Script]string{}

func newScript(src string) *goredis.Script {
	s := goredis.NewScript(src)
	scriptSources[s] = src
	return s
}

var allScripts = []*goredis.Script{
	leaveScript,
	publishScript, subscribeScript, receiveScript, settleScript, extendScript,
	trimScript, statsScript, requeueScript, claimScript, finishScript, reserveScript,
	pauseScript, reapScript, findScript, recordsScript, delayedPageScript, addDelayedScript,
}

// loadScripts compiles every script on the server once, so a syntax error
// shows at Open and the first calls need no EVAL fallback.
func (d *Driver) loadScripts(ctx context.Context) error {
	// ScriptLoad on the pipeline, not Script.Load: the latter would store
	// the pipelined command's still-empty reply as the script's hash.
	pipe := d.client.Pipeline()
	cmds := make([]*goredis.StringCmd, len(allScripts))
	for i, s := range allScripts {
		cmds[i] = pipe.ScriptLoad(ctx, scriptSources[s])
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return err
	}
	for i, s := range allScripts {
		if got := cmds[i].Val(); got != s.Hash() {
			return fmt.Errorf("script digest %q from Redis differs from %q computed locally", got, s.Hash())
		}
	}
	return nil
}
