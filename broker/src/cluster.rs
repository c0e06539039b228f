//! Clustering through Redis pub/sub: several nodes act as one broker.
//!
//! Each node relays what its clients publish to Redis, on one channel per
//! topic (`<prefix>:t:<topic>`), and subscribes in Redis only to the topics
//! and patterns that have subscribers on this node. A relayed message is
//! encoded once by its origin; a receiving node decodes it once into one
//! [`Delivery`] shared by all its local subscribers, and ignores its own
//! messages (no echo).
//!
//! Redis pub/sub is at most once: while Redis is unreachable, local delivery
//! goes on, cross-node messages are lost (and counted), and the node
//! reconnects with backoff and restores its Redis subscriptions by itself.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use starling_protocol::{Filter, Payload, Topic};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::broker::Broker;
use crate::delivery::Delivery;

/// How many relayed messages may wait for Redis before new ones are dropped.
const RELAY_QUEUE: usize = 65_536;
/// How many messages go to Redis in one pipeline.
const RELAY_BATCH: usize = 512;
/// How long one Redis operation may take before the link counts as down.
const REDIS_TIMEOUT: Duration = Duration::from_secs(2);

/// Why the cluster link could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The Redis URL does not parse.
    #[error("invalid redis url: {0}")]
    InvalidUrl(#[source] redis::RedisError),
}

/// A change in what this node needs from the cluster.
#[derive(Debug)]
pub(crate) enum Interest {
    /// The first local subscriber of a topic or pattern arrived.
    Watch(Filter),
    /// Its last local subscriber left.
    Unwatch(Filter),
}

/// One message on its way to Redis.
struct Outbound {
    topic: Topic,
    payload: Payload,
    sent_at_us: u64,
}

/// The node's link to the cluster.
#[derive(Debug)]
pub(crate) struct Cluster {
    outbound: mpsc::Sender<Outbound>,
    up: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Outbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbound")
            .field("topic", &self.topic)
            .finish()
    }
}

impl Cluster {
    /// Starts relaying for `broker` through the Redis at `url`. Never waits
    /// for Redis: an unreachable Redis only means the link starts down.
    pub(crate) fn start(
        broker: &Broker,
        url: &str,
        prefix: &str,
        sharded: bool,
        interest: mpsc::UnboundedReceiver<Interest>,
    ) -> Result<Self, ClusterError> {
        let (outbound, outbound_rx) = mpsc::channel(RELAY_QUEUE);
        let up = Arc::new(AtomicBool::new(false));
        let names = Names {
            prefix: prefix.to_owned(),
        };
        if sharded {
            let tasks = sharded::start(broker, url, names, up.clone(), outbound_rx, interest)?;
            info!(%prefix, "clustering through redis sharded pub/sub");
            return Ok(Cluster {
                outbound,
                up,
                tasks,
            });
        }
        let client = redis::Client::open(url).map_err(ClusterError::InvalidUrl)?;
        let tasks = vec![
            tokio::spawn(relay_out(
                client.clone(),
                outbound_rx,
                broker.clone(),
                names.clone(),
                up.clone(),
            )),
            tokio::spawn(relay_in(
                client,
                interest,
                broker.clone(),
                names,
                up.clone(),
            )),
        ];
        info!(%prefix, "clustering through redis");
        Ok(Cluster {
            outbound,
            up,
            tasks,
        })
    }

    /// Queues `delivery` for the other nodes. Never waits: when Redis cannot
    /// keep up, the message is dropped for them and counted.
    pub(crate) fn relay(&self, broker: &Broker, delivery: &Delivery) {
        let outbound = Outbound {
            topic: delivery.topic.clone(),
            payload: delivery.payload.clone(),
            sent_at_us: now_us(),
        };
        if self.outbound.try_send(outbound).is_err() {
            broker.metrics().relay_failed.inc();
        }
    }

