//! Presence in Redis, for a cluster: every node answers the same members,
//! and each join and leave is announced once, by a Lua script
//! ([`presence_scripts`](super::presence_scripts)) that decides it and
//! publishes the event on the topic's channel, from which every node with
//! subscribers to the topic delivers it.
//!
//! A node writes its own share of a member (how many sessions it holds, as
//! an absolute count, so that a write can be repeated) whenever that share
//! changes. When the member's last session in the cluster ends, the node
//! that ended it times the grace period, then runs the leave script, which
//! leaves the member only if no session came back meanwhile.
//!
//! Nodes prove they live with a key `<prefix>:alive:<node>` that expires
//! [`ALIVE_TTL`] after its last refresh (every [`HEARTBEAT`]), and list
//! themselves in `<prefix>:nodes`. Each node keeps the set of topics where
//! it holds sessions or grace timers, `<prefix>:pt:<node>`. Every
//! heartbeat, each node looks for listed nodes whose key expired; one of the
//! survivors (under a lock, `<prefix>:reap:<node>`) removes the dead node's
//! sessions topic by topic, and times the grace periods that start (or that
//! the dead node was timing). So a member of a killed node leaves within
//! `--presence-grace-ms` plus [`ALIVE_TTL`] plus one heartbeat.
//!
//! A node whose writes failed (Redis unreachable, its queue full), or whose
//! own alive key expired (it was presumed dead), recovers: it removes its
//! share as if it had died, then writes every session it holds again.
//! Members that are still there come back within their grace period and
//! nothing is announced.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::future::join_all;
use redis::Value;
use starling_protocol::{Envelope, Member, Topic};
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use crate::interest::InterestQueue;
use crate::metrics::Metrics;
use crate::relay::StoreUnavailable;
use crate::relay::conn::{Conn, Connector, number};
use crate::relay::link::{Backoff, HEARTBEAT, REDIS_TIMEOUT, RELAY_BATCH};
use crate::relay::presence_scripts::{EXPIRE, Keys, Listing, MEMBERS, SET, field, parse_listing};
use crate::relay::wire::{self, Names};

/// How long a node's alive key outlives its last heartbeat: past it, the
/// other nodes take the node for dead.
pub(crate) const ALIVE_TTL: Duration = Duration::from_secs(3);
/// How many requests wait for Redis before new ones are dropped (and the
/// node recovers its presence from what it holds).
const QUEUE: usize = 65_536;

/// What becomes of a member's `info` with a write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum InfoChange {
    /// Left as it is.
    Keep,
    /// A new session without `info`.
    Clear,
    /// A new session's `info`, as JSON.
    Set(String),
}

/// A node's share of one member of one topic.
#[derive(Debug, Clone)]
pub(crate) struct Share {
    pub(crate) topic: Topic,
    pub(crate) name: Arc<str>,
    /// The member's sessions on this node.
    pub(crate) sessions: usize,
    pub(crate) info: InfoChange,
    /// The `join` to announce if the member is new to the cluster (`None`
    /// on a topic kept as counts only).
    pub(crate) join: Option<Envelope>,
}

enum Request {
    /// A node's share changed; with `index`, it is its first on the topic.
    Share { share: Share, index: bool },
    /// This node holds no session on the topic any more.
    Unindex(Topic),
    Members {
        topic: Topic,
        max: usize,
        reply: oneshot::Sender<Result<Listing, StoreUnavailable>>,
    },
    /// The node is stopping: once the writes before are done, it stops
    /// proving it lives, and the others reap it at once.
    Goodbye(oneshot::Sender<()>),
}

/// A grace period that has run out.
pub(super) struct Expiry {
    topic: Topic,
    name: Arc<str>,
    generation: u64,
}

/// What every session this node holds looks like now, for a recovery.
pub(crate) type Snapshot = Box<dyn Fn() -> Vec<Share> + Send + Sync>;

/// The handle through which a node writes and reads presence in Redis.
#[derive(Debug, Clone)]
pub(crate) struct SharedPresence {
    queue: mpsc::Sender<Request>,
    /// Set when a write could not be queued: the task recovers.
    lost: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
}

/// The task's half ([`PresenceTask::run`]).
pub(crate) struct PresenceTask {
    queue: mpsc::Receiver<Request>,
    pub(super) lost: Arc<AtomicBool>,
    pub(super) connector: Connector,
    pub(super) keys: Keys,
    pub(super) node: Arc<str>,
    pub(super) grace: Duration,
    /// Topics whose presence is counts only: no leave is announced.
    pub(super) counts_only: Vec<String>,
    /// The interest the node's Redis link follows.
    pub(super) interest: Arc<InterestQueue>,
    pub(super) metrics: Arc<Metrics>,
}

