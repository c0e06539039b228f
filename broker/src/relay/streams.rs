//! Topic history kept in Redis, for a cluster (or a single node that wants
//! its history to outlive it): a Stream per topic and a small hash with
//! the topic's epoch and latest offset.
//!
//! Publishing on a topic with history is one Lua script ([`APPEND`]): it
//! takes the next offset, appends the message to the topic's stream
//! (`XADD <offset>-0 MAXLEN ~ N`), refreshes the keys' TTL and publishes
//! the message, numbered, on the topic's channel. Redis runs a script alone,
//! so every node receives a topic's messages in offset order, and the
//! offsets are the same everywhere. A subscribe reads where the history
//! stands, and what to replay, with a second script ([`READ`]).
//!
//! Keys (`{T}` is a hash tag: in a Redis Cluster a topic's keys and its
//! sharded channel live on one shard): `<prefix>:h:{T}` the stream,
//! `<prefix>:e:{T}` the hash (`e` the epoch, `o` the latest offset). When
//! the hash is missing (never written, expired, or a Redis restarted
//! without persistence) the next script makes a new epoch, and drops what
//! is left of the stream: clients resuming from the old one get `reset`.
//!
//! Requests go to Redis through one task, in the order they were made, a
//! batch at a time on one multiplexed connection: a connection's publishes
//! keep their order.

use std::sync::Arc;

use redis::Value;
use starling_protocol::Topic;
use tokio::sync::{mpsc, oneshot};
use tracing::warn;

use crate::delivery::Delivery;
use crate::history::{Position, Resume, new_epoch};
use crate::metrics::Metrics;
use crate::relay::StoreUnavailable;
use crate::relay::conn::{Conn, Connector, number, text};
use crate::relay::link::{Backoff, REDIS_TIMEOUT, RELAY_BATCH};
use crate::relay::wire::{self, Names};

/// The start of both scripts: the topic's epoch, made from `ARGV[n]` when
/// the topic has none (`made` is then true), which also drops what is left
/// of an old stream.
macro_rules! take_epoch {
    ($n:literal) => {
        concat!(
            r"
local epoch = redis.call('HGET', KEYS[2], 'e')
local made = false
if not epoch then
  epoch = ARGV[",
            $n,
            r"]
  made = true
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[2], 'e', epoch, 'o', 0)
end"
        )
    };
}

/// Appends a message to a topic's history and publishes it, numbered.
///
/// KEYS: the stream, the hash. ARGV: the relay message, the stream's
/// length, the TTL in seconds (0: none), the channel, a new epoch (used
/// when the topic has none), the publish command (`PUBLISH` or `SPUBLISH`).
/// Returns `{offset, epoch}`. The channel gets `h<offset> <epoch> <message>`.
pub(crate) const APPEND: &str = concat!(
    take_epoch!(5),
    r"
local offset = redis.call('HINCRBY', KEYS[2], 'o', 1)
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], offset .. '-0', 'm', ARGV[1])
local ttl = tonumber(ARGV[3])
if ttl > 0 then
  redis.call('EXPIRE', KEYS[1], ttl)
  redis.call('EXPIRE', KEYS[2], ttl)
else
  redis.call('PERSIST', KEYS[2])
end
redis.call(ARGV[6], ARGV[4], 'h' .. offset .. ' ' .. epoch .. ' ' .. ARGV[1])
return {offset, epoch}
"
);

