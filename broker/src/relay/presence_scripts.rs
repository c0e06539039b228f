//! The keys and Lua scripts of presence in Redis (see [`shared_presence`]).
//!
//! Every script works on the four keys of one topic, in this order (all
//! hash-tagged `{T}`, so that in a Redis Cluster they live on one shard):
//!
//! 1. `<prefix>:pm:{T}`: member name → its sessions on every node (0: in
//!    its grace period, its leave not yet announced);
//! 2. `<prefix>:pg:{T}`: member name → generation, bumped when its grace
//!    period starts and when a session comes back in it;
//! 3. `<prefix>:pi:{T}`: member name → `info` of its newest session (JSON);
//! 4. `<prefix>:pn:{T}`: `<node field><name>` → its sessions on that node (0:
//!    that node keeps the member's grace timer). A node field is
//!    `<length of the node id>:<node id>`, so no name can fake one.
//!
//! [`shared_presence`]: super::shared_presence

use redis::Value;
use starling_protocol::{Member, Payload, Topic};

use crate::relay::conn::{number, text};
use crate::relay::wire::Names;

/// Sets a node's session count of one member, announcing a join when the
/// member is new and starting its grace period when its last session in
/// the cluster ended.
///
/// ARGV: the node's field for the member, the name, the count, the info
/// (`''` unchanged, `'-'` none, else JSON), the join event (`''`: none),
/// the topic's channel, the publish command. Returns the generation of a
/// grace period the calling node must time (0: none).
pub(crate) const SET: &str = r"
local field, name, count = ARGV[1], ARGV[2], tonumber(ARGV[3])
local old = tonumber(redis.call('HGET', KEYS[4], field)) or 0
local before = tonumber(redis.call('HGET', KEYS[1], name))
local total = (before or 0) + count - old
if total < 0 then total = 0 end
if ARGV[4] == '-' then
  redis.call('HDEL', KEYS[3], name)
elseif ARGV[4] ~= '' then
  redis.call('HSET', KEYS[3], name, ARGV[4])
end
if total > 0 then
  if count > 0 then
    redis.call('HSET', KEYS[4], field, count)
  else
    redis.call('HDEL', KEYS[4], field)
  end
  redis.call('HSET', KEYS[1], name, total)
  if not before then
    redis.call('HSET', KEYS[2], name, 0)
    if ARGV[5] ~= '' then redis.call(ARGV[7], ARGV[6], ARGV[5]) end
  elseif before == 0 then
    redis.call('HINCRBY', KEYS[2], name, 1)
  end
  return 0
end
if not before then
  redis.call('HDEL', KEYS[4], field)
  redis.call('HDEL', KEYS[3], name)
  return 0
end
if before == 0 then return 0 end
redis.call('HSET', KEYS[1], name, 0)
redis.call('HSET', KEYS[4], field, 0)
return redis.call('HINCRBY', KEYS[2], name, 1)
";

/// Ends a member's grace period: it leaves, unless a session came back
/// (its generation moved on).
///
/// ARGV: the node's field for the member, the name, the generation, the
/// leave event (`''`: none), the topic's channel, the publish command.
/// Returns 1 when the member left.
pub(crate) const EXPIRE: &str = r"
if redis.call('HGET', KEYS[4], ARGV[1]) == '0' then
  redis.call('HDEL', KEYS[4], ARGV[1])
end
if redis.call('HGET', KEYS[1], ARGV[2]) ~= '0'
  or redis.call('HGET', KEYS[2], ARGV[2]) ~= ARGV[3] then
  return 0
end
redis.call('HDEL', KEYS[1], ARGV[2])
redis.call('HDEL', KEYS[2], ARGV[2])
redis.call('HDEL', KEYS[3], ARGV[2])
if ARGV[4] ~= '' then redis.call(ARGV[6], ARGV[5], ARGV[4]) end
return 1
";

