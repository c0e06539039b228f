//! Presence: who is subscribed to a topic under a `--presence` prefix.
//!
//! A member is an identity (a token's `sub`, the `name` given in
//! `subscribe`, or a name the broker gives the connection); its sessions
//! (subscribed connections) are folded into one member, whose `info` is
//! that of its newest session. A member's first session announces `join`
//! to the topic's subscribers; its last session's end starts the grace
//! period (`--presence-grace-ms`), after which `leave` is announced unless a
//! session came back meanwhile. Both go through the topic's ring, in order
//! with its messages, encoded once for all its subscribers.
//!
//! In a cluster ([`SharedPresence`]), the node keeps only its own sessions
//! here and writes its share of each member to Redis, where scripts decide
//! joins and leaves for the whole cluster and announce them on the topic's
//! channel; the grace period is timed by the node that ended the member's
//! last session (or, when that node died, by the one that reaped it).
//!
//! A session is held by a [`Session`] guard: dropping it (unsubscribe, the
//! connection's end, a refreshed token that no longer allows the topic)
//! ends the session, on every exit path.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use dashmap::DashMap;
use starling_protocol::{Envelope, Member, Payload, Topic, Value};
use tokio::task::JoinHandle;

use crate::delivery::Delivery;
use crate::metrics::Metrics;
use crate::registry::TopicRegistry;
use crate::relay::shared_presence::{InfoChange, PresenceTask, Share, SharedPresence};
use crate::relay::{Answer, StoreUnavailable};
use crate::sync::lock;

/// The longest `name`, in bytes.
pub(crate) const MAX_NAME_BYTES: usize = 64;
/// The largest `info`, as JSON text.
pub(crate) const MAX_INFO_BYTES: usize = 1024;
/// The most members a `presence` answer lists.
pub(crate) const MAX_LISTED: usize = 1_000;

/// Why a session's `name` or `info` is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PresenceError {
    /// `name` is empty or too long.
    #[error("name must be 1 to {MAX_NAME_BYTES} bytes")]
    Name,
    /// `info` is not an object, or is too large.
    #[error("info must be an object of at most {MAX_INFO_BYTES} bytes as JSON")]
    Info,
}

/// Checks a session's `name` and `info`.
pub(crate) fn check(name: Option<&str>, info: Option<&Payload>) -> Result<(), PresenceError> {
    if name.is_some_and(|n| n.is_empty() || n.len() > MAX_NAME_BYTES) {
        return Err(PresenceError::Name);
    }
    if let Some(info) = info
        && (info.weight() > 4 * MAX_INFO_BYTES
            || info.to_json_string().len() > MAX_INFO_BYTES
            || !matches!(info.to_value(), Value::Map(_)))
    {
        return Err(PresenceError::Info);
    }
    Ok(())
}

/// One member of one topic.
#[derive(Debug)]
struct Entry {
    /// Its sessions, oldest first: (session id, info).
    sessions: Vec<(u64, Option<Payload>)>,
    /// Bumped when its last session ends: a leave timer fires only for the
    /// generation it was started in.
    generation: u64,
}

/// The presence of every topic under the prefixes, on this node.
#[derive(Debug)]
pub(crate) struct Presence {
    prefixes: Vec<String>,
    /// Topics kept as counts only: no member list, no events.
    counts_only: Vec<String>,
    grace: Duration,
    rooms: DashMap<Topic, HashMap<Arc<str>, Entry>>,
    registry: Arc<TopicRegistry>,
    metrics: Arc<Metrics>,
    node: Arc<str>,
    next_session: AtomicU64,
    /// In a cluster: the store in Redis, its task (until started), and the
    /// task running.
    shared: Option<SharedPresence>,
    task: Mutex<Option<PresenceTask>>,
    running: Mutex<Option<JoinHandle<()>>>,
}

/// A topic's members: how many, and (unless the topic keeps counts only)
/// some of them.
pub(crate) type Members = (u64, Option<Vec<Member>>);

impl Presence {
    /// Presence on topics starting with one of `prefixes` (and, as counts
    /// only, `counts_only`), with leaves announced `grace` after a member's
    /// last session ended; in a cluster, kept in Redis through `store`.
    pub(crate) fn new(
        prefixes: Vec<String>,
        counts_only: Vec<String>,
        grace: Duration,
        registry: Arc<TopicRegistry>,
        metrics: Arc<Metrics>,
        node: Arc<str>,
        store: Option<(SharedPresence, PresenceTask)>,
    ) -> Arc<Self> {
        let (shared, task) = store.unzip();
        Arc::new(Presence {
            shared,
            task: Mutex::new(task),
            running: Mutex::new(None),
            prefixes,
            counts_only,
            grace,
            rooms: DashMap::new(),
            registry,
            metrics,
            node,
            next_session: AtomicU64::new(1),
        })
    }

    /// Whether `topic` keeps presence.
    pub(crate) fn covers(&self, topic: &Topic) -> bool {
        !topic.is_reserved() && (under(&self.prefixes, topic) || under(&self.counts_only, topic))
    }

