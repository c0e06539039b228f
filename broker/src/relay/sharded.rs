//! Sharded pub/sub (`SPUBLISH`/`SSUBSCRIBE`, Redis 7) through a Redis
//! Cluster: each topic's channel lives on the shard that owns its hash slot,
//! so relay traffic spreads over the shards instead of reaching every one.
//! Sharded pub/sub has no patterns: pattern subscriptions get the messages
//! published on their own node only.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures_util::{StreamExt, TryStreamExt};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::Slot;
use redis::{PushInfo, PushKind, Value};
use tokio::time::Instant;
use tracing::{info, warn};

use crate::interest::InterestQueue;
use crate::relay::ClusterError;
use crate::relay::link::{
    Backoff, Changes, HEARTBEAT, Inbound, OutboundReceiver, REDIS_TIMEOUT, RELAY_BATCH, Wanted,
    wait_offline,
};
use crate::relay::wire::Subscription;

/// How many channels one `SSUBSCRIBE` names at most (all of one hash slot).
const SUBSCRIBE_BATCH: usize = 1_000;
/// How many `SSUBSCRIBE`-like commands may wait for Redis at once: most name
/// one channel (channels spread over the slots), so many go together.
const SUBSCRIBE_WINDOW: usize = 64;

/// A Redis Cluster client whose pushed messages are delivered through
/// `inbound` as they arrive.
pub(crate) fn client(
    url: &str,
    certificates: Option<redis::TlsCertificates>,
    inbound: Inbound,
) -> Result<ClusterClient, ClusterError> {
    // Messages are handed over by the client's own task, as they arrive.
    let on_push = move |push: PushInfo| -> Result<(), std::convert::Infallible> {
        if push.kind == PushKind::SMessage
            && let [Value::BulkString(channel), Value::BulkString(payload)] = push.data.as_slice()
        {
            inbound.receive(payload, &String::from_utf8_lossy(channel), None);
        }
        Ok(())
    };
    let builder = ClusterClientBuilder::new(vec![url])
        .use_protocol(redis::ProtocolVersion::RESP3)
        .connection_timeout(REDIS_TIMEOUT)
        .response_timeout(REDIS_TIMEOUT)
        .push_sender(on_push);
    match certificates {
        Some(certificates) => builder
            .certs(certificates)
            .build()
            .map_err(ClusterError::Tls),
        None => builder.build().map_err(ClusterError::InvalidUrl),
    }
}

/// Makes `changes` to the sharded subscriptions (there are no patterns):
/// the channels of one hash slot together, up to [`SUBSCRIBE_BATCH`] per
/// command, many commands in flight at once, each answered within
/// [`REDIS_TIMEOUT`].
async fn make_changes(conn: &ClusterConnection, changes: &Changes) -> Result<(), String> {
    let mut commands = Vec::new();
    for (subscribe, list) in [(true, &changes.subscribe), (false, &changes.unsubscribe)] {
        let mut slots: HashMap<Slot, Vec<String>> = HashMap::new();
        for subscription in list {
            if let Subscription::Channel(channel) = subscription {
                slots
                    .entry(Slot::for_key(channel))
                    .or_default()
                    .push(channel.clone());
            }
        }
        for channels in slots.into_values() {
            for chunk in channels.chunks(SUBSCRIBE_BATCH) {
                commands.push(send(conn.clone(), subscribe, chunk.to_vec()));
            }
        }
    }
    futures_util::stream::iter(commands)
        .buffer_unordered(SUBSCRIBE_WINDOW)
        .try_collect()
        .await
}

/// Sends one `SSUBSCRIBE` (or `SUNSUBSCRIBE`) naming `channels`, all of one
/// hash slot; waits for Redis to confirm each, at most [`REDIS_TIMEOUT`].
async fn send(
    mut conn: ClusterConnection,
    subscribe: bool,
    channels: Vec<String>,
) -> Result<(), String> {
    let sent = async {
        if subscribe {
            conn.ssubscribe(&channels).await
        } else {
            conn.sunsubscribe(&channels).await
        }
    };
    match tokio::time::timeout(REDIS_TIMEOUT, sent).await {
        Ok(result) => result.map_err(|error| error.to_string()),
        Err(_) => Err(format!(
            "{} sharded subscriptions timed out",
            channels.len()
        )),
    }
}