    /// Whether the node is connected to Redis.
    pub(crate) fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Stops the relay tasks.
    pub(crate) fn stop(&self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Redis channel names for topics and patterns.
#[derive(Debug, Clone)]
struct Names {
    prefix: String,
}

impl Names {
    fn channel(&self, topic: &str) -> String {
        format!("{}:t:{topic}", self.prefix)
    }

    /// The Redis subscription for a filter: a channel for a topic, a glob for
    /// a pattern. Globs can match more than the pattern (`*` spans dots); the
    /// receiving node filters exactly.
    fn subscription(&self, filter: &Filter) -> (bool, String) {
        if !filter.is_pattern() {
            return (false, self.channel(filter.as_str()));
        }
        let glob: Vec<&str> = filter
            .as_str()
            .split('.')
            .map(|token| if token == ">" { "*" } else { token })
            .collect();
        (true, self.channel(&glob.join(".")))
    }

    fn topic_of<'a>(&self, channel: &'a str) -> Option<&'a str> {
        channel
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix(":t:")
    }
}

/// The Redis glob a pattern subscription maps to (without the prefix), used
/// to deliver a pattern message only to the patterns behind that glob.
pub(crate) fn glob_of(filter: &Filter) -> String {
    filter
        .as_str()
        .split('.')
        .map(|token| if token == ">" { "*" } else { token })
        .collect::<Vec<_>>()
        .join(".")
}

/// A relayed message on the wire: version, flags, send time, origin node,
/// topic, payload.
mod wire {
    use super::*;

    const VERSION: u8 = 1;
    const FLAG_JSON: u8 = 1;

    pub(super) fn encode(origin: &str, out: &Outbound) -> Vec<u8> {
        let (json, payload) = out.payload.to_relay();
        let topic = out.topic.as_str().as_bytes();
        let origin = &origin.as_bytes()[..origin.len().min(255)];
        let mut buf = Vec::with_capacity(12 + origin.len() + topic.len() + payload.len());
        buf.push(VERSION);
        buf.push(if json { FLAG_JSON } else { 0 });
        buf.extend_from_slice(&out.sent_at_us.to_be_bytes());
        buf.push(origin.len() as u8);
        buf.extend_from_slice(origin);
        buf.push(topic.len() as u8);
        buf.extend_from_slice(topic);
        buf.extend_from_slice(&payload);
        buf
    }

    /// A decoded relay message.
    pub(super) struct Relayed<'a> {
        pub(super) origin: &'a str,
        pub(super) sent_at_us: u64,
        pub(super) topic: &'a str,
        json: bool,
        payload: &'a [u8],
    }

    impl Relayed<'_> {
        pub(super) fn payload(&self) -> Option<Payload> {
            Payload::from_relay(self.json, self.payload).ok()
        }
    }

    pub(super) fn decode(bytes: &[u8]) -> Option<Relayed<'_>> {
        let (&version, rest) = bytes.split_first()?;
        if version != VERSION {
            return None;
        }
        let (&flags, rest) = rest.split_first()?;
        let (sent, rest) = rest.split_at_checked(8)?;
        let sent_at_us = u64::from_be_bytes(sent.try_into().ok()?);
        let (&origin_len, rest) = rest.split_first()?;
        let (origin, rest) = rest.split_at_checked(origin_len as usize)?;
        let (&topic_len, rest) = rest.split_first()?;
        let (topic, payload) = rest.split_at_checked(topic_len as usize)?;
        Some(Relayed {
            origin: std::str::from_utf8(origin).ok()?,
            sent_at_us,
            topic: std::str::from_utf8(topic).ok()?,
            json: flags & FLAG_JSON != 0,
            payload,
        })
    }
}

/// Backoff before reconnect attempt `attempt`: 100 ms doubling to 5 s.
fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(100u64.saturating_mul(1 << attempt.min(6)).min(5_000))
}

