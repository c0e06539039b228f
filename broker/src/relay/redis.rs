//! Clustering through Redis pub/sub: several nodes act as one broker.
//!
//! Each node relays what its clients publish to Redis, on one channel per
//! topic ([`wire`]), and subscribes in Redis only to the topics and patterns
//! that have subscribers on this node (the registry's interest). A relayed
//! message is encoded once by its origin; a receiving node decodes it once
//! into one [`Delivery`] shared by all its local subscribers, and ignores
//! its own messages (no echo).
//!
//! Redis pub/sub is at most once: while Redis is unreachable, local delivery
//! goes on, cross-node messages are lost (and counted), and the node
//! reconnects with backoff and restores its Redis subscriptions by itself.
//! With `--redis-sharded` the same relay runs over sharded pub/sub
//! ([`sharded`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use starling_protocol::{Filter, Payload, Topic};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::delivery::Delivery;
use crate::history::Replay;
use crate::metrics::Metrics;
use crate::registry::{DeliveryReceiver, Interest, TopicRegistry};
use crate::relay::link::{
    self, Change, Inbound, Offline, OutboundReceiver, OutboundSender, Queued, REDIS_TIMEOUT,
    RELAY_BATCH, Throttle, Wanted, backoff, now_us,
};
use crate::relay::sharded;
use crate::relay::wire::{self, Names, Outbound, Subscription};
use crate::relay::{ClusterError, LinkState, Published, RedisTlsFiles, Relay};
use crate::sync::lock;

/// How the node reaches Redis.
enum Mode {
    /// One Redis (or a primary with replicas): `PUBLISH`/`SUBSCRIBE`.
    Classic(Box<redis::Client>),
    /// A Redis Cluster: `SPUBLISH`/`SSUBSCRIBE`.
    Sharded(Box<redis::cluster::ClusterClient>),
}

/// What `start` hands to the relay tasks.
struct Pending {
    mode: Mode,
    outbound: OutboundReceiver,
}

/// The relay of a node in a cluster.
pub(crate) struct RedisRelay {
    inbound: Inbound,
    outbound: OutboundSender,
    /// Warnings about messages dropped because the relay queue is full.
    full: Throttle,
    up: Arc<AtomicBool>,
    pending: Mutex<Option<Pending>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for RedisRelay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisRelay")
            .field("up", &self.up)
            .finish_non_exhaustive()
    }
}

/// The certificates of a `rediss://` link, read from `files`; `None` when
/// there are none (a `rediss://` URL then trusts the system's roots).
fn tls_certificates(
    url: &str,
    files: RedisTlsFiles<'_>,
) -> Result<Option<redis::TlsCertificates>, ClusterError> {
    if files.ca.is_none() && files.client.is_none() {
        return Ok(None);
    }
    if !url.starts_with("rediss://") {
        return Err(ClusterError::TlsWithoutRediss);
    }
    let read = |path: &std::path::Path| {
        std::fs::read(path).map_err(|source| ClusterError::TlsFile {
            path: path.to_owned(),
            source,
        })
    };
    let client_tls = match files.client {
        Some((cert, key)) => Some(redis::ClientTlsConfig {
            client_cert: read(cert)?,
            client_key: read(key)?,
        }),
        None => None,
    };
    let root_cert = files.ca.map(read).transpose()?;
    Ok(Some(redis::TlsCertificates {
        client_tls,
        root_cert,
    }))
}

impl RedisRelay {
    /// A relay through the Redis at `url` (a Redis Cluster when `sharded`).
    /// Connects nothing yet: [`Relay::start`] does, and never waits for
    /// Redis (an unreachable Redis only means the link starts down).
    pub(crate) fn new(
        url: &str,
        prefix: &str,
        sharded: bool,
        tls: RedisTlsFiles<'_>,
        registry: Arc<TopicRegistry>,
        metrics: Arc<Metrics>,
        node: Arc<str>,
    ) -> Result<Self, ClusterError> {
        let (outbound, outbound_rx) = link::outbound(metrics.relay_queue_bytes.clone());
        let inbound = Inbound {
            registry,
            metrics,
            node,
            names: Names::new(prefix),
            rejected: Arc::default(),
        };
        let certificates = tls_certificates(url, tls)?;
        let mode = if sharded {
            Mode::Sharded(Box::new(sharded::client(
                url,
                certificates,
                inbound.clone(),
            )?))
        } else {
            Mode::Classic(Box::new(match certificates {
                Some(certificates) => {
                    redis::Client::build_with_tls(url, certificates).map_err(ClusterError::Tls)?
                }
                None => redis::Client::open(url).map_err(ClusterError::InvalidUrl)?,
            }))
        };
        Ok(RedisRelay {
            inbound,
            outbound,
            full: Throttle::default(),
            up: Arc::new(AtomicBool::new(false)),
            pending: Mutex::new(Some(Pending {
                mode,
                outbound: outbound_rx,
            })),
            tasks: Mutex::new(Vec::new()),
        })
    }

