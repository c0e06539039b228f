//! The broker's own statistics, published on `$sys.stats` every second while
//! anyone is subscribed.

use std::time::{Duration, Instant};

use starling_protocol::{Payload, Topic};

use crate::broker::Broker;
use crate::metrics::Source;

/// The topic the statistics go to.
pub const STATS_TOPIC: &str = "$sys.stats";

/// Publishes statistics every second until the task is aborted.
pub(crate) async fn run(broker: Broker) {
    let topic = Topic::new(STATS_TOPIC).expect("the stats topic is valid");
    let started = Instant::now();
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = (Instant::now(), 0u64, 0u64);
    loop {
        ticker.tick().await;
        let metrics = broker.metrics();
        let published = metrics.published_total();
        let delivered = metrics.delivered.get();
        let now = Instant::now();
        let secs = now.duration_since(last.0).as_secs_f64().max(1e-3);
        let rate_in = (published.saturating_sub(last.1)) as f64 / secs;
        let rate_out = (delivered.saturating_sub(last.2)) as f64 / secs;
        last = (now, published, delivered);
        if !broker.registry().has_subscribers(&topic) {
            continue;
        }
        let stats = Stats {
            node: broker.node_id(),
            uptime_s: started.elapsed().as_secs(),
            connections: metrics.connections.get(),
            subscriptions: metrics.subscriptions.get(),
            topics: metrics.topics.get(),
            published,
            delivered,
            publish_rate: rate_in.round(),
            deliver_rate: rate_out.round(),
        };
        match Payload::to_json_payload(&stats) {
            Ok(payload) => {
                broker.publish_unchecked(topic.clone(), payload, Source::Broker);
            }
            Err(error) => tracing::error!(%error, "cannot encode stats"),
        }
    }
}

/// The payload of a `$sys.stats` message.
#[derive(serde::Serialize)]
struct Stats<'a> {
    node: &'a str,
    uptime_s: u64,
    connections: i64,
    subscriptions: i64,
    topics: i64,
    published: u64,
    delivered: u64,
    publish_rate: f64,
    deliver_rate: f64,
}
