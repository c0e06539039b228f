//! The shared state of one broker node.

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use starling_protocol::{ErrorCode, Limits, Payload, Topic};
use tokio::sync::futures::Notified;
use tokio::sync::{Notify, Semaphore};

use crate::cluster::{Cluster, ClusterError};
use crate::config::Config;
use crate::delivery::Delivery;
use crate::history::{HistoryPolicy, HistoryStore, Replay};
use crate::metrics::{Metrics, Source};
use crate::registry::DeliveryReceiver;
use crate::registry::TopicRegistry;

/// Why a publish was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    /// Topics whose first token starts with `$` belong to the broker.
    #[error("topic {0} is reserved for the broker")]
    Reserved(Topic),
}

impl PublishError {
    /// The protocol error code for this failure.
    pub fn code(&self) -> ErrorCode {
        match self {
            PublishError::Reserved(_) => ErrorCode::Unauthorized,
        }
    }
}

/// What a successful publish returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    /// The offset the message got, when its topic keeps history.
    pub offset: Option<u64>,
    /// How many local subscriptions it reached.
    pub subscribers: usize,
}

/// A connection's id, unique within a node's lifetime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnId(pub u64);

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
    registry: TopicRegistry,
    history: HistoryStore,
    metrics: Arc<Metrics>,
    /// Wakes the connection tasks when shutdown begins.
    shutdown_notify: Notify,
    shutting_down: AtomicBool,
    connection_slots: Arc<Semaphore>,
    next_conn_id: AtomicU64,
    cluster: OnceLock<Cluster>,
}

/// One broker node: its topics, its connections' limits and its metrics.
/// Cheap to clone (a shared handle).
#[derive(Debug, Clone)]
pub struct Broker {
    shared: Arc<Shared>,
}

impl Broker {
    /// A broker with this configuration.
    pub fn new(config: Config) -> Self {
        let metrics = Arc::new(Metrics::new());
        let node_id: Arc<str> = match &config.node_id {
            Some(id) => id.as_str().into(),
            None => generate_node_id().into(),
        };
        let registry = TopicRegistry::new(config.subscriber_buffer, metrics.clone());
        let mut policy = HistoryPolicy::new(config.history, &config.history_prefixes);
        if config.redis_url.is_some() && policy.is_enabled() {
            // Offsets must agree on every node; that needs history kept in
            // the cluster, which nodes do not do yet.
            tracing::warn!("topic history is not available in a cluster yet; --history is ignored");
            policy = HistoryPolicy::default();
        }
        let history = HistoryStore::new(policy, config.history_topics);
        Broker {
            shared: Arc::new(Shared {
                node_id,
                limits: config.limits(),
                registry,
                history,
                metrics,
                shutdown_notify: Notify::new(),
                shutting_down: AtomicBool::new(false),
                connection_slots: Arc::new(Semaphore::new(config.max_connections)),
                next_conn_id: AtomicU64::new(1),
                cluster: OnceLock::new(),
                config,
            }),
        }
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

    /// The topic registry.
    pub fn registry(&self) -> &TopicRegistry {
        &self.shared.registry
    }

    /// The metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    /// Publishes `payload` on `topic` for a client (WebSocket or HTTP).
    /// Reserved (`$`) topics are refused.
    pub fn publish(
        &self,
        topic: Topic,
        payload: Payload,
        source: Source,
    ) -> Result<Published, PublishError> {
        if topic.is_reserved() {
            return Err(PublishError::Reserved(topic));
        }
        Ok(self.publish_unchecked(topic, payload, source))
    }

    /// Publishes without the reserved-topic check: for the broker's own topics.
    pub(crate) fn publish_unchecked(
        &self,
        topic: Topic,
        payload: Payload,
        source: Source,
    ) -> Published {
        self.shared.metrics.published(source);
        if let Some(history) = self.shared.history.for_publish(&topic) {
            // Offset, history and live delivery under the topic's lock: a
            // subscriber with `since` gets each message exactly once.
            let mut history = HistoryStore::lock(&history);
            let offset = history.next_offset();
            let delivery = Arc::new(Delivery::new(
                topic,
                payload,
                Some(offset),
                self.shared.node_id.clone(),
            ));
            history.push(delivery.clone());
            let subscribers = self.shared.registry.publish_shared(delivery);
            return Published {
                offset: Some(offset),
                subscribers,
            };
        }
        let delivery = Delivery::new(topic, payload, None, self.shared.node_id.clone());
        if let Some(cluster) = self.shared.cluster.get()
            && !delivery.topic.is_reserved()
        {
            cluster.relay(self, &delivery);
        }
        let subscribers = self.shared.registry.publish(delivery);
        Published {
            offset: None,
            subscribers,
        }
    }

    /// Subscribes to `filter`; with `since` on a topic that keeps history,
    /// also returns how many messages after `since` are gone and the retained
    /// ones to replay, taken together with the live receiver so that nothing
    /// is missed or repeated between them.
    pub(crate) fn subscribe(
        &self,
        filter: &mut starling_protocol::Filter,
        since: Option<u64>,
    ) -> (DeliveryReceiver, Option<Replay>) {
        if let (Some(since), Some(topic)) = (since, filter.as_topic())
            && let Some(history) = self.shared.history.get(&topic)
        {
            let history = HistoryStore::lock(&history);
            let rx = self.shared.registry.subscribe_shared(filter);
            return (rx, Some(history.replay(since)));
        }
        (self.shared.registry.subscribe_shared(filter), None)
    }

    /// Joins the cluster configured with `--redis-url`, if any. Does not wait
    /// for Redis: the link comes up (and back) by itself.
    pub(crate) fn join_cluster(&self) -> Result<(), ClusterError> {
        let Some(url) = &self.shared.config.redis_url else {
            return Ok(());
        };
        let (interest, interest_rx) = tokio::sync::mpsc::unbounded_channel();
        let config = &self.shared.config;
        let cluster = Cluster::start(
            self,
            url,
            &config.redis_prefix,
            config.redis_sharded,
            interest_rx,
        )?;
        if self.shared.cluster.set(cluster).is_ok() {
            self.shared.registry.report_interest(interest);
        }
        Ok(())
    }

    /// Stops relaying to the cluster.
    pub(crate) fn leave_cluster(&self) {
        if let Some(cluster) = self.shared.cluster.get() {
            cluster.stop();
        }
    }

    /// The state of the cluster link: `None` for a single node, otherwise
    /// whether Redis is reachable.
    pub fn cluster_up(&self) -> Option<bool> {
        self.shared.cluster.get().map(Cluster::is_up)
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