    /// Queues `delivery` for the other nodes, encoded. Never waits: when
    /// Redis cannot keep up and the queue is full (in messages or in bytes),
    /// the message is dropped for them and counted.
    fn relay(&self, delivery: &Delivery) {
        let outbound = Outbound {
            topic: delivery.topic.clone(),
            payload: delivery.payload.clone(),
            from: delivery.from.clone(),
            sent_at_us: now_us(),
        };
        let queued = Queued {
            message: wire::encode(&self.inbound.node, &outbound),
            topic: outbound.topic,
        };
        if !self.outbound.send(queued) {
            let metrics = &self.inbound.metrics;
            metrics.relay_failed.inc();
            metrics.relay_queue_full.inc();
            if self.full.allow() {
                warn!(
                    "the relay queue is full: messages for other nodes are dropped \
                     (starling_cluster_relay_queue_full_total counts them)"
                );
            }
        }
    }
}

impl Relay for RedisRelay {
    fn publish(&self, topic: Topic, payload: Payload, from: Option<Arc<str>>) -> Published {
        let delivery =
            Delivery::new(topic, payload, None, self.inbound.node.clone()).with_from(from);
        // Broker topics are per node.
        if !delivery.topic.is_reserved() {
            self.relay(&delivery);
        }
        Published {
            offset: None,
            subscribers: self.inbound.registry.publish(delivery),
        }
    }

    fn subscribe(
        &self,
        filter: &mut Filter,
        _since: Option<u64>,
    ) -> (DeliveryReceiver, Option<Replay>) {
        (self.inbound.registry.subscribe_shared(filter), None)
    }

    fn start(&self) {
        let Some(Pending { mode, outbound }) = lock(&self.pending).take() else {
            return;
        };
        let (interest, interest_rx) = mpsc::unbounded_channel();
        self.inbound.registry.report_interest(interest);
        let prefix = self.inbound.names.prefix();
        let tasks = match mode {
            Mode::Classic(client) => {
                let client = *client;
                info!(%prefix, "clustering through redis");
                vec![
                    tokio::spawn(relay_out(
                        client.clone(),
                        outbound,
                        self.inbound.clone(),
                        self.up.clone(),
                    )),
                    tokio::spawn(relay_in(
                        client,
                        interest_rx,
                        self.inbound.clone(),
                        self.up.clone(),
                    )),
                ]
            }
            Mode::Sharded(client) => {
                info!(%prefix, "clustering through redis sharded pub/sub");
                vec![tokio::spawn(sharded::run(
                    *client,
                    self.inbound.clone(),
                    self.up.clone(),
                    outbound,
                    interest_rx,
                ))]
            }
        };
        *lock(&self.tasks) = tasks;
    }

    fn stop(&self) {
        for task in lock(&self.tasks).iter() {
            task.abort();
        }
    }

    fn state(&self) -> LinkState {
        if self.up.load(Ordering::Relaxed) {
            LinkState::Up
        } else {
            LinkState::Down
        }
    }
}

/// Sends queued messages to Redis, a pipeline per batch.
async fn relay_out(
    client: redis::Client,
    mut queue: OutboundReceiver,
    link: Inbound,
    up: Arc<AtomicBool>,
) {
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(REDIS_TIMEOUT))
        .set_response_timeout(Some(REDIS_TIMEOUT));
    let mut conn: Option<ConnectionManager> = None;
    let mut retry_at = tokio::time::Instant::now();
    let mut batch = Vec::with_capacity(RELAY_BATCH);
    let metrics = &link.metrics;
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
            // Not connected: what waits goes too.
            batch.clear();
            metrics.relay_failed.inc_by(count + queue.discard());
            continue;
        };
        let mut pipe = redis::pipe();
        for queued in batch.drain(..) {
            pipe.cmd("PUBLISH")
                .arg(link.names.channel(queued.topic.as_str()))
                .arg(queued.message)
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

/// Receives other nodes' messages and keeps the Redis subscriptions equal
/// to this node's local interest, reconnecting when Redis goes away.
async fn relay_in(
    client: redis::Client,
    mut interest: mpsc::UnboundedReceiver<Interest>,
    inbound: Inbound,
    up: Arc<AtomicBool>,
) {
    let mut wanted = Wanted::default();
    let mut attempt = 0u32;
    let metrics = &inbound.metrics;
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
                    names: &inbound.names,
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
            for subscription in wanted.iter() {
                match subscription {
                    Subscription::Glob(glob) => sink.psubscribe(glob).await?,
                    Subscription::Channel(channel) => sink.subscribe(channel).await?,
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
                    Some(message) => {
                        let glob = message.get_pattern::<Option<String>>().ok().flatten();
                        inbound.receive(
                            message.get_payload_bytes(),
                            message.get_channel_name(),
                            glob.as_deref(),
                        );
                    }
                    None => break,
                },
                change = interest.recv() => {
                    let Some(change) = change else { return };
                    let result = match wanted.apply(&inbound.names, &change) {
                        None => Ok(()),
                        Some(Change::Subscribe(Subscription::Channel(c))) => sink.subscribe(&c).await,
                        Some(Change::Subscribe(Subscription::Glob(g))) => sink.psubscribe(&g).await,
                        Some(Change::Unsubscribe(Subscription::Channel(c))) => sink.unsubscribe(&c).await,
                        Some(Change::Unsubscribe(Subscription::Glob(g))) => sink.punsubscribe(&g).await,
                    };
                    if result.is_err() {
                        break;
                    }
                }
            }
        }
        up.store(false, Ordering::Relaxed);
        warn!("redis link lost; reconnecting");
    }
}
