//! Test fixtures for Starling's end-to-end tests, shared by every crate of
//! the workspace: brokers in-process on an ephemeral port ([`TestBroker`],
//! [`broker`]) or as the `starling` binary ([`start_binary`]), a WebSocket
//! client that speaks the envelope ([`Client`]), a hand-written one for
//! what a correct WebSocket library refuses to send ([`RawWs`]), HTTP
//! helpers, JWTs ([`tokens`]), Redis servers ([`redis`]), a proxy that
//! delays like a network ([`DelayProxy`]) and TLS certificates
//! ([`TestCerts`]).

use std::future::Future;
use std::time::Duration;

mod binary;
mod broker;
mod client;
mod delay;
mod http;
mod nginx;
pub mod presence;
mod process;
mod raw;
pub mod redis;
mod sse;
mod tls;
pub mod tokens;

pub use binary::{BINARY_WAIT, resident_bytes, start_binary};
pub use broker::{TestBroker, broker, broker_on, broker_on_with, broker_with, stop};
pub use client::Client;
pub use delay::DelayProxy;
pub use http::{
    HttpAnswer, assert_history_pages_are_bounded_in_bytes, http_get, http_post, http_request,
    http_request_with, json_field, json_str, metric, parse_json, wait_for_metric,
};
pub use nginx::Nginx;
pub use process::{raise_fd_limit, worker_panics};
pub use raw::{RawFrame, RawHttpAnswer, RawWs};
pub use sse::{SseEvent, SseStream};
pub use tls::TestCerts;
pub use tokio_tungstenite::tungstenite;

/// How long a test waits for anything from the network.
pub const WAIT: Duration = Duration::from_secs(5);

/// Awaits `fut` for at most [`WAIT`], failing the test with `what` on timeout.
pub async fn within<F: Future>(what: &str, fut: F) -> F::Output {
    tokio::time::timeout(WAIT, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// Polls `check` every 10 ms until it holds; fails after [`WAIT`].
pub async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    within(what, async {
        while !check() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
}
