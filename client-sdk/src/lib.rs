//! Async Rust client for the [Starling](https://example.invalid/starling)
//! pub/sub broker.
//!
//! One [`Client`] holds one WebSocket to the broker, in JSON or MessagePack.
//! Clone it freely: every clone talks to the same background task, which
//! batches writes, keeps the connection alive with pings, and reconnects by
//! itself (with exponential backoff and full jitter), subscribing again to
//! everything that is still subscribed.
//!
//! ```no_run
//! use futures_util::StreamExt;
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize, Debug)]
//! struct Chat {
//!     nick: String,
//!     text: String,
//! }
//!
//! #[tokio::main]
//! async fn main() -> Result<(), starling_client::Error> {
//!     let client = starling_client::connect("ws://127.0.0.1:7070/ws").await?;
//!
//!     // A Subscription is a Stream of messages; dropping it unsubscribes.
//!     let mut lobby = client.subscribe("chat.lobby").await?;
//!
//!     // Fire-and-forget: returns once queued, frames are batched.
//!     let hello = Chat { nick: "ada".into(), text: "hello".into() };
//!     client.publish("chat.lobby", &hello).await?;
//!     // Or wait for the broker's ack (and the offset, on a topic with history).
//!     let _offset = client.publish_with_ack("chat.lobby", &hello).await?;
//!
//!     while let Some(message) = lobby.next().await {
//!         let chat: Chat = message.decode()?;
//!         println!("{} <{}> {}", message.topic(), chat.nick, chat.text);
//!     }
//!     client.close().await
//! }
//! ```
//!
//! More settings go through [`ConnectOptions`]:
//!
//! ```no_run
//! # async fn run() -> Result<(), starling_client::Error> {
//! use std::time::Duration;
//! use starling_client::{Codec, ConnectOptions, OfflinePolicy, ReconnectPolicy};
//!
//! let client = ConnectOptions::new()
//!     .codec(Codec::MsgPack)
//!     .name("ingest")
//!     .token("s3cret")
//!     .reconnect(ReconnectPolicy { max_delay: Duration::from_secs(2), ..Default::default() })
//!     .offline(OfflinePolicy::Queue)
//!     .request_timeout(Duration::from_secs(5))
//!     .connect("ws://127.0.0.1:7070/ws")
//!     .await?;
//! # Ok(())
//! # }
//! ```
//!
//! `wss://` URLs trust the system's root certificates;
//! [`ConnectOptions::add_root_certificates`] adds a private authority and
//! [`ConnectOptions::tls_config`] replaces the whole rustls configuration.
//!
//! # Guarantees
//!
//! - Topics and patterns are validated before anything is sent
//!   ([`Error::InvalidTopic`]), and a message over the broker's
//!   `max_message_bytes` fails with [`Error::MessageTooLarge`], both without a
//!   round trip.
//! - Publishes from one client reach the broker in the order they were made,
//!   and the broker keeps that order for every subscriber.
//! - Publishing is at most once: a fire-and-forget publish written just
//!   before a connection dies may be lost, and a `publish_with_ack` in flight
//!   then fails with [`Error::Disconnected`] (its outcome is unknown).
//!   Publishes not written yet wait for the reconnect (or fail at once under
//!   [`OfflinePolicy::FailFast`]).
//! - After a reconnect each subscription asks for `since` = the last offset
//!   it saw (on topics with history), so it resumes without a gap or a
//!   duplicate where the broker keeps history.
//! - Nothing the broker or the network does makes the SDK panic.
#![warn(missing_docs)]

mod client;
mod command;
mod connection;
mod error;
mod event;
mod message;
mod options;
mod outbox;
mod presence;
mod subscription;
mod table;
mod task;
mod tls;
mod token;

pub use client::Client;
pub use error::{Error, Result};
pub use event::{Event, Events};
pub use message::Message;
pub use options::{ConnectOptions, OfflinePolicy, ReconnectPolicy};
pub use presence::Presence;
/// The TLS library of `wss://` connections, for [`ConnectOptions::tls_config`].
pub use rustls;
pub use starling_protocol as protocol;
pub use starling_protocol::{Codec, ErrorCode, Filter, Member, Payload, Topic};
pub use subscription::Subscription;
pub use token::{TokenError, TokenFuture};

/// Connects with the default options; the same as [`Client::connect`].
///
/// # Examples
///
/// ```no_run
/// # async fn run() -> Result<(), starling_client::Error> {
/// let client = starling_client::connect("ws://127.0.0.1:7070/ws").await?;
/// client.publish("chat.lobby", &"hi").await?;
/// # Ok(())
/// # }
/// ```
pub async fn connect(url: impl AsRef<str>) -> Result<Client> {
    Client::connect(url).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}

    #[test]
    fn handles_cross_tasks_and_threads() {
        send_sync::<Client>();
        send_sync::<Subscription>();
        send_sync::<Message>();
        send_sync::<Error>();
        send_sync::<Event>();
        send::<Events>();
    }
}

/// The Rust snippets of the workspace README, compiled by `cargo test`.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct WorkspaceReadme;

/// The Rust snippets of this crate's README, compiled by `cargo test`.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct CrateReadme;