/// Sends queued messages to Redis, a pipeline per batch.
async fn relay_out(
    client: redis::Client,
    mut queue: mpsc::Receiver<Outbound>,
    broker: Broker,
    names: Names,
    up: Arc<AtomicBool>,
) {
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(REDIS_TIMEOUT))
        .set_response_timeout(Some(REDIS_TIMEOUT));
    let mut conn: Option<ConnectionManager> = None;
    let mut retry_at = tokio::time::Instant::now();
    let mut batch = Vec::with_capacity(RELAY_BATCH);
    let node = broker.node_id().clone();
    let metrics = broker.metrics();
    while queue.recv_many(&mut batch, RELAY_BATCH).await > 0 {
        let count = batch.len() as u64;
        if conn.is_none() && tokio::time::Instant::now() >= retry_at {
            match tokio::time::timeout(
                REDIS_TIMEOUT,
                ConnectionManager::new_with_config(client.clone(), config.clone()),
            )
            .await
            {
                Ok(Ok(c)) => conn = Some(c),
                _ => retry_at = tokio::time::Instant::now() + backoff(2),
            }
        }
        let Some(c) = conn.as_mut() else {
            batch.clear();
            metrics.relay_failed.inc_by(count);
            continue;
        };
        let mut pipe = redis::pipe();
        for out in batch.drain(..) {
            pipe.cmd("PUBLISH")
                .arg(names.channel(out.topic.as_str()))
                .arg(wire::encode(&node, &out))
                .ignore();
        }
        match tokio::time::timeout(REDIS_TIMEOUT, pipe.query_async::<()>(c)).await {
            Ok(Ok(())) => {
                metrics.relayed_out.inc_by(count);
            }
            Ok(Err(error)) => {
                metrics.relay_failed.inc_by(count);
                if up.load(Ordering::Relaxed) {
                    warn!(%error, "relaying to redis failed");
                }
            }
            Err(_) => {
                metrics.relay_failed.inc_by(count);
                warn!("relaying to redis timed out");
                conn = None;
                retry_at = tokio::time::Instant::now() + backoff(2);
            }
        }
    }
}

/// What this node is subscribed to in Redis: subscription name to
/// (is a glob, local filters behind it).
type Wanted = HashMap<String, (bool, usize)>;

fn apply(wanted: &mut Wanted, names: &Names, interest: &Interest) -> Option<(bool, bool, String)> {
    match interest {
        Interest::Watch(filter) => {
            let (glob, name) = names.subscription(filter);
            let entry = wanted.entry(name.clone()).or_insert((glob, 0));
            entry.1 += 1;
            (entry.1 == 1).then_some((true, glob, name))
        }
        Interest::Unwatch(filter) => {
            let (glob, name) = names.subscription(filter);
            let entry = wanted.get_mut(&name)?;
            entry.1 = entry.1.saturating_sub(1);
            if entry.1 == 0 {
                wanted.remove(&name);
                Some((false, glob, name))
            } else {
                None
            }
        }
    }
}

/// Waiting out a backoff while Redis is unreachable.
struct Offline<'a> {
    pause: Duration,
    wanted: &'a mut Wanted,
    names: &'a Names,
    metrics: &'a crate::metrics::Metrics,
}

impl Offline<'_> {
    /// Keeps track of interest changes meanwhile (and, when given the relay
    /// queue, drops what waits to be relayed, counted as failed). Returns
    /// false when the broker is gone.
    async fn wait(
        self,
        interest: &mut mpsc::UnboundedReceiver<Interest>,
        mut outbound: Option<(&mut mpsc::Receiver<Outbound>, &mut Vec<Outbound>)>,
    ) -> bool {
        let pause = tokio::time::sleep(self.pause);
        tokio::pin!(pause);
        loop {
            tokio::select! {
                () = &mut pause => return true,
                change = interest.recv() => match change {
                    Some(change) => {
                        apply(self.wanted, self.names, &change);
                    }
                    None => return false,
                },
                n = async {
                    match outbound.as_mut() {
                        Some((queue, batch)) => queue.recv_many(batch, RELAY_BATCH).await,
                        None => std::future::pending().await,
                    }
                } => {
                    if n == 0 {
                        return false;
                    }
                    if let Some((_, batch)) = outbound.as_mut() {
                        self.metrics.relay_failed.inc_by(batch.len() as u64);
                        batch.clear();
                    }
                }
            }
        }
    }
}