/// Relays queued messages out and keeps the sharded subscriptions equal to
/// the node's interest, until the broker goes. Whatever fails, the next try
/// waits with back-off: a new connection (with every subscription made
/// again) after a failed connect, (un)subscribe or heartbeat, the next
/// batch after a failed publish.
pub(crate) async fn run(
    client: ClusterClient,
    link: Inbound,
    up: Arc<AtomicBool>,
    mut outbound: OutboundReceiver,
    interest: Arc<InterestQueue>,
) {
    let mut wanted = Wanted::default();
    let mut backoff = Backoff::default();
    loop {
        let session = session(
            &client,
            &link,
            &up,
            &mut outbound,
            &interest,
            &mut wanted,
            &mut backoff,
        );
        let Err(error) = session.await else {
            return;
        };
        if up.swap(false, Ordering::Relaxed) {
            warn!(%error, "redis cluster link lost; reconnecting");
        } else if backoff.failures() == 0 {
            warn!(%error, "redis cluster unreachable; serving local clients only");
        }
        // Messages wait in the queue during the pause; those waiting when
        // the link failed go, so that what is relayed after it is recent.
        link.metrics.relay_failed.inc_by(outbound.discard());
        let pause = backoff.failed();
        wait_offline(pause, &interest, &mut wanted, &link.names).await;
    }
}

/// One cluster connection: connects, makes every subscription, then relays
/// until something fails (returns what) or the broker goes (`Ok`).
async fn session(
    client: &ClusterClient,
    link: &Inbound,
    up: &AtomicBool,
    outbound: &mut OutboundReceiver,
    interest: &InterestQueue,
    wanted: &mut Wanted,
    backoff: &mut Backoff,
) -> Result<(), String> {
    let metrics = &link.metrics;
    let names = &link.names;
    let conn: ClusterConnection =
        match tokio::time::timeout(REDIS_TIMEOUT, client.get_async_connection()).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(error)) => return Err(error.to_string()),
            Err(_) => return Err("connecting timed out".into()),
        };
    // Sharded subscriptions are resubscribed by the client after it
    // reconnects by itself; on a new connection they are made here.
    let (taken, number) = interest.take_numbered();
    wanted.apply(names, taken);
    make_changes(&conn, &wanted.all()).await?;
    interest.applied(number);
    if backoff.failures() > 0 {
        metrics.redis_reconnects.inc();
        info!(subscriptions = wanted.len(), "redis cluster link restored");
    }
    backoff.succeeded();
    up.store(true, Ordering::Relaxed);
    // Publishing backs off by itself: the cluster client reconnects to a
    // shard that fails, and the other shards go on.
    let mut publishing = Backoff::default();
    let mut resume_at = Instant::now();
    let mut batch = Vec::with_capacity(RELAY_BATCH);
    let mut heartbeat = tokio::time::interval(HEARTBEAT);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            n = outbound.recv_many(&mut batch, RELAY_BATCH), if Instant::now() >= resume_at => {
                if n == 0 {
                    return Ok(());
                }
                let count = batch.len() as u64;
                // The messages of one hash slot go in one pipeline, in order:
                // separate commands may overtake each other in the cluster
                // client, and a topic's messages must reach Redis in the
                // order they were published. Slots go side by side.
                let mut slots: HashMap<Slot, Vec<(String, Vec<u8>)>> = HashMap::new();
                for queued in batch.drain(..) {
                    let channel = names.channel(queued.topic.as_str());
                    slots
                        .entry(Slot::for_key(&channel))
                        .or_default()
                        .push((channel, queued.message));
                }
                let sends = slots.into_values().map(|messages| {
                    let mut conn = conn.clone();
                    async move {
                        let mut pipe = redis::pipe();
                        for (channel, message) in &messages {
                            pipe.cmd("SPUBLISH").arg(channel).arg(message).ignore();
                        }
                        let sent =
                            tokio::time::timeout(REDIS_TIMEOUT, pipe.query_async::<()>(&mut conn))
                                .await
                                .is_ok_and(|sent| sent.is_ok());
                        if sent { 0 } else { messages.len() as u64 }
                    }
                });
                let results = futures_util::future::join_all(sends).await;
                let failed: u64 = results.iter().sum();
                metrics.relayed_out.inc_by(count - failed);
                if failed == 0 {
                    publishing.succeeded();
                    continue;
                }
                let dropped = failed + outbound.discard();
                metrics.relay_failed.inc_by(dropped);
                if publishing.failures() == 0 {
                    warn!(dropped, "relaying to the redis cluster failed; retrying with back-off");
                }
                resume_at = Instant::now() + publishing.failed();
            }
            () = tokio::time::sleep_until(resume_at), if Instant::now() < resume_at => {}
            () = interest.changed() => {
                let (taken, number) = interest.take_numbered();
                let changes = wanted.apply(names, taken);
                if !changes.is_empty() {
                    make_changes(&conn, &changes).await?;
                }
                interest.applied(number);
            }
            _ = heartbeat.tick() => {
                let (ping, mut conn) = (redis::cmd("PING"), conn.clone());
                match tokio::time::timeout(REDIS_TIMEOUT, ping.query_async::<()>(&mut conn)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(error)) => return Err(error.to_string()),
                    Err(_) => return Err("no answer to PING".into()),
                }
            }
        }
    }
}
