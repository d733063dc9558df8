//! The Lua scripts behind every write, so each runs atomically on the
//! server and reads the server's clock.
//!
//! Key layout under the prefix `P` (default `courier:`):
//!
//! | key | type | contents |
//! |---|---|---|
//! | `P m:<id>` | hash | one message |
//! | `P q:<len>:<queue>:due` | sorted set | pending ids by `available_at` (ms) |
//! | `P q:<len>:<queue>:leased` | sorted set | in-flight ids by lease expiry (ms) |
//! | `P q:<len>:<queue>:s:<state>` | sorted set | ids in a state, all scored 0 so they sort by id |
//! | `P q:<len>:<queue>:u:<state>` | sorted set | ids in a state by `updated_at` (ms), for purges |
//! | `P i:<digest>` | hash | one idempotency record |
//! | `P i:tokens` | string | the idempotency token counter |
//! | `P i:expiry` | sorted set | idempotency digests by `expires_at` (ms), for purges |
//! | `P r:<len>:<kid>:<nonce>` | string | one replay nonce |
//!
//! Queue names and key ids are length-prefixed so that no two of them
//! build the same key. Scripts build message keys from ids they read, which
//! a Redis Cluster does not allow: the store needs a standalone server (or
//! a primary with replicas).

use redis::Script;

/// Helpers every script starts with. `ARGV[1]` is always the key prefix.
const PRELUDE: &str = r#"
local P = ARGV[1]
local FIELDS = {'queue', 'destination', 'method', 'path', 'headers', 'body', 'metadata',
  'state', 'attempts', 'token', 'available_at', 'created_at', 'updated_at', 'last_error',
  'outcome_status', 'outcome_body', 'lease_expires_at'}

-- Milliseconds since the epoch by the server's clock.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Formats a whole number without the exponent Lua would use past 1e14.
local function int(n)
  return string.format('%d', n)
end

local function mkey(id)
  return P .. 'm:' .. id
end

local function qkey(queue, suffix)
  return P .. 'q:' .. string.len(queue) .. ':' .. queue .. ':' .. suffix
end

-- Returns the id followed by the message fields in FIELDS order.
local function read(id)
  local values = redis.call('HMGET', mkey(id), unpack(FIELDS))
  table.insert(values, 1, id)
  return values
end

-- Moves an id between the per-state index sets.
local function move(id, queue, from, to, now)
  if from then
    redis.call('ZREM', qkey(queue, 's:' .. from), id)
    redis.call('ZREM', qkey(queue, 'u:' .. from), id)
  end
  redis.call('ZADD', qkey(queue, 's:' .. to), 0, id)
  redis.call('ZADD', qkey(queue, 'u:' .. to), int(now), id)
end

-- Returns the queue of a message in flight under token, or nil.
local function held(id, token)
  local state, current, queue = unpack(redis.call('HMGET', mkey(id), 'state', 'token', 'queue'))
  if state ~= 'in_flight' or current ~= token then
    return nil
  end
  return queue
end
"#;

