//! Subscriptions and the messages they deliver.

use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::Stream;
use starling_protocol::Filter;
use tokio::sync::{mpsc, oneshot};

use crate::command::{Command, await_reply};
use crate::error::{Error, Result};
use crate::message::Message;

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
        await_reply(answer, self.request_timeout).await
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