impl std::fmt::Debug for PresenceTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PresenceTask")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

/// What the presence store of a node needs to know.
pub(crate) struct StoreSetup {
    pub(crate) connector: Connector,
    pub(crate) names: Names,
    pub(crate) node: Arc<str>,
    /// How long after its last session a member leaves.
    pub(crate) grace: Duration,
    /// Prefixes of the topics kept as counts only.
    pub(crate) counts_only: Vec<String>,
    /// The interest the node's Redis link follows.
    pub(crate) interest: Arc<InterestQueue>,
    pub(crate) metrics: Arc<Metrics>,
}

/// A store and the task that serves it.
pub(crate) fn shared_presence(setup: StoreSetup) -> (SharedPresence, PresenceTask) {
    let StoreSetup {
        connector,
        names,
        node,
        grace,
        counts_only,
        interest,
        metrics,
    } = setup;
    let (sender, queue) = mpsc::channel(QUEUE);
    let lost = Arc::new(AtomicBool::new(false));
    let sharded = matches!(connector, Connector::Cluster(_));
    (
        SharedPresence {
            queue: sender,
            lost: lost.clone(),
            metrics: metrics.clone(),
        },
        PresenceTask {
            queue,
            lost,
            connector,
            keys: Keys { names, sharded },
            node,
            grace,
            counts_only,
            interest,
            metrics,
        },
    )
}

impl SharedPresence {
    /// Writes this node's share of a member (`index`: the node's first
    /// member on the topic). Never waits.
    pub(crate) fn share(&self, share: Share, index: bool) {
        self.send(Request::Share { share, index });
    }

    /// Says that this node holds no member of `topic` any more.
    pub(crate) fn unindex(&self, topic: Topic) {
        self.send(Request::Unindex(topic));
    }

    fn send(&self, request: Request) {
        if self.queue.try_send(request).is_err() {
            self.lost.store(true, Ordering::Relaxed);
        }
    }

    /// Says goodbye (see [`Request::Goodbye`]), waiting at most
    /// [`REDIS_TIMEOUT`].
    pub(crate) async fn goodbye(&self) {
        let (reply, done) = oneshot::channel();
        if self.queue.try_send(Request::Goodbye(reply)).is_ok() {
            let _ = tokio::time::timeout(REDIS_TIMEOUT, done).await;
        }
    }

    /// The members of `topic`: the count, and up to `max` of them.
    pub(crate) fn members(
        &self,
        topic: Topic,
        max: usize,
    ) -> impl Future<Output = Result<Listing, StoreUnavailable>> + Send + 'static {
        let (reply, answer) = oneshot::channel();
        let sent = self
            .queue
            .try_send(Request::Members { topic, max, reply })
            .is_ok();
        let metrics = self.metrics.clone();
        async move {
            let result = if sent {
                answer.await.unwrap_or_else(|_| {
                    Err(StoreUnavailable("no answer from redis in time".into()))
                })
            } else {
                Err(StoreUnavailable("too many requests wait for redis".into()))
            };
            if result.is_err() {
                metrics.presence_store_failures.inc();
            }
            result
        }
    }
}

/// Where the task stands with Redis.
pub(super) struct Link {
    pub(super) conn: Option<Conn>,
    pub(super) backoff: Backoff,
    pub(super) retry_at: tokio::time::Instant,
    /// The node's presence in Redis may be wrong: recover it.
    pub(super) recover: bool,
    /// Grace timers running, per topic.
    pub(super) timers: HashMap<Topic, usize>,
    /// Topics to take out of the node's index once their timers ran.
    pub(super) unindex_later: HashSet<Topic>,
    /// The presence data in Redis the node last saw (see
    /// [`PresenceTask::same_data`]).
    pub(super) data: Option<String>,
}