    /// Whether `topic` keeps presence as counts only.
    fn counts_only(&self, topic: &Topic) -> bool {
        under(&self.counts_only, topic)
    }

    /// Starts a session of member `name` on `topic` (which it covers); the
    /// member joins when it is its first. The session ends with the guard.
    pub(crate) fn enter(
        self: &Arc<Self>,
        topic: Topic,
        name: Arc<str>,
        info: Option<Payload>,
    ) -> Session {
        let id = self.next_session.fetch_add(1, Ordering::Relaxed);
        let session = Session {
            presence: Arc::downgrade(self),
            topic: topic.clone(),
            name: name.clone(),
            id,
        };
        if let Some(shared) = &self.shared {
            self.enter_shared(shared, topic, name, id, info);
            return session;
        }
        let joined = {
            let mut room = self.rooms.entry(topic.clone()).or_default();
            let entry = room.entry(name.clone()).or_insert_with(|| Entry {
                sessions: Vec::new(),
                generation: 0,
            });
            // A member in its grace period comes back silently.
            let new = entry.sessions.is_empty() && entry.generation == 0;
            if entry.sessions.is_empty() && entry.generation > 0 {
                entry.generation += 1;
            }
            entry.sessions.push((id, info.clone()));
            new
        };
        self.metrics.presence_sessions.inc();
        if joined {
            self.metrics.presence_members.inc();
            self.announce(Envelope::Join {
                topic,
                member: Member {
                    name,
                    sessions: None,
                    info,
                },
            });
        }
        session
    }

    /// [`Presence::enter`] in a cluster: the node's share of the member is
    /// written to Redis, which decides whether it joins.
    fn enter_shared(
        &self,
        shared: &SharedPresence,
        topic: Topic,
        name: Arc<str>,
        id: u64,
        info: Option<Payload>,
    ) {
        let index = !self.rooms.contains_key(&topic);
        let mut room = self.rooms.entry(topic.clone()).or_default();
        let entry = room.entry(name.clone()).or_insert_with(|| Entry {
            sessions: Vec::new(),
            generation: 0,
        });
        if entry.sessions.is_empty() {
            self.metrics.presence_members.inc();
        }
        entry.sessions.push((id, info));
        self.metrics.presence_sessions.inc();
        let share = self.share(&topic, &name, entry, true);
        // Under the room's lock: a member's writes are queued in order.
        shared.share(share, index);
    }

    /// This node's share of member `name` of `topic` (`new`: a session
    /// was just added, whose info becomes the member's).
    fn share(&self, topic: &Topic, name: &Arc<str>, entry: &Entry, new: bool) -> Share {
        let newest = entry.sessions.last().and_then(|(_, info)| info.as_ref());
        let info = match (new, newest) {
            (false, _) => InfoChange::Keep,
            (true, None) => InfoChange::Clear,
            (true, Some(info)) => InfoChange::Set(info.to_json_string()),
        };
        let join = (new && !self.counts_only(topic)).then(|| Envelope::Join {
            topic: topic.clone(),
            member: Member {
                name: name.clone(),
                sessions: None,
                info: newest.cloned(),
            },
        });
        Share {
            topic: topic.clone(),
            name: name.clone(),
            sessions: entry.sessions.len(),
            info,
            join,
        }
    }

    /// [`Presence::exit`] in a cluster.
    fn exit_shared(&self, shared: &SharedPresence, topic: &Topic, name: &Arc<str>, id: u64) {
        let Some(mut room) = self.rooms.get_mut(topic) else {
            return;
        };
        let Some(entry) = room.get_mut(name) else {
            return;
        };
        let before = entry.sessions.len();
        entry.sessions.retain(|(session, _)| *session != id);
        if entry.sessions.len() == before {
            return;
        }
        self.metrics.presence_sessions.dec();
        let share = self.share(topic, name, entry, false);
        if entry.sessions.is_empty() {
            room.remove(name);
            self.metrics.presence_members.dec();
        }
        shared.share(share, false);
        if room.is_empty() {
            drop(room);
            if self
                .rooms
                .remove_if(topic, |_, room| room.is_empty())
                .is_some()
            {
                shared.unindex(topic.clone());
            }
        }
    }

    /// Every session this node holds, as shares, for the store to write
    /// anew.
    fn snapshot(&self) -> Vec<Share> {
        let mut shares = Vec::new();
        for room in self.rooms.iter() {
            for (name, entry) in room.value() {
                if !entry.sessions.is_empty() {
                    shares.push(self.share(room.key(), name, entry, true));
                }
            }
        }
        shares
    }

    /// Starts the cluster store's task (heartbeats, writes, reaping).
    pub(crate) fn start(self: &Arc<Self>) {
        let Some(task) = lock(&self.task).take() else {
            return;
        };
        let presence = Arc::downgrade(self);
        let snapshot = Box::new(move || {
            presence
                .upgrade()
                .map(|presence| presence.snapshot())
                .unwrap_or_default()
        });
        *lock(&self.running) = Some(tokio::spawn(task.run(snapshot)));
    }

