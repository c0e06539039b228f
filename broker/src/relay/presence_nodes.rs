//! The lives of nodes, for presence in Redis (see [`shared_presence`]):
//! heartbeats, reaping the share of a node that died, and a node's
//! recovery of its own share.
//!
//! [`shared_presence`]: super::shared_presence

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::Duration;

use redis::Value;
use starling_protocol::Topic;
use tracing::info;

use crate::history::new_epoch;
use crate::relay::conn::{number, text};
use crate::relay::link::{REDIS_TIMEOUT, RELAY_BATCH};
use crate::relay::presence_scripts::{REAP, field};
use crate::relay::shared_presence::{ALIVE_TTL, Link, PresenceTask, Snapshot, Timers};

/// How long one node may hold the lock to reap a dead node.
const REAP_LOCK: Duration = Duration::from_secs(30);
/// How many topics of a dead node are reaped at once.
const REAP_BATCH: usize = 256;

impl PresenceTask {
    /// Proves the node alive, reaps dead nodes, and recovers the node's
    /// own presence when it may be wrong.
    pub(super) async fn heartbeat(&self, link: &mut Link, expired: &Timers, snapshot: &Snapshot) {
        let mut alive = redis::cmd("SET");
        alive
            .arg(self.keys.node("alive", &self.node))
            .arg(1)
            .arg("PX")
            .arg(ALIVE_TTL.as_millis() as u64)
            .arg("GET");
        let mut listed = redis::cmd("SADD");
        listed.arg(self.keys.nodes()).arg(self.node.as_ref());
        let mut nodes = redis::cmd("SMEMBERS");
        nodes.arg(self.keys.nodes());
        let values = self.run_all(link, vec![alive, listed, nodes]).await;
        if matches!(values[0], Some(Value::Nil)) {
            // Presumed dead (or new): the others may have reaped this node.
            link.recover = true;
        }
        if self.lost.swap(false, Ordering::Relaxed) {
            link.recover = true;
        }
        let others: Vec<String> = values[2]
            .as_ref()
            .map(strings)
            .unwrap_or_default()
            .into_iter()
            .filter(|node| node != self.node.as_ref())
            .collect();
        if !others.is_empty() {
            let checks = others
                .iter()
                .map(|node| {
                    let mut cmd = redis::cmd("EXISTS");
                    cmd.arg(self.keys.node("alive", node));
                    cmd
                })
                .collect();
            let alive = self.run_all(link, checks).await;
            for (node, alive) in others.iter().zip(alive) {
                if alive.as_ref().and_then(number) == Some(0) {
                    self.reap_dead(link, expired, node).await;
                }
            }
        }
        if link.recover && link.conn.is_some() {
            link.recover = false;
            self.recover(link, expired, snapshot).await;
        }
    }

    /// Reaps node `node`, which stopped proving it lives, unless another
    /// node is doing it.
    async fn reap_dead(&self, link: &mut Link, expired: &Timers, node: &str) {
        let mut lock = redis::cmd("SET");
        lock.arg(self.keys.node("reap", node))
            .arg(self.node.as_ref())
            .arg("NX")
            .arg("PX")
            .arg(REAP_LOCK.as_millis() as u64);
        let taken = self.run_all(link, vec![lock]).await;
        if !matches!(taken[0], Some(Value::Okay)) {
            return;
        }
        info!(%node, "a node stopped: its presence is reaped");
        if !self.reap(link, expired, node).await {
            return;
        }
        let mut forget = redis::cmd("SREM");
        forget.arg(self.keys.nodes()).arg(node);
        let mut index = redis::cmd("DEL");
        index.arg(self.keys.node("pt", node));
        let mut unlock = redis::cmd("DEL");
        unlock.arg(self.keys.node("reap", node));
        self.run_all(link, vec![index, forget, unlock]).await;
    }