/// ARGV: prefix, channel, then per message id, queue, destination, method,
/// path, headers, body, metadata, available_at. Returns 1 or 0 per message.
const ENQUEUE: &str = r#"
local now = now_ms()
local seen, woke, result = {}, {}, {}
local count = (#ARGV - 2) / 9
for i = 0, count - 1 do
  local base = 2 + i * 9
  local id, queue = ARGV[base + 1], ARGV[base + 2]
  local key = mkey(id)
  if seen[id] or redis.call('EXISTS', key) == 1 then
    result[#result + 1] = 0
  else
    seen[id] = true
    redis.call('HSET', key, 'queue', queue, 'destination', ARGV[base + 3],
      'method', ARGV[base + 4], 'path', ARGV[base + 5], 'headers', ARGV[base + 6],
      'body', ARGV[base + 7], 'metadata', ARGV[base + 8], 'available_at', ARGV[base + 9],
      'state', 'pending', 'attempts', '0', 'token', '0',
      'created_at', int(now), 'updated_at', int(now))
    redis.call('ZADD', qkey(queue, 'due'), ARGV[base + 9], id)
    move(id, queue, nil, 'pending', now)
    woke[queue] = true
    result[#result + 1] = 1
  end
end
for queue in pairs(woke) do
  redis.call('PUBLISH', ARGV[2], queue)
end
return result
"#;

/// ARGV: prefix, queue, limit, lease (ms). Returns the claimed messages.
const CLAIM: &str = r#"
local queue, limit, lease = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local now = now_ms()
local candidates = {}
local due = redis.call('ZRANGEBYSCORE', qkey(queue, 'due'), '-inf', int(now),
  'WITHSCORES', 'LIMIT', 0, limit)
for i = 1, #due, 2 do
  candidates[#candidates + 1] = {id = due[i], at = tonumber(due[i + 1]), from = 'pending'}
end
local expired = redis.call('ZRANGEBYSCORE', qkey(queue, 'leased'), '-inf', int(now),
  'LIMIT', 0, limit)
for _, id in ipairs(expired) do
  local at = tonumber(redis.call('HGET', mkey(id), 'available_at')) or 0
  candidates[#candidates + 1] = {id = id, at = at, from = 'in_flight'}
end
table.sort(candidates, function(a, b)
  if a.at ~= b.at then return a.at < b.at end
  return a.id < b.id
end)

local expires = int(now + lease)
local claimed = {}
for i = 1, math.min(limit, #candidates) do
  local id, from = candidates[i].id, candidates[i].from
  local key = mkey(id)
  redis.call('HINCRBY', key, 'token', 1)
  redis.call('HINCRBY', key, 'attempts', 1)
  redis.call('HSET', key, 'state', 'in_flight', 'lease_expires_at', expires,
    'updated_at', int(now))
  redis.call('ZREM', qkey(queue, 'due'), id)
  redis.call('ZADD', qkey(queue, 'leased'), expires, id)
  move(id, queue, from, 'in_flight', now)
  claimed[#claimed + 1] = read(id)
end
return claimed
"#;

/// ARGV: prefix, id, token, extend_by (ms). Returns the new expiry or nil.
const RENEW: &str = r#"
local id = ARGV[2]
local queue = held(id, ARGV[3])
if not queue then return false end
local expires = int(now_ms() + tonumber(ARGV[4]))
redis.call('HSET', mkey(id), 'lease_expires_at', expires)
redis.call('ZADD', qkey(queue, 'leased'), expires, id)
return expires
"#;

/// ARGV: prefix, id, token, state, has_error, error, status ('' for none),
/// body. Returns 1, or 0 when the lease is lost.
const FINISH: &str = r#"
local id, state = ARGV[2], ARGV[4]
local queue = held(id, ARGV[3])
if not queue then return 0 end
local now = now_ms()
local key = mkey(id)
redis.call('HSET', key, 'state', state, 'updated_at', int(now))
redis.call('HDEL', key, 'lease_expires_at')
if ARGV[5] == '1' then
  redis.call('HSET', key, 'last_error', ARGV[6])
end
if ARGV[7] ~= '' then
  redis.call('HSET', key, 'outcome_status', ARGV[7], 'outcome_body', ARGV[8])
else
  redis.call('HDEL', key, 'outcome_status', 'outcome_body')
end
redis.call('ZREM', qkey(queue, 'leased'), id)
move(id, queue, 'in_flight', state, now)
return 1
"#;

/// ARGV: prefix, channel, id, token, available_at ('' for now), has_error,
/// error, uncount ('1' gives the attempt back). Returns the queue, or nil
/// when the lease is lost.
const REQUEUE: &str = r#"
local id = ARGV[3]
local queue = held(id, ARGV[4])
if not queue then return false end
local now = now_ms()
local key = mkey(id)
local available = ARGV[5]
if available == '' then available = int(now) end
redis.call('HSET', key, 'state', 'pending', 'available_at', available, 'updated_at', int(now))
redis.call('HDEL', key, 'lease_expires_at')
if ARGV[6] == '1' then
  redis.call('HSET', key, 'last_error', ARGV[7])
end
if ARGV[8] == '1' and (tonumber(redis.call('HGET', key, 'attempts')) or 0) > 0 then
  redis.call('HINCRBY', key, 'attempts', -1)
end
redis.call('ZREM', qkey(queue, 'leased'), id)
redis.call('ZADD', qkey(queue, 'due'), available, id)
move(id, queue, 'in_flight', 'pending', now)
redis.call('PUBLISH', ARGV[2], queue)
return queue
"#;

/// ARGV: prefix, channel, id. Returns the queue, or nil unless the message
/// was dead or failed.
const RETRY: &str = r#"
local id = ARGV[3]
local key = mkey(id)
local state, queue = unpack(redis.call('HMGET', key, 'state', 'queue'))
if state ~= 'dead' and state ~= 'failed' then return false end
local now = int(now_ms())
redis.call('HSET', key, 'state', 'pending', 'attempts', '0', 'available_at', now,
  'updated_at', now)
redis.call('HDEL', key, 'outcome_status', 'outcome_body', 'lease_expires_at')
redis.call('ZADD', qkey(queue, 'due'), now, id)
move(id, queue, state, 'pending', tonumber(now))
redis.call('PUBLISH', ARGV[2], queue)
return queue
"#;

/// ARGV: prefix, id. Returns the message or nil.
const GET: &str = r#"
local values = read(ARGV[2])
if not values[2] then return false end
return values
"#;

/// ARGV: prefix, queue, state, after ('' for the start), limit.
const LIST: &str = r#"
local min = '-'
if ARGV[4] ~= '' then min = '(' .. ARGV[4] end
local ids = redis.call('ZRANGEBYLEX', qkey(ARGV[2], 's:' .. ARGV[3]), min, '+',
  'LIMIT', 0, tonumber(ARGV[5]))
local out = {}
for _, id in ipairs(ids) do
  out[#out + 1] = read(id)
end
return out
"#;

/// ARGV: prefix, queue. Returns the counts in `MessageState::ALL` order.
const COUNTS: &str = r#"
local out = {}
for _, state in ipairs({'pending', 'in_flight', 'succeeded', 'failed', 'dead'}) do
  out[#out + 1] = redis.call('ZCARD', qkey(ARGV[2], 's:' .. state))
end
return out
"#;

/// ARGV: prefix, queue, state, older_than (ms), batch. Deletes up to batch
/// messages and returns how many.
const PURGE: &str = r#"
local queue, state = ARGV[2], ARGV[3]
local ids = redis.call('ZRANGEBYSCORE', qkey(queue, 'u:' .. state), '-inf', '(' .. ARGV[4],
  'LIMIT', 0, tonumber(ARGV[5]))
for _, id in ipairs(ids) do
  redis.call('DEL', mkey(id))
  redis.call('ZREM', qkey(queue, 's:' .. state), id)
  redis.call('ZREM', qkey(queue, 'u:' .. state), id)
  redis.call('ZREM', qkey(queue, 'due'), id)
end
return #ids
"#;

/// Helpers of the idempotency scripts.
///
/// A record is live until its `expires_at`. Its key is kept for
/// `RECORD_GRACE` more milliseconds, so that a holder whose expired claim
/// was not taken over can still complete, as with the other backends, and
/// so that `purge_expired` finds it. Redis deletes the key itself after the
/// grace if no purge did. The sorted set
/// `P i:expiry` indexes digests by `expires_at` for purges.
const RECORD_PRELUDE: &str = r#"
local RECORD_GRACE = 600000
local RECORD_FIELDS = {'state', 'fingerprint', 'token', 'expires_at', 'status', 'headers', 'body'}
local INDEX = P .. 'i:expiry'
local function ikey(digest)
  return P .. 'i:' .. digest
end
local function live(key, now)
  local record = redis.call('HMGET', key, unpack(RECORD_FIELDS))
  if record[1] and tonumber(record[4]) > now then return record end
  return nil
end
local function claimed_by(key, token)
  local state, current = unpack(redis.call('HMGET', key, 'state', 'token'))
  return state == 'in_progress' and current == token
end
-- Sets a record's expiry, its key's expiry and its index entry.
local function expire_at(digest, expires)
  local key = ikey(digest)
  redis.call('HSET', key, 'expires_at', int(expires))
  redis.call('PEXPIREAT', key, int(expires + RECORD_GRACE))
  redis.call('ZADD', INDEX, int(expires), digest)
end
"#;

/// ARGV: prefix, digest, fingerprint, lease (ms). Returns `claimed` and the
/// token, or the live record.
const RECORD_CLAIM: &str = r#"
local digest = ARGV[2]
local key = ikey(digest)
local now = now_ms()
local record = live(key, now)
if record then return record end
-- Index entries past their grace name keys Redis already deleted.
redis.call('ZREMRANGEBYSCORE', INDEX, '-inf', '(' .. int(now - RECORD_GRACE))
local token = redis.call('INCR', P .. 'i:tokens')
redis.call('DEL', key)
redis.call('HSET', key, 'state', 'in_progress', 'fingerprint', ARGV[3], 'token', token)
expire_at(digest, now + tonumber(ARGV[4]))
return {'claimed', int(token)}
"#;

/// ARGV: prefix, digest. Returns the live record or nil.
const RECORD_GET: &str = r#"
return live(ikey(ARGV[2]), now_ms()) or false
"#;

/// ARGV: prefix, digest, token, extend_by (ms). Returns 1 or 0.
const RECORD_RENEW: &str = r#"
local digest = ARGV[2]
if not claimed_by(ikey(digest), ARGV[3]) then return 0 end
expire_at(digest, now_ms() + tonumber(ARGV[4]))
return 1
"#;

/// ARGV: prefix, digest, token, status, headers, body, retention (ms).
/// Returns 1 or 0.
const RECORD_COMPLETE: &str = r#"
local digest = ARGV[2]
local key = ikey(digest)
if not claimed_by(key, ARGV[3]) then return 0 end
redis.call('HSET', key, 'state', 'completed', 'status', ARGV[4], 'headers', ARGV[5],
  'body', ARGV[6])
expire_at(digest, now_ms() + tonumber(ARGV[7]))
return 1
"#;

/// ARGV: prefix, digest, token. Returns 1 or 0.
const RECORD_RELEASE: &str = r#"
local digest = ARGV[2]
local key = ikey(digest)
if not claimed_by(key, ARGV[3]) then return 0 end
redis.call('DEL', key)
redis.call('ZREM', INDEX, digest)
return 1
"#;

/// ARGV: prefix, batch. Deletes up to batch expired records and returns
/// how many keys it deleted and how many index entries it read.
const RECORD_PURGE: &str = r#"
local now = now_ms()
local digests = redis.call('ZRANGEBYSCORE', INDEX, '-inf', int(now),
  'LIMIT', 0, tonumber(ARGV[2]))
local deleted = 0
for _, digest in ipairs(digests) do
  local key = ikey(digest)
  local expires = tonumber(redis.call('HGET', key, 'expires_at'))
  if expires == nil or expires <= now then
    deleted = deleted + redis.call('DEL', key)
  end
  redis.call('ZREM', INDEX, digest)
end
return {deleted, #digests}
"#;

/// The compiled scripts; `redis::Script` sends `EVALSHA` and falls back to
/// `EVAL` when the server lost its script cache.
#[derive(Debug)]
pub(super) struct Scripts {
    pub(super) enqueue: Script,
    pub(super) claim: Script,
    pub(super) renew: Script,
    pub(super) finish: Script,
    pub(super) requeue: Script,
    pub(super) retry: Script,
    pub(super) get: Script,
    pub(super) list: Script,
    pub(super) counts: Script,
    pub(super) purge: Script,
    pub(super) record_claim: Script,
    pub(super) record_get: Script,
    pub(super) record_renew: Script,
    pub(super) record_complete: Script,
    pub(super) record_release: Script,
    pub(super) record_purge: Script,
}

impl Scripts {
    pub(super) fn new() -> Self {
        let message = |body: &str| Script::new(&format!("{PRELUDE}{body}"));
        let record = |body: &str| Script::new(&format!("{PRELUDE}{RECORD_PRELUDE}{body}"));
        Self {
            enqueue: message(ENQUEUE),
            claim: message(CLAIM),
            renew: message(RENEW),
            finish: message(FINISH),
            requeue: message(REQUEUE),
            retry: message(RETRY),
            get: message(GET),
            list: message(LIST),
            counts: message(COUNTS),
            purge: message(PURGE),
            record_claim: record(RECORD_CLAIM),
            record_get: record(RECORD_GET),
            record_renew: record(RECORD_RENEW),
            record_complete: record(RECORD_COMPLETE),
            record_release: record(RECORD_RELEASE),
            record_purge: record(RECORD_PURGE),
        }
    }
}
