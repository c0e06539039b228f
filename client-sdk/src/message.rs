//! The messages a [`Subscription`] delivers.
//!
//! [`Subscription`]: crate::Subscription

use serde::de::DeserializeOwned;
use starling_protocol::{Filter, Payload, Topic};

use crate::error::{Error, Result};

/// A message delivered to a [`Subscription`].
///
/// Cloning is cheap: the topic and the payload are shared.
///
/// [`Subscription`]: crate::Subscription
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub(crate) topic: Topic,
    pub(crate) payload: Payload,
    pub(crate) offset: Option<u64>,
    pub(crate) epoch: Option<std::sync::Arc<str>>,
    pub(crate) pattern: Option<Filter>,
    pub(crate) from: Option<std::sync::Arc<str>>,
}

impl Message {
    /// The concrete topic the message was published to.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), starling_client::Error> {
    /// # let client = starling_client::Client::connect("ws://127.0.0.1:7070/ws").await?;
    /// let mut sub = client.subscribe("metrics.>").await?;
    /// if let Some(msg) = sub.recv().await {
    ///     println!("{} says {:?}", msg.topic(), msg.payload());
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn topic(&self) -> &Topic {
        &self.topic
    }

    /// The message's offset, when its topic keeps history. The client
    /// remembers the last one per subscription and resumes from it after a
    /// reconnect.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), starling_client::Error> {
    /// # let client = starling_client::Client::connect("ws://127.0.0.1:7070/ws").await?;
    /// let mut sub = client.subscribe("orders.new").await?;
    /// while let Some(msg) = sub.recv().await {
    ///     if let Some(offset) = msg.offset() {
    ///         println!("order #{offset}");
    ///     }
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn offset(&self) -> Option<u64> {
        self.offset
    }

    /// The epoch of [`Message::offset`]: the run of offsets it belongs to.
    /// Offsets restart only with a new epoch (a broker restarted with its
    /// history in memory, a history that expired); the client resumes with
    /// both and gets [`Event::Reset`](crate::Event::Reset) when the broker
    /// can no longer honour them.
    pub fn epoch(&self) -> Option<&str> {
        self.epoch.as_deref()
    }

    /// The pattern that matched, when the subscription was a pattern (the
    /// frame's `sub` field); `None` for a subscription to the topic itself.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), starling_client::Error> {
    /// # let client = starling_client::Client::connect("ws://127.0.0.1:7070/ws").await?;
    /// let mut sub = client.subscribe("chat.*").await?;
    /// if let Some(msg) = sub.recv().await {
    ///     assert_eq!(msg.pattern().map(|p| p.as_str()), Some("chat.*"));
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn pattern(&self) -> Option<&Filter> {
        self.pattern.as_ref()
    }

    /// The publisher's identity (its token's `sub`), set by the broker when
    /// it runs with authentication; `None` without auth and for messages
    /// published through the HTTP API.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), starling_client::Error> {
    /// # let client = starling_client::Client::connect("ws://127.0.0.1:7070/ws").await?;
    /// let mut sub = client.subscribe("chat.lobby").await?;
    /// if let Some(msg) = sub.recv().await {
    ///     println!("{} says {}", msg.from().unwrap_or("someone"), msg.payload().to_json_string());
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn from(&self) -> Option<&str> {
        self.from.as_deref()
    }

    /// The payload as received: raw JSON text on a JSON connection, a
    /// MessagePack value tree on a MessagePack one.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), starling_client::Error> {
    /// # let client = starling_client::Client::connect("ws://127.0.0.1:7070/ws").await?;
    /// let mut sub = client.subscribe("chat.lobby").await?;
    /// if let Some(msg) = sub.recv().await {
    ///     println!("{}", msg.payload().to_json_string());
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn payload(&self) -> &Payload {
        &self.payload
    }

    /// Decodes the payload into any `serde` type.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), starling_client::Error> {
    /// # let client = starling_client::Client::connect("ws://127.0.0.1:7070/ws").await?;
    /// #[derive(serde::Deserialize)]
    /// struct Chat { nick: String, text: String }
    ///
    /// let mut sub = client.subscribe("chat.lobby").await?;
    /// while let Some(msg) = sub.recv().await {
    ///     let chat: Chat = msg.decode()?;
    ///     println!("<{}> {}", chat.nick, chat.text);
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T> {
        self.payload.decode().map_err(Error::Decode)
    }

    /// Takes the payload out of the message.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), starling_client::Error> {
    /// # let client = starling_client::Client::connect("ws://127.0.0.1:7070/ws").await?;
    /// let mut sub = client.subscribe("blobs.in").await?;
    /// if let Some(msg) = sub.recv().await {
    ///     let value = msg.into_payload().to_value();
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn into_payload(self) -> Payload {
        self.payload
    }
}