/// Receives other nodes' messages and keeps the Redis subscriptions equal
/// to this node's local interest, reconnecting when Redis goes away.
async fn relay_in(
    client: redis::Client,
    mut interest: mpsc::UnboundedReceiver<Interest>,
    broker: Broker,
    names: Names,
    up: Arc<AtomicBool>,
) {
    let mut wanted = Wanted::new();
    let mut attempt = 0u32;
    let metrics = broker.metrics();
    loop {
        let pubsub = match tokio::time::timeout(REDIS_TIMEOUT, client.get_async_pubsub()).await {
            Ok(Ok(pubsub)) => pubsub,
            failed => {
                if attempt == 0 {
                    let why = match failed {
                        Ok(Err(e)) => e.to_string(),
                        _ => "timed out".into(),
                    };
                    warn!(error = %why, "redis unreachable; serving local clients only");
                }
                up.store(false, Ordering::Relaxed);
                let offline = Offline {
                    pause: backoff(attempt),
                    wanted: &mut wanted,
                    names: &names,
                    metrics,
                };
                if !offline.wait(&mut interest, None).await {
                    return;
                }
                attempt = attempt.saturating_add(1);
                continue;
            }
        };
        let (mut sink, mut stream) = pubsub.split();
        let restored = async {
            for (name, (glob, _)) in &wanted {
                if *glob {
                    sink.psubscribe(name).await?;
                } else {
                    sink.subscribe(name).await?;
                }
            }
            Ok::<_, redis::RedisError>(())
        };
        if tokio::time::timeout(REDIS_TIMEOUT * 5, restored)
            .await
            .map_or(true, |r| r.is_err())
        {
            attempt = attempt.saturating_add(1);
            continue;
        }
        if attempt > 0 {
            metrics.redis_reconnects.inc();
            info!(subscriptions = wanted.len(), "redis link restored");
        }
        attempt = 0;
        up.store(true, Ordering::Relaxed);

        loop {
            tokio::select! {
                message = stream.next() => match message {
                    Some(message) => receive(&broker, &names, &message),
                    None => break,
                },
                change = interest.recv() => {
                    let Some(change) = change else { return };
                    if let Some((watch, glob, name)) = apply(&mut wanted, &names, &change) {
                        let result = match (watch, glob) {
                            (true, false) => sink.subscribe(&name).await,
                            (true, true) => sink.psubscribe(&name).await,
                            (false, false) => sink.unsubscribe(&name).await,
                            (false, true) => sink.punsubscribe(&name).await,
                        };
                        if result.is_err() {
                            break;
                        }
                    }
                }
            }
        }
        up.store(false, Ordering::Relaxed);
        warn!("redis link lost; reconnecting");
    }
}

/// Delivers one message from another node to this node's subscribers.
fn receive(broker: &Broker, names: &Names, message: &redis::Msg) {
    let glob = message.get_pattern::<Option<String>>().ok().flatten();
    receive_bytes(broker, names, message.get_payload_bytes(), glob.as_deref());
}

/// Delivers one relayed message, which came through the Redis glob `glob`
/// when it came through a pattern subscription.
fn receive_bytes(broker: &Broker, names: &Names, bytes: &[u8], glob: Option<&str>) {
    let Some(relayed) = wire::decode(bytes) else {
        warn!("undecodable relay message");
        return;
    };
    if relayed.origin == &**broker.node_id() {
        return;
    }
    let (Ok(topic), Some(payload)) = (Topic::new(relayed.topic), relayed.payload()) else {
        warn!(topic = relayed.topic, "invalid relay message");
        return;
    };
    let metrics = broker.metrics();
    metrics.relayed_in.inc();
    let latency = now_us().saturating_sub(relayed.sent_at_us);
    metrics.relay_latency.observe(latency as f64 / 1e6);
    let delivery = Delivery::new(topic, payload, None, relayed.origin.into());
    // A message matching both a channel and a glob arrives once for each:
    // a channel message goes to the topic's subscribers, a glob message to
    // the patterns behind that glob, so each subscription gets it once.
    match glob {
        Some(glob) => {
            let glob = names.topic_of(glob).unwrap_or_default();
            broker.registry().publish_remote_patterns(delivery, glob);
        }
        None => {
            broker.registry().publish_remote_topic(delivery);
        }
    }
}