impl PresenceTask {
    /// Serves requests until every handle is gone, heartbeats, and reaps
    /// dead nodes. `snapshot` gives every session the node holds, for a
    /// recovery.
    pub(crate) async fn run(mut self, snapshot: Snapshot) {
        let (expired, mut expiries) = mpsc::unbounded_channel::<Expiry>();
        let mut heartbeat = tokio::time::interval(HEARTBEAT);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut link = Link {
            conn: None,
            backoff: Backoff::default(),
            retry_at: tokio::time::Instant::now(),
            // The node's last run (same id, no goodbye) may have left some.
            recover: true,
            timers: HashMap::new(),
            unindex_later: HashSet::new(),
            data: None,
        };
        let mut batch = Vec::with_capacity(RELAY_BATCH);
        let mut due = Vec::new();
        loop {
            tokio::select! {
                n = self.queue.recv_many(&mut batch, RELAY_BATCH) => {
                    if n == 0 {
                        break;
                    }
                }
                Some(expiry) = expiries.recv() => {
                    due.push(expiry);
                    while let Ok(expiry) = expiries.try_recv() {
                        due.push(expiry);
                    }
                }
                _ = heartbeat.tick() => {
                    if self.connect(&mut link).await {
                        self.heartbeat(&mut link, &expired, &snapshot).await;
                    }
                    continue;
                }
            }
            if !self.connect(&mut link).await {
                for request in batch.drain(..) {
                    if let Request::Members { reply, .. } = request {
                        let _ = reply.send(Err(StoreUnavailable("redis is unreachable".into())));
                    }
                }
                // Their timers ran: a recovery times them anew.
                for expiry in due.drain(..) {
                    self.timer_done(&mut link, &expiry.topic).await;
                }
                link.recover = true;
                continue;
            }
            let joins = batch
                .iter()
                .any(|r| matches!(r, Request::Share { share, .. } if share.join.is_some()));
            if joins {
                // A session's own node follows the topic in Redis before
                // its join is announced there.
                self.interest.settled(REDIS_TIMEOUT).await;
            }
            self.serve(&mut link, &mut batch, &expired).await;
            self.expire(&mut link, &mut due).await;
        }
    }

    /// Makes sure there is a connection; `false` when Redis cannot be
    /// reached (tries again after a back-off).
    async fn connect(&self, link: &mut Link) -> bool {
        if link.conn.is_some() {
            return true;
        }
        if tokio::time::Instant::now() < link.retry_at {
            return false;
        }
        match self.connector.connect().await {
            Ok(conn) => {
                if link.backoff.failures() > 0 {
                    info!("presence store reachable again");
                }
                link.backoff.succeeded();
                link.conn = Some(conn);
                link.recover = true;
                true
            }
            Err(error) => {
                if link.backoff.failures() == 0 {
                    warn!(%error, "presence store (redis) unreachable");
                }
                link.retry_at = tokio::time::Instant::now() + link.backoff.failed();
                false
            }
        }
    }

    /// Runs commands on the link's connection, all at once (pipelined, in
    /// order), each answered within [`REDIS_TIMEOUT`]. A command that fails
    /// marks the node's presence for recovery; when they time out, the
    /// connection is made anew.
    pub(super) async fn run_all(
        &self,
        link: &mut Link,
        commands: Vec<redis::Cmd>,
    ) -> Vec<Option<Value>> {
        let Some(conn) = link.conn.clone() else {
            link.recover = true;
            return commands.iter().map(|_| None).collect();
        };
        let count = commands.len();
        self.metrics.presence_store_requests.inc_by(count as u64);
        let calls = commands.into_iter().map(|cmd| {
            let mut conn = conn.clone();
            async move { conn.invoke(cmd).await.ok() }
        });
        match tokio::time::timeout(REDIS_TIMEOUT, join_all(calls)).await {
            Ok(values) => {
                let failed = values.iter().filter(|v| v.is_none()).count();
                if failed > 0 {
                    self.metrics.presence_store_failures.inc_by(failed as u64);
                    link.recover = true;
                }
                values
            }
            Err(_) => {
                self.metrics.presence_store_failures.inc_by(count as u64);
                link.conn = None;
                link.recover = true;
                (0..count).map(|_| None).collect()
            }
        }
    }