/// Reads where a topic's history stands and some of its messages.
///
/// KEYS: the stream, the hash. ARGV: `since` (empty: the latest messages),
/// the client's epoch (may be empty), how many messages (negative: all), a
/// new epoch (used when the topic has none), how long a hash made by a read
/// lives (seconds), the most bytes of messages after `since` (0: no limit;
/// at least one message is read). A position that is void (another epoch, or past the
/// latest offset) reads from the oldest retained message.
/// Returns `{epoch, latest, reset, entries}`, entries oldest first.
pub(crate) const READ: &str = concat!(
    take_epoch!(4),
    r"
if made then
  redis.call('EXPIRE', KEYS[2], ARGV[5])
end
local latest = tonumber(redis.call('HGET', KEYS[2], 'o'))
local limit = tonumber(ARGV[3])
local reset = 0
local entries = {}
if limit == 0 then
  return {epoch, latest, reset, entries}
end
local cap = tonumber(ARGV[6])
if ARGV[1] == '' then
  local count = {}
  if limit > 0 then count = {'COUNT', limit} end
  local newest = redis.call('XREVRANGE', KEYS[1], '+', '-', unpack(count))
  local bytes, last = 0, #newest
  for i, entry in ipairs(newest) do
    bytes = bytes + #entry[2][2]
    if cap > 0 and i > 1 and bytes > cap then
      last = i - 1
      break
    end
  end
  for i = last, 1, -1 do entries[#entries + 1] = newest[i] end
  return {epoch, latest, reset, entries}
end
local since = tonumber(ARGV[1])
if (ARGV[2] ~= '' and ARGV[2] ~= epoch) or since > latest then
  reset = 1
  since = 0
end
if limit > 0 then
  entries = redis.call('XRANGE', KEYS[1], '(' .. since .. '-0', '+', 'COUNT', limit)
else
  entries = redis.call('XRANGE', KEYS[1], '(' .. since .. '-0', '+')
end
if cap > 0 then
  local bytes, kept = 0, {}
  for i, entry in ipairs(entries) do
    bytes = bytes + #entry[2][2]
    if i > 1 and bytes > cap then break end
    kept[i] = entry
  end
  entries = kept
end
return {epoch, latest, reset, entries}
"
);

/// How long the hash of a topic that is read but never written lives, when
/// histories have no TTL.
const READ_ONLY_TTL: u64 = 24 * 3600;

/// How many requests wait for the store before new ones fail.
const QUEUE: usize = 65_536;

/// Where a topic's history in Redis stands, and what was read from it.
#[derive(Debug)]
pub(crate) struct Page {
    pub(crate) position: Position,
    /// The position asked for was void: the page starts at the oldest
    /// retained message.
    pub(crate) reset: bool,
    /// The messages read, oldest first.
    pub(crate) messages: Vec<Arc<Delivery>>,
}

impl Page {
    /// How many messages after `since` are no longer retained (0 after a
    /// reset: unknown).
    pub(crate) fn lost_after(&self, since: u64) -> u64 {
        if self.reset {
            return 0;
        }
        let first = self
            .messages
            .first()
            .and_then(|d| d.offset)
            .unwrap_or(self.position.offset + 1);
        first.saturating_sub(since + 1)
    }
}

/// What to read.
#[derive(Debug)]
pub(crate) struct Read {
    pub(crate) topic: Topic,
    /// From after this position; `None`: the latest messages.
    pub(crate) from: Option<Resume>,
    /// How many messages at most; `None`: all retained.
    pub(crate) limit: Option<usize>,
    /// How many bytes of messages at most, after `since` (`None`: no
    /// limit); at least one message is read.
    pub(crate) bytes: Option<usize>,
}

enum Request {
    Append {
        topic: Topic,
        message: Vec<u8>,
        length: usize,
        reply: oneshot::Sender<Result<Position, StoreUnavailable>>,
    },
    Read {
        read: Read,
        reply: oneshot::Sender<Result<Page, StoreUnavailable>>,
    },
}

/// The handle through which a node reads and writes topic histories in
/// Redis.
#[derive(Debug, Clone)]
pub(crate) struct StreamHistory {
    queue: mpsc::Sender<Request>,
    metrics: Arc<Metrics>,
}

/// The task's half: the queue, and how to reach Redis.
pub(crate) struct StreamTask {
    queue: mpsc::Receiver<Request>,
    connector: Connector,
    names: Names,
    ttl: u64,
    sharded: bool,
}

/// A store and the task that serves it ([`StreamTask::run`]), over
/// `connector`, with keys and channels named by `names`, histories that
/// live `ttl` seconds after their last message (0: as long as Redis keeps
/// them).
pub(crate) fn stream_history(
    connector: Connector,
    names: Names,
    ttl: u64,
    metrics: Arc<Metrics>,
) -> (StreamHistory, StreamTask) {
    let (sender, queue) = mpsc::channel(QUEUE);
    let sharded = matches!(connector, Connector::Cluster(_));
    (
        StreamHistory {
            queue: sender,
            metrics,
        },
        StreamTask {
            queue,
            connector,
            names,
            ttl,
            sharded,
        },
    )
}

fn unavailable(why: impl Into<String>) -> StoreUnavailable {
    StoreUnavailable(why.into())
}

impl StreamHistory {
    /// Appends `message` (a relay message) to `topic`'s history of
    /// `length`, and publishes it; answers with the offset it got. Sent in
    /// call order.
    pub(crate) fn append(
        &self,
        topic: Topic,
        message: Vec<u8>,
        length: usize,
    ) -> impl Future<Output = Result<Position, StoreUnavailable>> + Send + 'static {
        let (reply, answer) = oneshot::channel();
        let sent = self.queue.try_send(Request::Append {
            topic,
            message,
            length,
            reply,
        });
        self.answered(sent.is_ok(), answer)
    }

    /// The answer to a request, counted in the metrics.
    fn answered<T: Send + 'static>(
        &self,
        sent: bool,
        answer: oneshot::Receiver<Result<T, StoreUnavailable>>,
    ) -> impl Future<Output = Result<T, StoreUnavailable>> + Send + 'static {
        let metrics = self.metrics.clone();
        metrics.history_store_requests.inc();
        async move {
            let result = if sent {
                answer
                    .await
                    .unwrap_or_else(|_| Err(unavailable("no answer from redis in time")))
            } else {
                Err(unavailable("too many requests wait for redis"))
            };
            if result.is_err() {
                metrics.history_store_failures.inc();
            }
            result
        }
    }

    /// Reads `read`. Sent in call order.
    pub(crate) fn read(
        &self,
        read: Read,
    ) -> impl Future<Output = Result<Page, StoreUnavailable>> + Send + 'static {
        let (reply, answer) = oneshot::channel();
        let sent = self.queue.try_send(Request::Read { read, reply });
        self.answered(sent.is_ok(), answer)
    }
}

