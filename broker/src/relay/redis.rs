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
//! reconnects with back-off ([`link::Backoff`]) and restores its Redis
//! subscriptions by itself, many channels per command. With
//! `--redis-sharded` the same relay runs over sharded pub/sub ([`sharded`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{StreamExt, TryStreamExt};
use redis::aio::{ConnectionManager, ConnectionManagerConfig, PubSubSink};
use starling_protocol::{Filter, Payload, Topic};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::delivery::Delivery;
use crate::history::{Excerpt, HistoryPolicy, Position, Recovery, Resume};
use crate::interest::InterestQueue;
use crate::metrics::Metrics;
use crate::registry::{DeliveryReceiver, TopicRegistry};
use crate::relay::conn::Connector;
use crate::relay::link::{
    self, Backoff, Changes, HEARTBEAT, Inbound, OutboundReceiver, OutboundSender, Queued,
    REDIS_TIMEOUT, RELAY_BATCH, Throttle, Wanted, now_us, wait_offline,
};
use crate::relay::sharded;
use crate::relay::shared_history::{self, SharedHistory};
use crate::relay::shared_presence::{PresenceTask, SharedPresence, StoreSetup, shared_presence};
use crate::relay::streams::{StreamTask, stream_history};
use crate::relay::wire::{self, Names, Outbound, Subscription};
use crate::relay::{Answer, ClusterError, LinkState, Published, RedisTlsFiles, Relay};
use crate::sync::lock;

/// How many channels (or globs) one `SUBSCRIBE`-like command names at most.
const SUBSCRIBE_BATCH: usize = 1_000;
/// How many `SUBSCRIBE`-like commands may wait for Redis's answer at once.
const SUBSCRIBE_WINDOW: usize = 4;

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
    /// The history store's task, when topics keep history.
    store: Option<StreamTask>,
}

/// How a node reaches Redis.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RedisLink<'a> {
    /// `redis://` or `rediss://`.
    pub(crate) url: &'a str,
    /// The prefix of every channel and key.
    pub(crate) prefix: &'a str,
    /// Whether `url` is a Redis Cluster, used through sharded pub/sub.
    pub(crate) sharded: bool,
    /// The TLS files of a `rediss://` URL.
    pub(crate) tls: RedisTlsFiles<'a>,
}

/// The history settings of a cluster.
#[derive(Debug, Clone)]
pub(crate) struct HistorySettings {
    /// Which topics keep how many messages.
    pub(crate) policy: HistoryPolicy,
    /// Seconds a history lives after its last message (0: no limit).
    pub(crate) ttl: u64,
}