    /// Serves a batch of requests.
    async fn serve(&self, link: &mut Link, requests: &mut Vec<Request>, expired: &Timers) {
        let mut commands = Vec::with_capacity(requests.len());
        let mut replies = Vec::new();
        let mut shared = Vec::new();
        let mut goodbyes = Vec::new();
        for request in requests.drain(..) {
            match request {
                Request::Share { share, index } => {
                    if index {
                        link.unindex_later.remove(&share.topic);
                        commands.push(self.index(&share.topic, true));
                        replies.push(None);
                    }
                    commands.push(self.share_command(&share));
                    replies.push(None);
                    shared.push((commands.len() - 1, share));
                }
                Request::Unindex(topic) => {
                    if link.timers.contains_key(&topic) {
                        link.unindex_later.insert(topic);
                    } else {
                        commands.push(self.index(&topic, false));
                        replies.push(None);
                    }
                }
                Request::Members { topic, max, reply } => {
                    let [members, _, info, _] = self.keys.topic(&topic);
                    let mut cmd = redis::cmd("EVAL");
                    cmd.arg(MEMBERS).arg(2).arg(members).arg(info).arg(max);
                    commands.push(cmd);
                    replies.push(Some(reply));
                }
                Request::Goodbye(reply) => {
                    let mut cmd = redis::cmd("DEL");
                    cmd.arg(self.keys.node("alive", &self.node));
                    commands.push(cmd);
                    replies.push(None);
                    goodbyes.push(reply);
                }
            }
        }
        let values = self.run_all(link, commands).await;
        for (i, share) in shared {
            let generation = values[i].as_ref().and_then(number).unwrap_or(0);
            if generation > 0 {
                self.time(link, expired, share.topic, share.name, generation);
            }
        }
        for (value, reply) in values.into_iter().zip(replies) {
            if let Some(reply) = reply {
                let listing = value
                    .as_ref()
                    .and_then(parse_listing)
                    .ok_or_else(|| StoreUnavailable("no answer from redis".into()));
                let _ = reply.send(listing);
            }
        }
        for goodbye in goodbyes {
            let _ = goodbye.send(());
        }
    }

    /// Adds `topic` to (or takes it out of) the node's index.
    pub(super) fn index(&self, topic: &Topic, add: bool) -> redis::Cmd {
        let mut cmd = redis::cmd(if add { "SADD" } else { "SREM" });
        cmd.arg(self.keys.node("pt", &self.node))
            .arg(topic.as_str());
        cmd
    }

    pub(super) fn share_command(&self, share: &Share) -> redis::Cmd {
        let info = match &share.info {
            InfoChange::Keep => "",
            InfoChange::Clear => "-",
            InfoChange::Set(json) => json,
        };
        let join = share.join.as_ref().map(wire::event).unwrap_or_default();
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(SET)
            .arg(4)
            .arg(&self.keys.topic(&share.topic)[..])
            .arg(format!("{}{}", field(&self.node), share.name))
            .arg(share.name.as_ref())
            .arg(share.sessions)
            .arg(info)
            .arg(join)
            .arg(self.keys.names.channel(share.topic.as_str()))
            .arg(self.keys.publish());
        cmd
    }

    /// Starts the grace timer of `name` on `topic` at `generation`.
    pub(super) fn time(
        &self,
        link: &mut Link,
        expired: &Timers,
        topic: Topic,
        name: Arc<str>,
        generation: u64,
    ) {
        *link.timers.entry(topic.clone()).or_default() += 1;
        let expired = expired.clone();
        let grace = self.grace;
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            let _ = expired.send(Expiry {
                topic,
                name,
                generation,
            });
        });
    }

    /// A grace timer of `topic` has run.
    async fn timer_done(&self, link: &mut Link, topic: &Topic) {
        let Some(running) = link.timers.get_mut(topic) else {
            return;
        };
        *running -= 1;
        if *running == 0 {
            link.timers.remove(topic);
            if link.unindex_later.remove(topic) {
                let command = self.index(topic, false);
                self.run_all(link, vec![command]).await;
            }
        }
    }

    /// Ends the grace periods that ran out.
    async fn expire(&self, link: &mut Link, due: &mut Vec<Expiry>) {
        let expiries = std::mem::take(due);
        if expiries.is_empty() {
            return;
        }
        let commands = expiries
            .iter()
            .map(|expiry| {
                let leave = (!self.counts_only(&expiry.topic)).then(|| {
                    wire::event(&Envelope::Leave {
                        topic: expiry.topic.clone(),
                        member: Member {
                            name: expiry.name.clone(),
                            sessions: None,
                            info: None,
                        },
                    })
                });
                let mut cmd = redis::cmd("EVAL");
                cmd.arg(EXPIRE)
                    .arg(4)
                    .arg(&self.keys.topic(&expiry.topic)[..])
                    .arg(format!("{}{}", field(&self.node), expiry.name))
                    .arg(expiry.name.as_ref())
                    .arg(expiry.generation)
                    .arg(leave.unwrap_or_default())
                    .arg(self.keys.names.channel(expiry.topic.as_str()))
                    .arg(self.keys.publish());
                cmd
            })
            .collect();
        self.run_all(link, commands).await;
        for expiry in &expiries {
            self.timer_done(link, &expiry.topic).await;
        }
    }

    fn counts_only(&self, topic: &Topic) -> bool {
        self.counts_only
            .iter()
            .any(|prefix| topic.as_str().starts_with(prefix.as_str()))
    }
}

/// Where grace timers send what ran out.
pub(super) type Timers = mpsc::UnboundedSender<Expiry>;