    /// Removes `node`'s sessions and timers from every topic of its index,
    /// timing the grace periods that start here; `false` when Redis failed.
    async fn reap(&self, link: &mut Link, expired: &Timers, node: &str) -> bool {
        let mut members = redis::cmd("SMEMBERS");
        members.arg(self.keys.node("pt", node));
        let Some(Some(value)) = self.run_all(link, vec![members]).await.pop() else {
            return false;
        };
        let topics: Vec<Topic> = strings(&value)
            .into_iter()
            .filter_map(|topic| Topic::new(&topic).ok())
            .collect();
        let (dead, reaper) = (field(node), field(&self.node));
        for chunk in topics.chunks(REAP_BATCH) {
            let commands = chunk
                .iter()
                .map(|topic| {
                    let mut cmd = redis::cmd("EVAL");
                    cmd.arg(REAP)
                        .arg(4)
                        .arg(&self.keys.topic(topic)[..])
                        .arg(&dead)
                        .arg(&reaper);
                    cmd
                })
                .collect();
            let values = self.run_all(link, commands).await;
            let mut ok = true;
            for (topic, value) in chunk.iter().zip(values) {
                let Some(Value::Array(items)) = value else {
                    ok = false;
                    continue;
                };
                let mut timed = false;
                for pair in items.chunks(2) {
                    if let [name, generation] = pair
                        && let (Some(name), Some(generation)) = (text(name), number(generation))
                    {
                        timed = true;
                        self.time(link, expired, topic.clone(), name.into(), generation);
                    }
                }
                if timed {
                    let command = self.index(topic, true);
                    self.run_all(link, vec![command]).await;
                }
            }
            if !ok {
                return false;
            }
        }
        true
    }

    /// Whether Redis still holds the presence data this node last saw:
    /// a key made once, by the first node to look, tells the data apart.
    async fn same_data(&self, link: &mut Link) -> bool {
        let mine = new_epoch();
        let mut data = redis::cmd("SET");
        data.arg(self.keys.data()).arg(&mine).arg("NX").arg("GET");
        let now = match self.run_all(link, vec![data]).await.pop() {
            // Made just now, by this node.
            Some(Some(Value::Nil)) => mine,
            Some(Some(value)) => match text(&value) {
                Some(now) => now.to_owned(),
                None => return true,
            },
            _ => return true,
        };
        // The node's first look finds whatever is there: nothing was lost.
        let same = link.data.as_ref().is_none_or(|seen| *seen == now);
        link.data = Some(now);
        same
    }

    /// Removes the node's share of every member, then writes what it
    /// holds now: members still here come back within their grace period.
    async fn recover(&self, link: &mut Link, expired: &Timers, snapshot: &Snapshot) {
        if !self.reap(link, expired, &self.node.clone()).await {
            link.recover = true;
            return;
        }
        let mut shares = snapshot();
        if !self.same_data(link).await {
            // Redis lost what it had (a restart without persistence): the
            // members written anew were there all along, announce nothing.
            for share in &mut shares {
                share.join = None;
            }
        }
        if shares.iter().any(|share| share.join.is_some()) {
            // As for any join: the node follows the topics in Redis first.
            self.interest.settled(REDIS_TIMEOUT).await;
        }
        let mut topics = HashSet::new();
        let mut commands = Vec::with_capacity(shares.len());
        for share in &shares {
            if topics.insert(share.topic.clone()) {
                commands.push(self.index(&share.topic, true));
            }
            commands.push(self.share_command(share));
        }
        if !commands.is_empty() {
            info!(
                sessions = shares.len(),
                "presence written to redis anew from this node's sessions"
            );
        }
        for chunk in commands.chunks(RELAY_BATCH) {
            self.run_all(link, chunk.to_vec()).await;
        }
    }
}

fn strings(value: &Value) -> Vec<String> {
    let items = match value {
        Value::Array(items) | Value::Set(items) => items,
        _ => return Vec::new(),
    };
    items
        .iter()
        .filter_map(|item| text(item).map(str::to_owned))
        .collect()
}
