//! The shared state of one broker node.

use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use starling_protocol::{ErrorCode, Filter, Limits, Payload, Topic};
use tokio::sync::futures::Notified;
use tokio::sync::{Notify, Semaphore};

use crate::auth::{AuthConfigError, Verifier};
use crate::config::{Config, HistoryStore as StoreKind};
use crate::history::{
    Excerpt, HistoryBounds, HistoryPolicy, HistoryStore, Position, Recovery, Resume,
};
use crate::metrics::{Metrics, Source};
use crate::origin::{OriginPolicy, OriginRuleError};
use crate::presence::Presence;
use crate::registry::{DeliveryReceiver, TopicRegistry};
use crate::relay::memory::MemoryRelay;
use crate::relay::redis::{HistorySettings, RedisLink, RedisRelay};
use crate::relay::{
    Answer, ClusterError, LinkState, Published, RedisTlsFiles, Relay, StoreUnavailable,
};
use crate::ring::Capacity;
use crate::tls::{Tls, TlsError};

/// Why a publish was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    /// Topics whose first token starts with `$` belong to the broker.
    #[error("topic {0} is reserved for the broker")]
    Reserved(Topic),
    /// The topic keeps history in Redis, and Redis did not take the message.
    #[error(transparent)]
    Unavailable(#[from] StoreUnavailable),
}

impl PublishError {
    /// The protocol error code for this failure.
    pub fn code(&self) -> ErrorCode {
        match self {
            PublishError::Reserved(_) => ErrorCode::Unauthorized,
            PublishError::Unavailable(_) => ErrorCode::Internal,
        }
    }
}

/// Why a broker cannot start with its configuration.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The cluster settings are wrong.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    /// The authentication settings are wrong.
    #[error(transparent)]
    Auth(#[from] AuthConfigError),
    /// An `--allowed-origin` rule does not parse.
    #[error(transparent)]
    Origin(#[from] OriginRuleError),
    /// The TLS certificate or key cannot be used.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// `--history-store` does not fit the other settings.
    #[error("{0}")]
    HistoryStore(&'static str),
}

/// A connection's id, unique within a node's lifetime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct ConnId(pub(crate) u64);

impl std::fmt::Display for ConnId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "c{}", self.0)
    }
}

#[derive(Debug)]
struct Shared {
    node_id: Arc<str>,
    config: Config,
    limits: Limits,
    registry: Arc<TopicRegistry>,
    relay: Box<dyn Relay>,
    /// Who is on the `--presence` topics; `None` without such topics.
    presence: Option<Arc<Presence>>,
    /// Verifies clients' tokens; `None` when auth is off.
    verifier: Option<Verifier>,
    origins: OriginPolicy,
    /// The listener's TLS; `None` when it serves plain TCP.
    tls: Option<Tls>,
    metrics: Arc<Metrics>,
    /// Wakes the connection tasks when shutdown begins.
    shutdown_notify: Notify,
    shutting_down: AtomicBool,
    connection_slots: Arc<Semaphore>,
    next_conn_id: AtomicU64,
    /// Connections echo messages instead of reading them as envelopes:
    /// for conformance tests only (`internals::echo_broker`).
    echo: bool,
}

/// One broker node: its topics, its connections' limits and its metrics.
/// Cheap to clone (a shared handle).
#[derive(Debug, Clone)]
pub struct Broker {
    shared: Arc<Shared>,
}

impl Broker {
    /// A broker with this configuration. Fails when a setting is wrong (a
    /// Redis URL that does not parse, an unreadable key, a bad origin
    /// rule); Redis itself is not contacted until the broker serves.
    pub fn new(config: Config) -> Result<Self, StartError> {
        Broker::build(config, false)
    }

    /// A broker whose connections send every message back as it came,
    /// instead of reading it as an envelope: an echo server on the broker's
    /// own handshake, framing and connection loop, for conformance tests
    /// (`internals::echo_broker`).
    pub(crate) fn echo(config: Config) -> Result<Self, StartError> {
        Broker::build(config, true)
    }