/// The relay of a node in a cluster.
pub(crate) struct RedisRelay {
    inbound: Inbound,
    outbound: OutboundSender,
    /// Warnings about messages dropped because the relay queue is full.
    full: Throttle,
    up: Arc<AtomicBool>,
    /// The registry's interest, which the link follows.
    interest: Arc<InterestQueue>,
    history: Option<SharedHistory>,
    /// How stores in Redis reach it.
    connector: Connector,
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
        redis: RedisLink<'_>,
        history: HistorySettings,
        registry: Arc<TopicRegistry>,
        metrics: Arc<Metrics>,
        node: Arc<str>,
    ) -> Result<Self, ClusterError> {
        let RedisLink {
            url,
            prefix,
            sharded,
            tls,
        } = redis;
        let (outbound, outbound_rx) = link::outbound(metrics.relay_queue_bytes.clone());
        let names = if sharded {
            Names::tagged(prefix)
        } else {
            Names::new(prefix)
        };
        let inbound = Inbound {
            registry,
            metrics,
            node,
            names,
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
        let interest = Arc::new(InterestQueue::default());
        let connector = match &mode {
            Mode::Classic(client) => Connector::Classic(client.clone()),
            Mode::Sharded(client) => Connector::Cluster(client.clone()),
        };
        let (history, store) = if history.policy.is_enabled() {
            let (store, task) = stream_history(
                connector.clone(),
                inbound.names.clone(),
                history.ttl,
                inbound.metrics.clone(),
            );
            let history = SharedHistory::new(history.policy, store, interest.clone());
            (Some(history), Some(task))
        } else {
            (None, None)
        };
        Ok(RedisRelay {
            inbound,
            outbound,
            full: Throttle::default(),
            up: Arc::new(AtomicBool::new(false)),
            interest,
            history,
            connector,
            pending: Mutex::new(Some(Pending {
                mode,
                outbound: outbound_rx,
                store,
            })),
            tasks: Mutex::new(Vec::new()),
        })
    }

    /// A presence store in the Redis of this cluster, whose members leave
    /// `grace` after their last session.
    pub(crate) fn presence_store(
        &self,
        grace: Duration,
        counts_only: Vec<String>,
    ) -> (SharedPresence, PresenceTask) {
        shared_presence(StoreSetup {
            connector: self.connector.clone(),
            names: self.inbound.names.clone(),
            node: self.inbound.node.clone(),
            grace,
            counts_only,
            interest: self.interest.clone(),
            metrics: self.inbound.metrics.clone(),
        })
    }

    /// The topic's history, and its length, when it keeps one.
    fn history_of(&self, topic: &Topic) -> Option<(&SharedHistory, usize)> {
        let history = self.history.as_ref()?;
        Some((history, history.length(topic)?))
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
    fn publish(&self, topic: Topic, payload: Payload, from: Option<Arc<str>>) -> Answer<Published> {
        if let Some((history, length)) = self.history_of(&topic) {
            let outbound = shared_history::outbound(topic, payload, from);
            return history.publish(&self.inbound.node, outbound, length);
        }
        let delivery =
            Delivery::new(topic, payload, None, self.inbound.node.clone()).with_from(from);
        // Broker topics are per node.
        if !delivery.topic.is_reserved() {
            self.relay(&delivery);
        }
        Answer::Now(Published::unnumbered(
            self.inbound.registry.publish(delivery),
        ))
    }

    fn subscribe(
        &self,
        filter: &mut Filter,
        resume: Option<&Resume>,
    ) -> (DeliveryReceiver, Answer<Recovery>) {
        let rx = self.inbound.registry.subscribe_shared(filter);
        let recovery = match filter.as_topic() {
            Some(topic) => match self.history_of(&topic) {
                Some((history, _)) => history.recover(topic, resume),
                None => Answer::Now(Recovery::default()),
            },
            None => Answer::Now(Recovery::default()),
        };
        (rx, recovery)
    }

    fn position(&self, filter: &Filter) -> Answer<Option<Position>> {
        match filter.as_topic() {
            Some(topic) => match self.history_of(&topic) {
                Some((history, _)) => history.position(topic),
                None => Answer::Now(None),
            },
            None => Answer::Now(None),
        }
    }

    fn history(
        &self,
        topic: &Topic,
        from: Option<&Resume>,
        limit: usize,
    ) -> Answer<Option<Excerpt>> {
        match self.history_of(topic) {
            Some((history, _)) => history.excerpt(topic, from, limit),
            None => Answer::Now(None),
        }
    }

    fn start(&self) {
        let Some(Pending {
            mode,
            outbound,
            store,
        }) = lock(&self.pending).take()
        else {
            return;
        };
        let interest = self.interest.clone();
        self.inbound.registry.report_interest(interest.clone());
        let prefix = self.inbound.names.prefix();
        let mut tasks = match mode {
            Mode::Classic(client) => {
                let client = *client;
                info!(%prefix, "clustering through redis");
                vec![
                    tokio::spawn(relay_out(client.clone(), outbound, self.inbound.clone())),
                    tokio::spawn(relay_in(
                        client,
                        interest,
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
                    interest,
                ))]
            }
        };
        if let Some(store) = store {
            tasks.push(tokio::spawn(store.run()));
        }
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

/// Sends queued messages to Redis, a pipeline per batch. After a failure
/// it backs off: messages wait in the queue meanwhile, and those waiting
/// when a try fails are dropped with it (and counted), so that what reaches
/// the other nodes after a blip is recent.
async fn relay_out(client: redis::Client, mut queue: OutboundReceiver, link: Inbound) {
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(REDIS_TIMEOUT))
        .set_response_timeout(Some(REDIS_TIMEOUT));
    let mut conn: Option<ConnectionManager> = None;
    let mut backoff = Backoff::default();
    let mut batch = Vec::with_capacity(RELAY_BATCH);
    let metrics = &link.metrics;
    while queue.recv_many(&mut batch, RELAY_BATCH).await > 0 {
        let count = batch.len() as u64;
        let sent = async {
            if conn.is_none() {
                let connect = ConnectionManager::new_with_config(client.clone(), config.clone());
                match tokio::time::timeout(REDIS_TIMEOUT, connect).await {
                    Ok(Ok(c)) => conn = Some(c),
                    Ok(Err(error)) => return Err(error.to_string()),
                    Err(_) => return Err("connecting timed out".into()),
                }
            }
            let c = conn.as_mut().expect("connected above");
            let mut pipe = redis::pipe();
            for queued in batch.drain(..) {
                pipe.cmd("PUBLISH")
                    .arg(link.names.channel(queued.topic.as_str()))
                    .arg(queued.message)
                    .ignore();
            }
            match tokio::time::timeout(REDIS_TIMEOUT, pipe.query_async::<()>(c)).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(error)) => Err(error.to_string()),
                Err(_) => {
                    // The connection may be stuck: make a new one.
                    conn = None;
                    Err("timed out".into())
                }
            }
        };
        match sent.await {
            Ok(()) => {
                metrics.relayed_out.inc_by(count);
                if backoff.failures() > 0 {
                    info!("relaying to redis again");
                }
                backoff.succeeded();
            }
            Err(error) => {
                batch.clear();
                let dropped = count + queue.discard();
                metrics.relay_failed.inc_by(dropped);
                if backoff.failures() == 0 {
                    warn!(%error, dropped, "relaying to redis failed; retrying with back-off");
                }
                tokio::time::sleep(backoff.failed()).await;
            }
        }
    }
}

/// A `SUBSCRIBE`-like command of a pub/sub connection.
#[derive(Debug, Clone, Copy)]
enum Command {
    Subscribe,
    PSubscribe,
    Unsubscribe,
    PUnsubscribe,
}

