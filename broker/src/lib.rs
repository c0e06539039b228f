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
//!
//! # Modules
//!
//! Each module is one job; dependencies point down this table, never up.
//!
//! | module | job |
//! | --- | --- |
//! | `cli`, `token` | the binary's command line (serve, or a subcommand); `starling token`, the claims `auth` reads, signed for development |
//! | `listener` | bind, accept loop (back-off when out of descriptors), serve, shutdown order |
//! | `http_api` | the router: `/healthz`, `/metrics`, `/api/publish`, `/ws` through hyper, the demo |
//! | `assets` | the demo's files, embedded |
//! | `tls`, `stream` | the certificate (reloaded on SIGHUP); a client's stream, plain TCP or TLS |
//! | `prefixed` | a socket with bytes already read put back in front, for hyper |
//! | `handshake` | admission of every upgrade (a typed refusal or a slot), the `101`, the one spawn of a connection |
//! | `origin`, `auth` | which web origins may connect; verifying tokens and what their permissions allow |
//! | `connection` | one client: poll loop, protocol session, subscriptions, outbox, keepalive |
//! | `stats` | `$sys.stats` |
//! | `broker` | one node's shared state: configuration, limits, relay, connection slots, shutdown |
//! | `relay` | publish and subscribe (with history) as one step per topic: memory, Redis, sharded Redis |
//! | `history` | offsets and retained messages |
//! | `registry` | topics and patterns with subscribers; tells the node's interest |
//! | `interest` | the interest queue: the latest watch or unwatch per filter, for the relay |
//! | `delivery` | one message, encoded at most once per codec as a complete frame |
//! | `ring` | a topic's unread messages; receivers with positions |
//! | `config`, `metrics`, `rate`, `sync` | settings, Prometheus metrics, the inbound rate limit, poison-free locks |
#![warn(missing_docs)]

mod assets;
mod auth;
mod broker;
mod cli;
mod config;
mod config_file;
mod connection;
mod delivery;
mod handshake;
mod history;
mod http_api;
mod http_reply;
mod interest;
mod listener;
mod metrics;
mod origin;
mod prefixed;
mod presence;
mod process_metrics;
mod proxy;
mod rate;
mod registry;
mod relay;
mod ring;
mod sse;
mod stats;
mod stream;
mod sync;
mod tls;
mod token;

pub use auth::{AuthConfigError, Claims, PermissionsClaim};
pub use broker::{Broker, PublishError, StartError};
pub use cli::{Cli, Command, ConfigCommand};
pub use config::{Config, HistoryStore, LogFormat, Secret, SlowConsumerPolicy};
pub use config_file::{ConfigFileError, ParseError};
pub use listener::{RunningBroker, bind, serve, shutdown_signal, start};
pub use metrics::{Metrics, Source};
pub use origin::OriginRuleError;
pub use proxy::TrustedNet;
pub use registry::TopicRegistry;
pub use relay::{ClusterError, Published, StoreUnavailable};
pub use stats::STATS_TOPIC;
pub use tls::TlsError;
pub use token::{TokenArgs, TokenError};

/// Not part of the API: what the crate's own benchmarks and examples
/// reach. It may change in any release.
#[doc(hidden)]
pub mod internals {
    use std::sync::Arc;

    use starling_protocol::Filter;

    use crate::broker::{Broker, StartError};
    use crate::config::Config;

    pub use crate::delivery::Delivery;
    pub use crate::registry::DeliveryReceiver;
    pub use crate::ring::Missed;

    use crate::metrics::Metrics;
    use crate::registry::TopicRegistry;

    /// A topic registry on its own, for in-process fan-out benchmarks.
    #[derive(Debug)]
    pub struct Fanout {
        registry: TopicRegistry,
    }

    impl Fanout {
        /// A registry whose rings hold `capacity` messages per subscriber.
        pub fn new(capacity: usize) -> Self {
            Fanout {
                registry: TopicRegistry::new(capacity, Arc::new(Metrics::new())),
            }
        }

        /// One more subscriber of `filter`.
        pub fn subscribe(&self, filter: &Filter) -> DeliveryReceiver {
            self.registry.subscribe(filter)
        }

        /// Sends `delivery` to every matching subscriber; returns how many.
        pub fn publish(&self, delivery: Delivery) -> usize {
            self.registry.publish(delivery)
        }
    }

    /// A broker whose WebSocket connections send every text or binary
    /// message back as it came (same opcode, same payload; a fragmented one
    /// whole) instead of reading it as an envelope, and send no `welcome`.
    /// Everything else is the broker's own: the handshake, the frame rules
    /// and their close codes, the UTF-8 check of text, the size limit
    /// (1009 over twice `max_message_bytes`), pings, the close handshake,
    /// the outbound buffer and the poll loop. Serve it with
    /// [`crate::serve`]. For conformance tests (the `echo` example,
    /// `.ci/autobahn`); nothing else should run one.
    pub fn echo_broker(config: Config) -> Result<Broker, StartError> {
        Broker::echo(config)
    }
}

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