    fn build(config: Config, echo: bool) -> Result<Self, StartError> {
        let verifier = Verifier::from_config(&config)?;
        let origins = OriginPolicy::new(&config.allowed_origins)?;
        let tls = Tls::from_paths(config.tls_cert.as_deref(), config.tls_key.as_deref())?;
        let metrics = Arc::new(Metrics::new());
        let node_id: Arc<str> = match &config.node_id {
            Some(id) => id.as_str().into(),
            None => generate_node_id().into(),
        };
        let registry = Arc::new(TopicRegistry::new(
            Capacity {
                messages: config.subscriber_buffer,
                bytes: config.subscriber_buffer_bytes,
            },
            metrics.clone(),
        ));
        // With --redis-url, histories are in Redis; without, in memory.
        match (config.history_store, &config.redis_url) {
            (Some(StoreKind::Redis), None) => {
                return Err(StartError::HistoryStore(
                    "--history-store redis needs --redis-url",
                ));
            }
            (Some(StoreKind::Memory), Some(_))
                if HistoryPolicy::new(config.history, &config.history_prefixes).is_enabled() =>
            {
                return Err(StartError::HistoryStore(
                    "the nodes of a cluster cannot keep history in memory (their offsets \
                     would disagree): use --history-store redis, the default with --redis-url",
                ));
            }
            _ => {}
        }
        let keeps_presence =
            !config.presence_prefixes.is_empty() || !config.presence_counts_prefixes.is_empty();
        let grace = Duration::from_millis(config.presence_grace_ms);
        let (relay, presence_store): (Box<dyn Relay>, _) = match &config.redis_url {
            Some(url) => {
                let history = HistorySettings {
                    policy: HistoryPolicy::new(config.history, &config.history_prefixes),
                    ttl: config.history_ttl,
                };
                let link = RedisLink {
                    url,
                    prefix: &config.redis_prefix,
                    sharded: config.redis_sharded,
                    tls: RedisTlsFiles {
                        ca: config.redis_ca.as_deref(),
                        client: config
                            .redis_client_cert
                            .as_deref()
                            .zip(config.redis_client_key.as_deref()),
                    },
                };
                let relay = RedisRelay::new(
                    link,
                    history,
                    registry.clone(),
                    metrics.clone(),
                    node_id.clone(),
                )?;
                let store = keeps_presence
                    .then(|| relay.presence_store(grace, config.presence_counts_prefixes.clone()));
                (Box::new(relay), store)
            }
            None => {
                let policy = HistoryPolicy::new(config.history, &config.history_prefixes);
                let bounds = HistoryBounds {
                    topics: config.history_topics,
                    bytes: config.history_max_bytes,
                    ttl: (config.history_ttl > 0).then(|| Duration::from_secs(config.history_ttl)),
                };
                let history = HistoryStore::new(policy, bounds, metrics.clone());
                let relay = MemoryRelay::new(registry.clone(), history, node_id.clone());
                (Box::new(relay), None)
            }
        };
        let presence = keeps_presence.then(|| {
            Presence::new(
                config.presence_prefixes.clone(),
                config.presence_counts_prefixes.clone(),
                grace,
                registry.clone(),
                metrics.clone(),
                node_id.clone(),
                presence_store,
            )
        });
        Ok(Broker {
            shared: Arc::new(Shared {
                presence,
                node_id,
                limits: config.limits(),
                registry,
                relay,
                verifier,
                origins,
                tls,
                metrics,
                shutdown_notify: Notify::new(),
                shutting_down: AtomicBool::new(false),
                connection_slots: Arc::new(Semaphore::new(config.max_connections)),
                next_conn_id: AtomicU64::new(1),
                echo,
                config,
            }),
        })
    }

    /// Presence, when some topics keep it.
    pub(crate) fn presence(&self) -> Option<&Arc<Presence>> {
        self.shared.presence.as_ref()
    }

    /// Whether connections echo messages (see [`Broker::echo`]).
    pub(crate) fn echoes(&self) -> bool {
        self.shared.echo
    }

    /// This node's id.
    pub fn node_id(&self) -> &Arc<str> {
        &self.shared.node_id
    }

    /// The configuration the broker runs with.
    pub fn config(&self) -> &Config {
        &self.shared.config
    }

    /// The limits announced in `welcome`.
    pub fn limits(&self) -> &Limits {
        &self.shared.limits
    }

    /// The token verifier, when auth is on.
    pub(crate) fn verifier(&self) -> Option<&Verifier> {
        self.shared.verifier.as_ref()
    }

    /// The origins WebSocket handshakes are accepted from.
    pub(crate) fn origins(&self) -> &OriginPolicy {
        &self.shared.origins
    }

    /// The listener's TLS, when it serves `wss://` and `https://`.
    pub(crate) fn tls(&self) -> Option<&Tls> {
        self.shared.tls.as_ref()
    }

    /// Whether the broker serves `wss://` and `https://` (else `ws://` and
    /// `http://`).
    pub fn serves_tls(&self) -> bool {
        self.shared.tls.is_some()
    }

    /// The topics and patterns with subscribers on this node.
    pub fn registry(&self) -> &TopicRegistry {
        &self.shared.registry
    }

    /// The metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    /// Publishes `payload` on `topic` for a client (WebSocket or HTTP).
    /// Reserved (`$`) topics are refused. On a topic whose history is kept
    /// in Redis, it is done once Redis has taken the message.
    pub async fn publish(
        &self,
        topic: Topic,
        payload: Payload,
        source: Source,
    ) -> Result<Published, PublishError> {
        Ok(self.publish_as(topic, payload, source, None)?.get().await?)
    }