/// Makes `changes` to the subscriptions of a pub/sub connection: many
/// channels (or globs) per command, a few commands in flight at once, each
/// answered within [`REDIS_TIMEOUT`].
async fn make_changes(sink: &PubSubSink, changes: &Changes) -> Result<(), String> {
    let mut commands = Vec::new();
    for (list, channel_command, glob_command) in [
        (&changes.subscribe, Command::Subscribe, Command::PSubscribe),
        (
            &changes.unsubscribe,
            Command::Unsubscribe,
            Command::PUnsubscribe,
        ),
    ] {
        let (mut channels, mut globs) = (Vec::new(), Vec::new());
        for subscription in list {
            match subscription {
                Subscription::Channel(channel) => channels.push(channel.clone()),
                Subscription::Glob(glob) => globs.push(glob.clone()),
            }
        }
        for (command, names) in [(channel_command, channels), (glob_command, globs)] {
            for chunk in names.chunks(SUBSCRIBE_BATCH) {
                commands.push(send(sink.clone(), command, chunk.to_vec()));
            }
        }
    }
    futures_util::stream::iter(commands)
        .buffer_unordered(SUBSCRIBE_WINDOW)
        .try_collect()
        .await
}

/// Sends one `SUBSCRIBE`-like command naming `names`; waits for Redis to
/// confirm each of them, at most [`REDIS_TIMEOUT`].
async fn send(mut sink: PubSubSink, command: Command, names: Vec<String>) -> Result<(), String> {
    let sent = async {
        match command {
            Command::Subscribe => sink.subscribe(&names).await,
            Command::PSubscribe => sink.psubscribe(&names).await,
            Command::Unsubscribe => sink.unsubscribe(&names).await,
            Command::PUnsubscribe => sink.punsubscribe(&names).await,
        }
    };
    match tokio::time::timeout(REDIS_TIMEOUT, sent).await {
        Ok(result) => result.map_err(|error| format!("{command:?}: {error}")),
        Err(_) => Err(format!("{command:?} of {} timed out", names.len())),
    }
}

/// Receives other nodes' messages and keeps the Redis subscriptions equal
/// to this node's local interest, reconnecting (with back-off) when Redis
/// goes away or does not answer.
async fn relay_in(
    client: redis::Client,
    interest: Arc<InterestQueue>,
    inbound: Inbound,
    up: Arc<AtomicBool>,
) {
    let mut wanted = Wanted::default();
    let mut backoff = Backoff::default();
    loop {
        let error =
            match session(&client, &interest, &inbound, &up, &mut wanted, &mut backoff).await {
                Ok(never) => match never {},
                Err(error) => error,
            };
        if up.swap(false, Ordering::Relaxed) {
            warn!(%error, "redis link lost; reconnecting");
        } else if backoff.failures() == 0 {
            warn!(%error, "redis unreachable; serving local clients only");
        }
        let pause = backoff.failed();
        wait_offline(pause, &interest, &mut wanted, &inbound.names).await;
    }
}

/// One pub/sub connection to Redis: connects, restores every subscription,
/// then relays until something fails; returns what failed.
async fn session(
    client: &redis::Client,
    interest: &InterestQueue,
    inbound: &Inbound,
    up: &AtomicBool,
    wanted: &mut Wanted,
    backoff: &mut Backoff,
) -> Result<std::convert::Infallible, String> {
    let pubsub = match tokio::time::timeout(REDIS_TIMEOUT, client.get_async_pubsub()).await {
        Ok(Ok(pubsub)) => pubsub,
        Ok(Err(error)) => return Err(error.to_string()),
        Err(_) => return Err("connecting timed out".into()),
    };
    let (mut sink, mut stream) = pubsub.split();
    // What changed while the link was down is in `wanted` already.
    let (taken, number) = interest.take_numbered();
    wanted.apply(&inbound.names, taken);
    make_changes(&sink, &wanted.all()).await?;
    interest.applied(number);
    if backoff.failures() > 0 {
        inbound.metrics.redis_reconnects.inc();
        info!(subscriptions = wanted.len(), "redis link restored");
    }
    backoff.succeeded();
    up.store(true, Ordering::Relaxed);

    let mut heartbeat = tokio::time::interval(HEARTBEAT);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            message = stream.next() => {
                let Some(message) = message else {
                    return Err("connection closed".into());
                };
                let glob = message.get_pattern::<Option<String>>().ok().flatten();
                inbound.receive(
                    message.get_payload_bytes(),
                    message.get_channel_name(),
                    glob.as_deref(),
                );
            }
            () = interest.changed() => {
                let (taken, number) = interest.take_numbered();
                let changes = wanted.apply(&inbound.names, taken);
                if !changes.is_empty() {
                    make_changes(&sink, &changes).await?;
                }
                interest.applied(number);
            }
            _ = heartbeat.tick() => {
                match tokio::time::timeout(REDIS_TIMEOUT, sink.ping::<()>()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(error)) => return Err(error.to_string()),
                    Err(_) => return Err("no answer to PING".into()),
                }
            }
        }
    }
}