/// Sharded pub/sub (`SPUBLISH`/`SSUBSCRIBE`, Redis 7) through a Redis
/// Cluster: each topic's channel lives on the shard that owns its hash slot,
/// so relay traffic spreads over the shards instead of reaching every one.
/// Sharded pub/sub has no patterns: pattern subscriptions get the messages
/// published on their own node only.
mod sharded {
    use redis::cluster::{ClusterClient, ClusterClientBuilder};
    use redis::cluster_async::ClusterConnection;
    use redis::{PushInfo, PushKind, Value};

    use super::*;

    pub(super) fn start(
        broker: &Broker,
        url: &str,
        names: Names,
        up: Arc<AtomicBool>,
        outbound: mpsc::Receiver<Outbound>,
        interest: mpsc::UnboundedReceiver<Interest>,
    ) -> Result<Vec<JoinHandle<()>>, ClusterError> {
        let receiver = broker.clone();
        let receiving_names = names.clone();
        // Messages are handed over by the client's own task, as they arrive.
        let on_push = move |push: PushInfo| -> Result<(), std::convert::Infallible> {
            if push.kind == PushKind::SMessage
                && let [Value::BulkString(_channel), Value::BulkString(payload)] =
                    push.data.as_slice()
            {
                receive_bytes(&receiver, &receiving_names, payload, None);
            }
            Ok(())
        };
        let client = ClusterClientBuilder::new(vec![url])
            .use_protocol(redis::ProtocolVersion::RESP3)
            .connection_timeout(REDIS_TIMEOUT)
            .response_timeout(REDIS_TIMEOUT)
            .push_sender(on_push)
            .build()
            .map_err(ClusterError::InvalidUrl)?;
        Ok(vec![tokio::spawn(run(
            client,
            broker.clone(),
            names,
            up,
            outbound,
            interest,
        ))])
    }