    /// [`Broker::publish`] for a client whose token's `sub` is `from`, when
    /// auth is on (the messages carry it).
    pub(crate) fn publish_as(
        &self,
        topic: Topic,
        payload: Payload,
        source: Source,
        from: Option<Arc<str>>,
    ) -> Result<Answer<Published>, PublishError> {
        if topic.is_reserved() {
            return Err(PublishError::Reserved(topic));
        }
        self.shared.metrics.published(source);
        Ok(self.shared.relay.publish(topic, payload, from))
    }

    /// Publishes without the reserved-topic check: for the broker's own
    /// topics (which keep no history: the answer is at once).
    pub(crate) fn publish_unchecked(&self, topic: Topic, payload: Payload, source: Source) {
        self.shared.metrics.published(source);
        drop(self.shared.relay.publish(topic, payload, None));
    }

    /// Subscribes to `filter` (which becomes the registry's shared copy);
    /// with `since` on a topic that keeps history, also returns how many
    /// messages after `since` are gone and the retained ones to replay,
    /// taken together with the live receiver so that nothing is missed or
    /// repeated between them.
    pub(crate) fn subscribe(
        &self,
        filter: &mut Filter,
        resume: Option<&Resume>,
    ) -> (DeliveryReceiver, Answer<Recovery>) {
        self.shared.relay.subscribe(filter, resume)
    }

    /// Where the history of the topic `filter` stands.
    pub(crate) fn position(&self, filter: &Filter) -> Answer<Option<Position>> {
        self.shared.relay.position(filter)
    }

    /// Up to `limit` retained messages of `topic` (see [`Relay::history`]).
    pub(crate) fn history(
        &self,
        topic: &Topic,
        from: Option<&Resume>,
        limit: usize,
    ) -> Answer<Option<Excerpt>> {
        self.shared.relay.history(topic, from, limit)
    }

    /// Removes one subscriber of `filter`.
    pub(crate) fn unsubscribe(&self, filter: &Filter) {
        self.shared.registry.unsubscribe(filter);
    }

    /// Starts the relay (for a cluster: the Redis link, which comes up and
    /// back by itself).
    pub(crate) fn start_relay(&self) {
        self.shared.relay.start();
        if let Some(presence) = &self.shared.presence {
            presence.start();
        }
    }

    /// Stops relaying to the other nodes, after saying goodbye to their
    /// presence.
    pub(crate) async fn stop_relay(&self) {
        if let Some(presence) = &self.shared.presence {
            presence.stop().await;
        }
        self.shared.relay.stop();
    }

    /// The state of the cluster link: `None` for a single node, otherwise
    /// whether Redis is reachable.
    pub fn cluster_up(&self) -> Option<bool> {
        match self.shared.relay.state() {
            LinkState::Local => None,
            LinkState::Up => Some(true),
            LinkState::Down => Some(false),
        }
    }

    /// Tells every connection to close with 1001 and refuses new ones.
    pub fn begin_shutdown(&self) {
        self.shared.shutting_down.store(true, Ordering::SeqCst);
        self.shared.shutdown_notify.notify_waiters();
    }

    /// Completes when shutdown begins, if it is polled before; check
    /// [`Broker::is_shutting_down`] after polling it once.
    pub(crate) fn shutdown_notified(&self) -> Notified<'_> {
        self.shared.shutdown_notify.notified()
    }

    /// Whether shutdown has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.shared.shutting_down.load(Ordering::SeqCst)
    }

    /// Waits until every connection has closed (every connection slot is
    /// free again), or `deadline` has passed. Returns whether all closed.
    pub async fn connections_closed(&self, deadline: Duration) -> bool {
        let all = u32::try_from(self.shared.config.max_connections).unwrap_or(u32::MAX);
        matches!(
            tokio::time::timeout(deadline, self.shared.connection_slots.acquire_many(all)).await,
            Ok(Ok(_))
        )
    }

    /// Takes a connection slot, when the limit allows one more.
    pub(crate) fn try_admit(&self) -> Option<Admission> {
        if self.is_shutting_down() {
            return None;
        }
        let permit = self
            .shared
            .connection_slots
            .clone()
            .try_acquire_owned()
            .ok()?;
        Some(Admission {
            id: ConnId(self.shared.next_conn_id.fetch_add(1, Ordering::Relaxed)),
            _permit: permit,
        })
    }
}

/// A connection's admission: its id and its slot under the connection limit.
/// The slot is released when this is dropped.
#[derive(Debug)]
pub(crate) struct Admission {
    pub(crate) id: ConnId,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

fn generate_node_id() -> String {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    format!("n-{:08x}", hasher.finish() as u32)
}
