//! Subscriptions and the messages they deliver.

use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::Stream;
use serde::de::DeserializeOwned;
use starling_protocol::{Filter, Payload, Topic};
use tokio::sync::{mpsc, oneshot};

use crate::client::Command;
use crate::{Error, Result};

/// A message delivered to a [`Subscription`].
///
/// Cloning is cheap: the topic and the payload are shared.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub(crate) topic: Topic,
    pub(crate) payload: Payload,
    pub(crate) offset: Option<u64>,
    pub(crate) pattern: Option<Filter>,
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

/// A live subscription: a [`Stream`] of the [`Message`]s published to its
/// topic or pattern.
///
/// Dropping it unsubscribes (the broker is told once no other
/// `Subscription` of this client names the same filter). The stream ends
/// when the client is closed for good. It survives reconnects: the client
/// subscribes again by itself.
///
/// Each subscription has its own bounded queue
/// ([`ConnectOptions::subscriber_capacity`](crate::ConnectOptions::subscriber_capacity));
/// when the application does not keep up, new messages are dropped for it and
/// [`Event::SlowConsumer`](crate::Event::SlowConsumer) is emitted.
#[derive(Debug)]
pub struct Subscription {
    pub(crate) filter: Filter,
    pub(crate) local_id: u64,
    pub(crate) rx: mpsc::Receiver<Message>,
    pub(crate) commands: mpsc::UnboundedSender<Command>,
    pub(crate) request_timeout: std::time::Duration,
    pub(crate) released: bool,
}

impl Subscription {
    /// The topic or pattern subscribed to.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), starling_client::Error> {
    /// # let client = starling_client::Client::connect("ws://127.0.0.1:7070/ws").await?;
    /// let sub = client.subscribe("metrics.*.cpu").await?;
    /// assert!(sub.filter().is_pattern());
    /// # Ok(())
    /// # }
    /// ```
    pub fn filter(&self) -> &Filter {
        &self.filter
    }

    /// The next message; `None` once the client is closed for good. The same
    /// as `StreamExt::next`, without importing a trait.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), starling_client::Error> {
    /// # let client = starling_client::Client::connect("ws://127.0.0.1:7070/ws").await?;
    /// let mut sub = client.subscribe("chat.lobby").await?;
    /// while let Some(msg) = sub.recv().await {
    ///     println!("{}", msg.payload().to_json_string());
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn recv(&mut self) -> Option<Message> {
        self.rx.recv().await
    }

    /// A message that is already queued, without waiting.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), starling_client::Error> {
    /// # let client = starling_client::Client::connect("ws://127.0.0.1:7070/ws").await?;
    /// let mut sub = client.subscribe("chat.lobby").await?;
    /// while let Some(msg) = sub.try_recv() {
    ///     println!("{}", msg.topic());
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn try_recv(&mut self) -> Option<Message> {
        self.rx.try_recv().ok()
    }

    /// Unsubscribes and waits until the broker confirmed it (or, when
    /// another `Subscription` of this client names the same filter, until
    /// this one is detached). Messages still queued are discarded.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), starling_client::Error> {
    /// # let client = starling_client::Client::connect("ws://127.0.0.1:7070/ws").await?;
    /// let sub = client.subscribe("chat.lobby").await?;
    /// sub.unsubscribe().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn unsubscribe(mut self) -> Result<()> {
        self.released = true;
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Unsubscribe {
                filter: self.filter.clone(),
                local_id: self.local_id,
                reply: Some(reply),
            })
            .map_err(|_| Error::Closed)?;
        crate::client::await_reply(answer, self.request_timeout).await
    }
}

impl Stream for Subscription {
    type Item = Message;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Message>> {
        self.rx.poll_recv(cx)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if !self.released {
            // The task may be gone already; then there is nothing to undo.
            let _ = self.commands.send(Command::Unsubscribe {
                filter: self.filter.clone(),
                local_id: self.local_id,
                reply: None,
            });
        }
    }
}