    async fn run(
        client: ClusterClient,
        broker: Broker,
        names: Names,
        up: Arc<AtomicBool>,
        mut outbound: mpsc::Receiver<Outbound>,
        mut interest: mpsc::UnboundedReceiver<Interest>,
    ) {
        let metrics = broker.metrics();
        let node = broker.node_id().clone();
        let mut wanted = Wanted::new();
        let mut attempt = 0u32;
        let mut batch = Vec::with_capacity(RELAY_BATCH);
        loop {
            let mut conn: ClusterConnection =
                match tokio::time::timeout(REDIS_TIMEOUT, client.get_async_connection()).await {
                    Ok(Ok(conn)) => conn,
                    _ => {
                        up.store(false, Ordering::Relaxed);
                        if attempt == 0 {
                            warn!("redis cluster unreachable; serving local clients only");
                        }
                        let offline = Offline {
                            pause: backoff(attempt),
                            wanted: &mut wanted,
                            names: &names,
                            metrics,
                        };
                        if !offline
                            .wait(&mut interest, Some((&mut outbound, &mut batch)))
                            .await
                        {
                            return;
                        }
                        attempt = attempt.saturating_add(1);
                        continue;
                    }
                };
            // Sharded subscriptions are resubscribed by the client after a
            // reconnect; on a new connection they are made again here.
            let channels: Vec<&String> = wanted
                .iter()
                .filter(|(_, (glob, _))| !glob)
                .map(|(n, _)| n)
                .collect();
            let mut restored = true;
            for channel in channels {
                if conn.ssubscribe(channel).await.is_err() {
                    restored = false;
                    break;
                }
            }
            if !restored {
                attempt = attempt.saturating_add(1);
                continue;
            }
            if attempt > 0 {
                metrics.redis_reconnects.inc();
                info!(subscriptions = wanted.len(), "redis cluster link restored");
            }
            up.store(true, Ordering::Relaxed);
            // From here the cluster client reconnects (and resubscribes) by
            // itself; the heartbeat tells whether the link is up.
            let mut heartbeat = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    n = outbound.recv_many(&mut batch, RELAY_BATCH) => {
                        if n == 0 {
                            return;
                        }
                        let count = batch.len() as u64;
                        let sends = batch.drain(..).map(|out| {
                            let mut conn = conn.clone();
                            let channel = names.channel(out.topic.as_str());
                            let message = wire::encode(&node, &out);
                            async move {
                                redis::cmd("SPUBLISH")
                                    .arg(channel)
                                    .arg(message)
                                    .query_async::<()>(&mut conn)
                                    .await
                            }
                        });
                        let results = futures_util::future::join_all(sends).await;
                        let failed = results.iter().filter(|r| r.is_err()).count() as u64;
                        metrics.relayed_out.inc_by(count - failed);
                        if failed > 0 {
                            metrics.relay_failed.inc_by(failed);
                            up.store(false, Ordering::Relaxed);
                        } else {
                            up.store(true, Ordering::Relaxed);
                        }
                    }
                    change = interest.recv() => {
                        let Some(change) = change else { return };
                        if let Some((watch, false, name)) = apply(&mut wanted, &names, &change) {
                            let result = if watch {
                                conn.ssubscribe(&name).await
                            } else {
                                conn.sunsubscribe(&name).await
                            };
                            if let Err(error) = result {
                                warn!(%error, channel = %name, "redis sharded (un)subscribe failed");
                                up.store(false, Ordering::Relaxed);
                            }
                        }
                    }
                    _ = heartbeat.tick() => {
                        let alive = tokio::time::timeout(
                            REDIS_TIMEOUT,
                            redis::cmd("PING").query_async::<()>(&mut conn),
                        )
                        .await
                        .is_ok_and(|r| r.is_ok());
                        let was = up.swap(alive, Ordering::Relaxed);
                        if was != alive {
                            if alive {
                                metrics.redis_reconnects.inc();
                                info!("redis cluster link restored");
                            } else {
                                warn!("redis cluster link lost; retrying");
                            }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_map_to_globs() {
        let names = Names {
            prefix: "st".into(),
        };
        let f = |s: &str| Filter::new(s).unwrap();
        assert_eq!(names.subscription(&f("a.b")), (false, "st:t:a.b".into()));
        assert_eq!(names.subscription(&f("a.*.c")), (true, "st:t:a.*.c".into()));
        assert_eq!(
            names.subscription(&f("metrics.>")),
            (true, "st:t:metrics.*".into())
        );
        assert_eq!(glob_of(&f("metrics.>")), "metrics.*");
        assert_eq!(names.topic_of("st:t:a.b"), Some("a.b"));
        assert_eq!(names.topic_of("other:t:a.b"), None);
    }

    #[test]
    fn relay_messages_round_trip() {
        let out = Outbound {
            topic: Topic::new("chat.lobby").unwrap(),
            payload: Payload::from_json(r#"{"text":"hi"}"#).unwrap(),
            sent_at_us: 42,
        };
        let bytes = wire::encode("n1", &out);
        let back = wire::decode(&bytes).unwrap();
        assert_eq!(
            (back.origin, back.topic, back.sent_at_us),
            ("n1", "chat.lobby", 42)
        );
        assert_eq!(back.payload().unwrap(), out.payload);
        assert!(wire::decode(&bytes[..5]).is_none());
        assert!(wire::decode(&[9, 0]).is_none());
    }

    #[test]
    fn interest_is_counted_per_redis_subscription() {
        let names = Names {
            prefix: "st".into(),
        };
        let mut wanted = Wanted::new();
        let f = |s: &str| Filter::new(s).unwrap();
        // `a.>` and `a.*` share the glob `a.*`: one Redis subscription.
        assert!(apply(&mut wanted, &names, &Interest::Watch(f("a.>"))).is_some());
        assert!(apply(&mut wanted, &names, &Interest::Watch(f("a.*"))).is_none());
        assert!(apply(&mut wanted, &names, &Interest::Unwatch(f("a.>"))).is_none());
        assert_eq!(
            apply(&mut wanted, &names, &Interest::Unwatch(f("a.*"))),
            Some((false, true, "st:t:a.*".into()))
        );
        assert!(wanted.is_empty());
    }
}