/// Removes a dead node's sessions and grace timers from a topic. Members
/// left with no session start (or keep) their grace period, now timed by
/// the reaping node.
///
/// ARGV: the dead node's field prefix, the reaping node's. Returns a flat
/// list of name, generation: the grace periods the reaping node must time.
pub(crate) const REAP: &str = r"
local dead = ARGV[1]
local fields = redis.call('HGETALL', KEYS[4])
local out = {}
for i = 1, #fields, 2 do
  local field = fields[i]
  if string.sub(field, 1, #dead) == dead then
    local name = string.sub(field, #dead + 1)
    local had = tonumber(fields[i + 1]) or 0
    redis.call('HDEL', KEYS[4], field)
    local total = tonumber(redis.call('HGET', KEYS[1], name))
    if total then
      local left = total - had
      if left > 0 then
        redis.call('HSET', KEYS[1], name, left)
      else
        local generation
        if total > 0 then
          redis.call('HSET', KEYS[1], name, 0)
          generation = redis.call('HINCRBY', KEYS[2], name, 1)
        else
          generation = tonumber(redis.call('HGET', KEYS[2], name)) or 0
        end
        redis.call('HSETNX', KEYS[4], ARGV[2] .. name, 0)
        out[#out + 1] = name
        out[#out + 1] = generation
      end
    end
  end
end
return out
";

/// Reads a topic's members: the count, then up to `ARGV[1]` of them as a
/// flat list of name, sessions, info (`''`: none).
///
/// KEYS: the member hash, the info hash.
pub(crate) const MEMBERS: &str = r"
local out = {redis.call('HLEN', KEYS[1])}
local max = tonumber(ARGV[1])
if max == 0 then return out end
local cursor, listed = '0', 0
repeat
  local page = redis.call('HSCAN', KEYS[1], cursor, 'COUNT', 1000)
  cursor = page[1]
  local entries = page[2]
  for i = 1, #entries, 2 do
    if listed < max then
      listed = listed + 1
      out[#out + 1] = entries[i]
      out[#out + 1] = entries[i + 1]
      out[#out + 1] = redis.call('HGET', KEYS[2], entries[i]) or ''
    end
  end
until cursor == '0' or listed >= max
return out
";

/// Key and channel names.
pub(crate) struct Keys {
    pub(crate) names: Names,
    pub(crate) sharded: bool,
}

impl Keys {
    /// The four keys of a topic's presence, in the scripts' order.
    pub(crate) fn topic(&self, topic: &Topic) -> [String; 4] {
        let prefix = self.names.prefix();
        ["pm", "pg", "pi", "pn"].map(|kind| format!("{prefix}:{kind}:{{{topic}}}"))
    }

    pub(crate) fn node(&self, kind: &str, node: &str) -> String {
        format!("{}:{kind}:{node}", self.names.prefix())
    }

    /// The key that tells one life of the presence data from the next.
    pub(crate) fn data(&self) -> String {
        format!("{}:presence", self.names.prefix())
    }

    pub(crate) fn nodes(&self) -> String {
        format!("{}:nodes", self.names.prefix())
    }

    pub(crate) fn publish(&self) -> &'static str {
        if self.sharded { "SPUBLISH" } else { "PUBLISH" }
    }
}

/// A node's field prefix in a topic's `pn` hash.
pub(crate) fn field(node: &str) -> String {
    format!("{}:{node}", node.len())
}

/// A topic's members, as Redis has them.
#[derive(Debug)]
pub(crate) struct Listing {
    pub(crate) count: u64,
    pub(crate) members: Vec<Member>,
}

/// The members from the members script's answer.
pub(crate) fn parse_listing(value: &Value) -> Option<Listing> {
    let Value::Array(items) = value else {
        return None;
    };
    let (count, rest) = items.split_first()?;
    let members = rest
        .chunks(3)
        .filter_map(|entry| {
            let [name, sessions, info] = entry else {
                return None;
            };
            let info = text(info)
                .filter(|info| !info.is_empty())
                .and_then(|info| Payload::from_json(info).ok());
            Some(Member {
                name: text(name)?.into(),
                sessions: Some(number(sessions)?),
                info,
            })
        })
        .collect();
    Some(Listing {
        count: number(count)?,
        members,
    })
}
