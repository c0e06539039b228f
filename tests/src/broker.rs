//! Brokers started in-process on an ephemeral port: bare
//! [`RunningBroker`]s ([`broker`], [`broker_with`], [`broker_on`],
//! [`stop`]) and the [`TestBroker`] wrapper of the end-to-end tests.

use std::net::SocketAddr;
use std::time::Duration;

use starling_broker::{Config, RunningBroker};
use starling_protocol::Codec;

use crate::client::Client;
use crate::{WAIT, within};

/// Starts a broker on `127.0.0.1:0` with `adjust` applied to its config
/// (node id `test-node` unless `adjust` sets another).
pub async fn broker_with(adjust: impl FnOnce(&mut Config)) -> RunningBroker {
    let mut config = Config::ephemeral();
    config.node_id = Some("test-node".into());
    adjust(&mut config);
    starling_broker::start(config).await.expect("broker starts")
}

/// Starts a broker with the default settings.
pub async fn broker() -> RunningBroker {
    broker_with(|_| {}).await
}

/// Starts a broker on `addr` (the port of a broker that just stopped),
/// retrying briefly while the port is still held.
pub async fn broker_on(addr: SocketAddr) -> RunningBroker {
    broker_on_with(addr, |_| {}).await
}

/// [`broker_on`] with the configuration adjusted by `adjust`.
pub async fn broker_on_with(addr: SocketAddr, adjust: impl Fn(&mut Config)) -> RunningBroker {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let mut config = Config::ephemeral();
        config.node_id = Some("test-node-2".into());
        config.listen = addr;
        adjust(&mut config);
        match starling_broker::start(config).await {
            Ok(running) => return running,
            Err(error) if tokio::time::Instant::now() < deadline => {
                eprintln!("rebinding {addr}: {error}; retrying");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(error) => panic!("cannot bind {addr} again: {error}"),
        }
    }
}

/// Stops a broker gracefully (its clients get 1001).
pub async fn stop(running: RunningBroker) {
    within("broker shutdown", running.shutdown())
        .await
        .expect("broker stops cleanly");
}

/// A broker started in-process on `127.0.0.1:0`.
pub struct TestBroker {
    running: RunningBroker,
}

impl TestBroker {
    /// A broker with the default configuration.
    pub async fn start() -> Self {
        Self::with_config(|_| {}).await
    }

    /// A broker with a configuration adjusted by `adjust`.
    pub async fn with_config(adjust: impl FnOnce(&mut Config)) -> Self {
        TestBroker {
            running: broker_with(adjust).await,
        }
    }

    /// A cluster node: a broker with id `node` joined to the Redis at
    /// `redis_url`, returned once its Redis link is up.
    pub async fn node(node: &str, redis_url: &str) -> Self {
        Self::node_with(node, redis_url, |_| {}).await
    }

    /// A cluster node with a configuration adjusted by `adjust`.
    pub async fn node_with(node: &str, redis_url: &str, adjust: impl FnOnce(&mut Config)) -> Self {
        let broker = Self::with_config(|c| {
            c.node_id = Some(node.into());
            c.redis_url = Some(redis_url.into());
            adjust(c);
        })
        .await;
        broker.wait_cluster(true).await;
        broker
    }

    /// Waits until the node's Redis link is up (or down).
    pub async fn wait_cluster(&self, up: bool) {
        let deadline = tokio::time::Instant::now() + WAIT * 2;
        while self.broker().cluster_up() != Some(up) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "cluster link of {} not {}",
                self.broker().node_id(),
                if up { "up" } else { "down" }
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// `ws://ADDR/ws`.
    pub fn ws_url(&self) -> String {
        self.running.ws_url()
    }

    /// `http://ADDR`.
    pub fn http_url(&self) -> String {
        self.running.http_url()
    }

    /// The address the broker listens on, `127.0.0.1:PORT`.
    pub fn addr(&self) -> SocketAddr {
        self.running.addr
    }

    /// The broker.
    pub fn broker(&self) -> &starling_broker::Broker {
        &self.running.broker
    }

    /// Connects a JSON client.
    pub async fn json(&self) -> Client {
        Client::connect(&self.ws_url(), Some(Codec::Json)).await
    }

    /// Connects a MessagePack client.
    pub async fn msgpack(&self) -> Client {
        Client::connect(&self.ws_url(), Some(Codec::MsgPack)).await
    }

    /// Shuts the broker down gracefully.
    pub async fn stop(self) {
        stop(self.running).await;
    }
}