impl StreamTask {
    /// Serves requests until every handle is gone: a batch at a time, each
    /// sent in order on one multiplexed connection, all answered within
    /// [`REDIS_TIMEOUT`]. While Redis is unreachable, requests fail at once
    /// (with back-off between tries to connect).
    pub(crate) async fn run(mut self) {
        let mut conn: Option<Conn> = None;
        let mut backoff = Backoff::default();
        let mut retry_at = tokio::time::Instant::now();
        let mut batch = Vec::with_capacity(RELAY_BATCH);
        while self.queue.recv_many(&mut batch, RELAY_BATCH).await > 0 {
            if conn.is_none() && tokio::time::Instant::now() >= retry_at {
                match self.connector.connect().await {
                    Ok(c) => {
                        if backoff.failures() > 0 {
                            tracing::info!("history store reachable again");
                        }
                        backoff.succeeded();
                        conn = Some(c);
                    }
                    Err(error) => {
                        if backoff.failures() == 0 {
                            warn!(%error, "history store (redis) unreachable");
                        }
                        retry_at = tokio::time::Instant::now() + backoff.failed();
                    }
                }
            }
            let Some(c) = &conn else {
                for request in batch.drain(..) {
                    request.fail(unavailable("redis is unreachable"));
                }
                continue;
            };
            let calls = batch.drain(..).map(|request| self.call(c.clone(), request));
            let answered =
                tokio::time::timeout(REDIS_TIMEOUT, futures_util::future::join_all(calls)).await;
            if answered.is_err() {
                // Those not answered fail as their senders drop; a stuck
                // connection is made anew.
                conn = None;
            }
        }
    }