    /// Says goodbye to the cluster: once this node's last writes are in
    /// Redis, its alive key goes, so that the other nodes time the grace
    /// periods of its members at once instead of after the heartbeat
    /// timeout. Then stops the task.
    pub(crate) async fn stop(&self) {
        if let Some(shared) = &self.shared {
            shared.goodbye().await;
        }
        if let Some(task) = lock(&self.running).take() {
            task.abort();
        }
    }

    /// Ends session `id` of `name` on `topic`; the member's last session
    /// starts its grace period.
    fn exit(self: &Arc<Self>, topic: &Topic, name: &Arc<str>, id: u64) {
        if let Some(shared) = &self.shared {
            return self.exit_shared(shared, topic, name, id);
        }
        let last = {
            let Some(mut room) = self.rooms.get_mut(topic) else {
                return;
            };
            let Some(entry) = room.get_mut(name) else {
                return;
            };
            entry.sessions.retain(|(session, _)| *session != id);
            if !entry.sessions.is_empty() {
                None
            } else {
                entry.generation += 1;
                Some(entry.generation)
            }
        };
        self.metrics.presence_sessions.dec();
        let Some(generation) = last else {
            return;
        };
        if self.grace.is_zero() {
            self.expire(topic, name, generation);
            return;
        }
        let presence = Arc::downgrade(self);
        let (topic, name, grace) = (topic.clone(), name.clone(), self.grace);
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            if let Some(presence) = presence.upgrade() {
                presence.expire(&topic, &name, generation);
            }
        });
    }

    /// The grace period of `name` on `topic` that began at `generation` is
    /// over: it leaves, unless a session came back.
    fn expire(&self, topic: &Topic, name: &Arc<str>, generation: u64) {
        let left = {
            let Some(mut room) = self.rooms.get_mut(topic) else {
                return;
            };
            let gone = room
                .get(name)
                .is_some_and(|e| e.sessions.is_empty() && e.generation == generation);
            if gone {
                room.remove(name);
            }
            gone
        };
        if !left {
            return;
        }
        self.rooms.remove_if(topic, |_, room| room.is_empty());
        self.metrics.presence_members.dec();
        self.announce(Envelope::Leave {
            topic: topic.clone(),
            member: Member {
                name: name.clone(),
                sessions: None,
                info: None,
            },
        });
    }

    /// Sends a `join` or `leave` to the topic's subscribers, in order with
    /// its messages (not on a topic kept as counts only).
    fn announce(&self, event: Envelope) {
        let (Envelope::Join { topic, .. } | Envelope::Leave { topic, .. }) = &event else {
            return;
        };
        if self.counts_only(topic) {
            return;
        }
        self.metrics.presence_events.inc();
        let delivery = Delivery::event(topic.clone(), event.clone(), self.node.clone());
        self.registry.publish_to_topic(delivery);
    }

    /// The members of `topic`: how many, and up to [`MAX_LISTED`] of them
    /// with their sessions and the `info` of the newest (`None` on a topic
    /// kept as counts only).
    pub(crate) fn members(&self, topic: &Topic) -> Answer<Members> {
        let Some(shared) = &self.shared else {
            return Answer::Now(self.local_members(topic));
        };
        let counts_only = self.counts_only(topic);
        let max = if counts_only { 0 } else { MAX_LISTED };
        let listing = shared.members(topic.clone(), max);
        Answer::Later(Box::pin(async move {
            let listing = listing.await?;
            Ok::<_, StoreUnavailable>((listing.count, (!counts_only).then_some(listing.members)))
        }))
    }

    /// The members of `topic` on this single node.
    fn local_members(&self, topic: &Topic) -> Members {
        let Some(room) = self.rooms.get(topic) else {
            return (0, (!self.counts_only(topic)).then(Vec::new));
        };
        if self.counts_only(topic) {
            return (room.len() as u64, None);
        }
        // A member in its grace period is listed (with no session) until
        // its leave is announced, as the events tell it.
        let count = room.len() as u64;
        let members = room
            .iter()
            .take(MAX_LISTED)
            .map(|(name, entry)| Member {
                name: name.clone(),
                sessions: Some(entry.sessions.len() as u64),
                info: entry.sessions.last().and_then(|(_, info)| info.clone()),
            })
            .collect();
        (count, Some(members))
    }
}

/// Whether `topic` starts with one of `prefixes`.
fn under(prefixes: &[String], topic: &Topic) -> bool {
    prefixes
        .iter()
        .any(|prefix| topic.as_str().starts_with(prefix.as_str()))
}

/// A session on a presence topic; dropping it ends the session.
#[derive(Debug)]
pub(crate) struct Session {
    presence: Weak<Presence>,
    topic: Topic,
    name: Arc<str>,
    id: u64,
}

impl Drop for Session {
    fn drop(&mut self) {
        if let Some(presence) = self.presence.upgrade() {
            presence.exit(&self.topic, &self.name, self.id);
        }
    }
}
