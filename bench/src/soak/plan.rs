//! What every role of the soak shares: where the broker is, the codec, the
//! topics, the sizes and paces from the command line, and the signal that
//! ends the run.

use std::time::Duration;

use anyhow::{Context, Result};
use starling_protocol::{Codec, Filter, Topic};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::cli::SoakArgs;
use crate::frame::PublishEncoder;
use crate::ws::{self, Dialer};

/// How many concrete topics the churners spread over.
pub(crate) const CHURN_TOPICS: usize = 8;

/// Size of the churners' payloads, in bytes.
const SMALL_PAYLOAD_BYTES: usize = 64;

/// How long a connection of the soak waits for the broker's answer to its
/// close before it lets the socket go.
pub(crate) const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// The topics of the soak, all under `<prefix>.soak.`.
#[derive(Debug, Clone)]
pub(crate) struct Topics {
    /// Where the flooders publish and the slow and stalled readers listen.
    pub(crate) flood: String,
    /// The topic whose history the replayers ask for.
    pub(crate) history: String,
    /// The churners' concrete topics.
    pub(crate) churn: Vec<String>,
    /// A pattern over them, which every churner subscribes to as well.
    pub(crate) churn_pattern: String,
    /// The bystander's own topic.
    pub(crate) bystander: String,
}

impl Topics {
    /// The topics under `prefix`, validated.
    pub(crate) fn new(prefix: &str) -> Result<Self> {
        let name = |rest: &str| -> Result<String> {
            let name = format!("{prefix}.soak.{rest}");
            Filter::new(&name)
                .with_context(|| format!("--topic-prefix gives the invalid topic {name:?}"))?;
            Ok(name)
        };
        let topics = Topics {
            flood: name("flood")?,
            history: name("history")?,
            churn: (0..CHURN_TOPICS)
                .map(|i| name(&format!("churn.{i}")))
                .collect::<Result<_>>()?,
            churn_pattern: name("churn.*")?,
            bystander: name("bystander")?,
        };
        // Those that are published to must be concrete.
        for topic in [&topics.flood, &topics.history, &topics.bystander] {
            Topic::new(topic).with_context(|| format!("{topic:?} is not a concrete topic"))?;
        }
        Ok(topics)
    }
}

/// Everything a role needs to know, the same for all of them.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub(crate) url: String,
    pub(crate) dialer: Dialer,
    pub(crate) codec: Codec,
    pub(crate) ws_config: WebSocketConfig,
    pub(crate) topics: Topics,
    /// The flood's and the history's payloads.
    pub(crate) large: PublishEncoder,
    /// The churners' payloads.
    pub(crate) small: PublishEncoder,
    pub(crate) churn_pause: Duration,
    pub(crate) read_every: Duration,
    pub(crate) flood_in_flight: usize,
    pub(crate) replay_pause: Duration,
    /// Messages per second to the history topic (0: none).
    pub(crate) history_rate: f64,
    pub(crate) bystander_rate: f64,
}

impl Plan {
    /// The plan of `args`, checked.
    pub(crate) fn new(args: &SoakArgs) -> Result<Self> {
        let common = &args.common;
        anyhow::ensure!(
            common.subscriber_urls.is_empty(),
            "soak connects every role to --url: --subscriber-url does not apply"
        );
        let dialer = Dialer::new(
            common.token.as_deref(),
            &common.ca_files,
            &[common.url.as_str()],
        )?;
        let codec = Codec::from(common.codec);
        Ok(Plan {
            url: common.url.clone(),
            dialer,
            codec,
            ws_config: ws::config(common.read_buffer_bytes),
            topics: Topics::new(&common.topic_prefix)?,
            large: PublishEncoder::new(codec, args.payload_bytes),
            small: PublishEncoder::new(codec, SMALL_PAYLOAD_BYTES),
            churn_pause: Duration::from_millis(args.churn_pause_ms),
            read_every: Duration::from_millis(args.read_every_ms),
            flood_in_flight: args.flood_in_flight as usize,
            replay_pause: Duration::from_millis(args.replay_pause_ms),
            history_rate: args.history_rate,
            bystander_rate: args.bystander_rate,
        })
    }
}

/// The end of the load, as each task sees it.
#[derive(Debug, Clone)]
pub(crate) struct Stop(watch::Receiver<bool>);

impl Stop {
    /// The signal, and what sets it.
    pub(crate) fn new() -> (watch::Sender<bool>, Stop) {
        let (tx, rx) = watch::channel(false);
        (tx, Stop(rx))
    }

    /// Whether the load is over (or whoever steers it is gone).
    pub(crate) fn is_set(&self) -> bool {
        *self.0.borrow() || self.0.has_changed().is_err()
    }

    /// Waits until the load is over (or whoever steers it is gone).
    pub(crate) async fn wait(&mut self) {
        let _ = self.0.wait_for(|stopped| *stopped).await;
    }

    /// Runs `fut` to its end, or until the load is over (`None`).
    pub(crate) async fn or<F: Future>(&mut self, fut: F) -> Option<F::Output> {
        tokio::select! {
            biased;
            () = self.wait() => None,
            out = fut => Some(out),
        }
    }

    /// Sleeps for `pause`; `false` when the load ended first.
    pub(crate) async fn sleep(&mut self, pause: Duration) -> bool {
        self.or(tokio::time::sleep(pause)).await.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_load_stops_when_told_or_when_its_steering_is_gone() {
        let (tx, stop) = Stop::new();
        assert!(!stop.is_set());
        tx.send(true).unwrap();
        assert!(stop.is_set());
        let (tx, stop) = Stop::new();
        drop(tx);
        assert!(stop.is_set());
    }

    #[test]
    fn topics_are_under_the_prefix_and_checked() {
        let topics = Topics::new("bench").unwrap();
        assert_eq!(topics.flood, "bench.soak.flood");
        assert_eq!(topics.churn_pattern, "bench.soak.churn.*");
        assert_eq!(topics.churn.len(), CHURN_TOPICS);
        assert!(Topics::new("bad..prefix").is_err());
    }
}
