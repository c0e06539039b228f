//! Starling: a pub/sub message broker over WebSockets.
//!
//! Clients connect to `/ws`, subscribe to topics and publish to them with a
//! small envelope in JSON or MessagePack (see the `starling-protocol` crate).
//! Every topic with subscribers has one broadcast channel; a published message
//! is sent on it once and encoded at most once per codec, whatever the number
//! of subscribers.
//!
//! Embedding a broker (this is also how the tests start one):
//!
//! ```no_run
//! # async fn run() -> std::io::Result<()> {
//! let running = starling_broker::start(starling_broker::Config::ephemeral()).await?;
//! println!("clients connect to {}", running.ws_url());
//! running.shutdown().await
//! # }
//! ```
#![warn(missing_docs)]

mod accept;
mod broker;
mod cluster;
mod config;
mod connection;
mod delivery;
mod history;
mod metrics;
mod rate;
mod registry;
pub mod ring;
mod server;
mod stats;
mod web;
mod ws;

pub use broker::{Broker, ConnId, PublishError, Published};
pub use cluster::ClusterError;
pub use config::{Config, LogFormat, SlowConsumerPolicy};
pub use connection::IDLE_TIMEOUT_CLOSE;
pub use delivery::Delivery;
pub use history::HistoryPolicy;
pub use metrics::{Metrics, Source};
pub use registry::{DeliveryReceiver, TopicRegistry};
pub use server::{RunningBroker, bind, router, serve, start};
pub use stats::STATS_TOPIC;

/// Helpers for the unit tests.
#[cfg(test)]
mod test_support {
    use std::net::SocketAddr;

    use tokio::net::{TcpListener, TcpStream};

    /// A connected loopback pair: (client, server side, client's address).
    pub(crate) async fn tcp_pair() -> (TcpStream, TcpStream, SocketAddr) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, peer) = listener.accept().await.unwrap();
        (client, server, peer)
    }
}