    /// Sends one request and answers it.
    async fn call(&self, mut conn: Conn, request: Request) {
        match request {
            Request::Append {
                topic,
                message,
                length,
                reply,
            } => {
                let mut cmd = redis::cmd("EVAL");
                cmd.arg(APPEND)
                    .arg(2)
                    .arg(self.names.stream(topic.as_str()))
                    .arg(self.names.meta(topic.as_str()))
                    .arg(message)
                    .arg(length)
                    .arg(self.ttl)
                    .arg(self.names.channel(topic.as_str()))
                    .arg(new_epoch())
                    .arg(if self.sharded { "SPUBLISH" } else { "PUBLISH" });
                let result = conn.invoke(cmd).await;
                let _ = reply.send(
                    result
                        .map_err(|error| unavailable(error.to_string()))
                        .and_then(|value| parse_appended(&value)),
                );
            }
            Request::Read { read, reply } => {
                let (since, epoch) = match &read.from {
                    Some(from) => (from.since.to_string(), from.epoch.clone()),
                    None => (String::new(), None),
                };
                let limit = read.limit.map_or(-1, |n| n as i64);
                let mut cmd = redis::cmd("EVAL");
                cmd.arg(READ)
                    .arg(2)
                    .arg(self.names.stream(read.topic.as_str()))
                    .arg(self.names.meta(read.topic.as_str()))
                    .arg(since)
                    .arg(epoch.as_deref().unwrap_or(""))
                    .arg(limit)
                    .arg(new_epoch())
                    .arg(if self.ttl > 0 {
                        self.ttl
                    } else {
                        READ_ONLY_TTL
                    })
                    .arg(read.bytes.unwrap_or(0));
                let result = conn.invoke(cmd).await;
                let _ = reply.send(
                    result
                        .map_err(|error| unavailable(error.to_string()))
                        .and_then(|value| parse_page(&read.topic, &value)),
                );
            }
        }
    }
}

impl Request {
    fn fail(self, error: StoreUnavailable) {
        match self {
            Request::Append { reply, .. } => {
                let _ = reply.send(Err(error));
            }
            Request::Read { reply, .. } => {
                let _ = reply.send(Err(error));
            }
        }
    }
}

fn malformed(what: &str) -> StoreUnavailable {
    unavailable(format!("unexpected answer from redis to {what}"))
}

fn parse_appended(value: &Value) -> Result<Position, StoreUnavailable> {
    let Value::Array(items) = value else {
        return Err(malformed("append"));
    };
    match items.as_slice() {
        [offset, epoch] => Ok(Position {
            offset: number(offset).ok_or_else(|| malformed("append"))?,
            epoch: text(epoch).ok_or_else(|| malformed("append"))?.into(),
        }),
        _ => Err(malformed("append")),
    }
}

fn parse_page(topic: &Topic, value: &Value) -> Result<Page, StoreUnavailable> {
    let bad = || malformed("read");
    let Value::Array(items) = value else {
        return Err(bad());
    };
    let [epoch, latest, reset, entries] = items.as_slice() else {
        return Err(bad());
    };
    let epoch: Arc<str> = text(epoch).ok_or_else(bad)?.into();
    let position = Position {
        offset: number(latest).ok_or_else(bad)?,
        epoch: epoch.clone(),
    };
    let Value::Array(entries) = entries else {
        return Err(bad());
    };
    let mut messages = Vec::with_capacity(entries.len());
    for entry in entries {
        // [id, [field, value]]
        let Value::Array(entry) = entry else {
            return Err(bad());
        };
        let [id, Value::Array(fields)] = entry.as_slice() else {
            return Err(bad());
        };
        let offset = text(id)
            .and_then(|id| id.split('-').next())
            .and_then(|n| n.parse().ok())
            .ok_or_else(bad)?;
        let Some(Value::BulkString(message)) = fields.get(1) else {
            return Err(bad());
        };
        // A message that does not decode (or is for another topic) is
        // left out: the store is shared, and no client must pay for it.
        if let Some(delivery) = numbered(topic, message, offset, &epoch) {
            messages.push(Arc::new(delivery));
        }
    }
    Ok(Page {
        position,
        reset: number(reset) == Some(1),
        messages,
    })
}

/// The delivery of relay message `bytes` at `offset` of `epoch`, when it
/// decodes and is for `topic`.
pub(crate) fn numbered(
    topic: &Topic,
    bytes: &[u8],
    offset: u64,
    epoch: &Arc<str>,
) -> Option<Delivery> {
    let relayed = wire::decode(bytes)?;
    if relayed.topic != topic.as_str() {
        return None;
    }
    let payload = relayed.payload()?;
    Some(
        Delivery::new(topic.clone(), payload, Some(offset), relayed.origin.into())
            .with_epoch(epoch.clone())
            .with_from(relayed.from.map(Into::into)),
    )
}
