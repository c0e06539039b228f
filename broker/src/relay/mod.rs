//! The relay: how a published message reaches every subscriber, on this
//! node and on the others, and how a topic's history is kept.
//!
//! A [`Relay`] is the one door between publishing and delivery. Its contract,
//! whatever the implementation:
//!
//! - **Publish and append are one step per topic.** When a topic keeps
//!   history, giving a message its offset, retaining it and handing it to
//!   subscribers happen under one lock (or one atomic script in a shared
//!   store), so every subscriber sees a topic's messages in offset order.
//! - **Subscribe with `since` is one step too**: the live receiver and the
//!   replay are taken together, so a message is either replayed or delivered
//!   live, never both and never neither.
//! - **Interest**: a relay that spans nodes follows the registry's interest
//!   (topics and patterns with local subscribers) and asks the other nodes
//!   only for those.
//!
//! Implementations: [`memory`] (one node; history in memory) and [`redis`]
//! (a cluster through Redis pub/sub, classic or sharded ([`sharded`]); the
//! bytes between nodes are in [`wire`], what both Redis modes share in
//! [`link`]). With history, the Redis relay keeps it in Redis
//! ([`shared_history`], over the store of [`streams`]): publish and append
//! are one Lua script, and a subscribe's replay is read from Redis.

use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use starling_protocol::{Filter, Payload, Topic};

use crate::history::{Excerpt, Position, Recovery, Resume};
use crate::registry::DeliveryReceiver;

pub(crate) mod conn;
pub(crate) mod link;
pub(crate) mod memory;
pub(crate) mod presence_nodes;
pub(crate) mod presence_scripts;
pub(crate) mod redis;
pub(crate) mod sharded;
pub(crate) mod shared_history;
pub(crate) mod shared_presence;
pub(crate) mod streams;
pub(crate) mod wire;

/// What a successful publish returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// The offset the message got, when its topic keeps history.
    pub offset: Option<u64>,
    /// The epoch of `offset`.
    pub epoch: Option<Arc<str>>,
    /// How many local subscriptions it reached.
    pub subscribers: usize,
}

impl Published {
    /// A message on a topic without history that reached `subscribers`.
    pub(crate) fn unnumbered(subscribers: usize) -> Self {
        Published {
            offset: None,
            epoch: None,
            subscribers,
        }
    }

    /// Where the message stands in its topic's history.
    pub(crate) fn position(&self) -> Option<Position> {
        Some(Position {
            offset: self.offset?,
            epoch: self.epoch.clone()?,
        })
    }
}

/// The history store (Redis) did not answer in time, or failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the history store is unavailable: {0}")]
pub struct StoreUnavailable(pub(crate) String);

/// A relay's answer: at once (memory), or once a shared store has answered.
pub(crate) enum Answer<T> {
    /// Here it is.
    Now(T),
    /// It comes when the store answers. Requests to the store are sent in
    /// the order the answers were made, whatever order they are awaited in.
    Later(Pin<Box<dyn Future<Output = Result<T, StoreUnavailable>> + Send>>),
}

impl<T> Answer<T> {
    /// Waits for the answer.
    pub(crate) async fn get(self) -> Result<T, StoreUnavailable> {
        match self {
            Answer::Now(value) => Ok(value),
            Answer::Later(later) => later.await,
        }
    }
}

impl<T> fmt::Debug for Answer<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Answer::Now(_) => "Answer::Now",
            Answer::Later(_) => "Answer::Later",
        })
    }
}

/// Why a relay could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The Redis URL does not parse.
    #[error("invalid redis url: {0}")]
    InvalidUrl(#[source] ::redis::RedisError),
    /// A TLS file for `rediss://` cannot be read.
    #[error("{path}: {source}")]
    TlsFile {
        /// The file.
        path: PathBuf,
        /// Why it cannot be read.
        #[source]
        source: std::io::Error,
    },
    /// The TLS files for `rediss://` cannot be used (not PEM, a key that
    /// does not fit).
    #[error("cannot set up TLS for redis: {0}")]
    Tls(#[source] ::redis::RedisError),
    /// TLS files are given for a URL that is not `rediss://`.
    #[error("--redis-ca and --redis-client-cert need a rediss:// URL")]
    TlsWithoutRediss,
}

/// The files of a `rediss://` link: roots and a client certificate, PEM.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct RedisTlsFiles<'a> {
    /// Root certificates (default: the system's).
    pub(crate) ca: Option<&'a Path>,
    /// A client certificate and its key.
    pub(crate) client: Option<(&'a Path, &'a Path)>,
}

/// The state of the link to the other nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LinkState {
    /// A single node: there is no link.
    Local,
    /// Connected to the other nodes.
    Up,
    /// Not connected: local clients are still served.
    Down,
}

/// How published messages reach subscribers; see the module documentation
/// for the contract every implementation keeps.
pub(crate) trait Relay: Send + Sync + fmt::Debug {
    /// Publishes `payload` on `topic` (by `from`, a token's `sub`, when auth
    /// is on): gives it an offset and retains it when the topic keeps
    /// history, delivers it to this node's subscribers and sends it to the
    /// other nodes, as one step per topic.
    fn publish(&self, topic: Topic, payload: Payload, from: Option<Arc<str>>) -> Answer<Published>;

    /// Subscribes to `filter` (which becomes the registry's shared copy).
    /// On a topic that keeps history, also returns where the history stands
    /// and, for a client resuming at `resume`, what to replay, taken
    /// together with the live receiver.
    fn subscribe(
        &self,
        filter: &mut Filter,
        resume: Option<&Resume>,
    ) -> (DeliveryReceiver, Answer<Recovery>);

    /// Starts following interest and receiving from other nodes. Called once,
    /// within the runtime, when the broker starts serving.
    fn start(&self) {}

    /// Stops receiving from and sending to the other nodes.
    fn stop(&self) {}

    /// Where the history of the topic `filter` stands (`None`: a pattern,
    /// or a topic that keeps no history).
    fn position(&self, filter: &Filter) -> Answer<Option<Position>> {
        let _ = filter;
        Answer::Now(None)
    }

    /// Up to `limit` retained messages of `topic`: the latest, or with
    /// `from`, the first after that position (see [`HistoryStore::read`]).
    /// `None` when the topic keeps no history.
    ///
    /// [`HistoryStore::read`]: crate::history::HistoryStore::read
    fn history(
        &self,
        topic: &Topic,
        from: Option<&Resume>,
        limit: usize,
    ) -> Answer<Option<Excerpt>> {
        let _ = (topic, from, limit);
        Answer::Now(None)
    }

    /// The state of the link to the other nodes.
    fn state(&self) -> LinkState {
        LinkState::Local
    }
}
