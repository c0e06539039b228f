//! Sharded pub/sub (`SPUBLISH`/`SSUBSCRIBE`, Redis 7) through a Redis
//! Cluster: each topic's channel lives on the shard that owns its hash slot,
//! so relay traffic spreads over the shards instead of reaching every one.
//! Sharded pub/sub has no patterns: pattern subscriptions get the messages
//! published on their own node only.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::{PushInfo, PushKind, Value};
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::registry::Interest;
use crate::relay::ClusterError;
use crate::relay::link::{
    Change, Inbound, Offline, OutboundReceiver, REDIS_TIMEOUT, RELAY_BATCH, Wanted, backoff,
};
use crate::relay::wire::Subscription;

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

/// Relays queued messages out and keeps the sharded subscriptions equal to
/// the node's interest, until the broker goes.
pub(crate) async fn run(
    client: ClusterClient,
    link: Inbound,
    up: Arc<AtomicBool>,
    mut outbound: OutboundReceiver,
    mut interest: mpsc::UnboundedReceiver<Interest>,
) {
    let metrics = &link.metrics;
    let names = &link.names;
    let mut wanted = Wanted::default();
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
                        names,
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
            .filter_map(|subscription| match subscription {
                Subscription::Channel(channel) => Some(channel),
                Subscription::Glob(_) => None,
            })
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
                    let sends = batch.drain(..).map(|queued| {
                        let mut conn = conn.clone();
                        let channel = names.channel(queued.topic.as_str());
                        async move {
                            redis::cmd("SPUBLISH")
                                .arg(channel)
                                .arg(queued.message)
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
                    let result = match wanted.apply(names, &change) {
                        Some(Change::Subscribe(Subscription::Channel(channel))) => {
                            conn.ssubscribe(&channel).await.map_err(|e| (e, channel))
                        }
                        Some(Change::Unsubscribe(Subscription::Channel(channel))) => {
                            conn.sunsubscribe(&channel).await.map_err(|e| (e, channel))
                        }
                        // No patterns in sharded pub/sub.
                        Some(Change::Subscribe(Subscription::Glob(_)))
                        | Some(Change::Unsubscribe(Subscription::Glob(_)))
                        | None => Ok(()),
                    };
                    if let Err((error, channel)) = result {
                        warn!(%error, %channel, "redis sharded (un)subscribe failed");
                        up.store(false, Ordering::Relaxed);
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
