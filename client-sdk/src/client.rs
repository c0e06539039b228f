//! The [`Client`] handle and the commands it sends to the connection task.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde::Serialize;
use starling_protocol::{Codec, Envelope, Filter, Payload, Topic};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tracing::Instrument;

use crate::command::{Command, Shared, await_reply};
use crate::connection;
use crate::error::{Error, Result};
use crate::event::Events;
use crate::options::{ConnectOptions, OfflinePolicy};
use crate::presence::Presence;
use crate::subscription::Subscription;
use crate::task::Task;

/// A connection to a Starling broker.
///
/// `Client` is a cheap handle: clone it freely and share it across tasks.
/// One background task owns the WebSocket and the subscription table; it
/// stops (closing with 1000 after flushing what is queued) when the last
/// `Client` and the last [`Subscription`] are dropped, or at
/// [`close`](Client::close).
///
/// # Examples
///
/// ```no_run
/// # async fn run() -> Result<(), starling_client::Error> {
/// use starling_client::Client;
///
/// let client = Client::connect("ws://127.0.0.1:7070/ws").await?;
/// let mut sub = client.subscribe("chat.lobby").await?;
/// client.publish("chat.lobby", &"hi").await?;
/// let msg = sub.recv().await.expect("a message");
/// println!("{}", msg.payload().to_json_string());
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Client {
    commands: mpsc::UnboundedSender<Command>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("codec", &self.shared.options.codec)
            .field("name", &self.shared.options.name)
            .field("connected", &self.is_connected())
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Connects with the default [`ConnectOptions`] (JSON, reconnect with
    /// backoff). `url` is `ws://HOST:PORT/ws`; a URL without a path gets
    /// `/ws`.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), starling_client::Error> {
    /// let client = starling_client::Client::connect("ws://127.0.0.1:7070/ws").await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn connect(url: impl AsRef<str>) -> Result<Client> {
        Client::connect_with(url.as_ref(), ConnectOptions::default()).await
    }

    pub(crate) async fn connect_with(url: &str, options: ConnectOptions) -> Result<Client> {
        let url = connection::normalize_url(url)?;
        let token = connection::token(&options).await?;
        let (ws, welcome) = connection::open(&url, &options, token.as_deref()).await?;
        let shared = Arc::new(Shared::new(options, &welcome));
        let (commands, rx) = mpsc::unbounded_channel();
        let span = tracing::info_span!(
            "starling_client",
            name = shared.options.name.as_deref().unwrap_or_default(),
            url = %url,
        );
        let mut task = Task::new(url, shared.clone(), rx);
        task.token = token;
        tokio::spawn(task.run(ws, welcome).instrument(span));
        Ok(Client { commands, shared })
    }

    /// Subscribes to a topic or a pattern (`chat.*`, `metrics.>`) and waits
    /// for the broker's `ack`. The filter is validated first: an invalid one
    /// fails with [`Error::InvalidTopic`] without a round trip.
    ///
    /// While the client is reconnecting, the subscription is registered at
    /// once and sent to the broker with the reconnect.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), starling_client::Error> {
    /// use futures_util::StreamExt;
    ///
    /// let client = starling_client::Client::connect("ws://127.0.0.1:7070/ws").await?;
    /// let mut sub = client.subscribe("sensors.*.temp").await?;
    /// while let Some(msg) = sub.next().await {
    ///     let celsius: f64 = msg.decode()?;
    ///     println!("{}: {celsius}", msg.topic());
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn subscribe(&self, filter: &str) -> Result<Subscription> {
        let filter = Filter::new(filter).map_err(|source| Error::InvalidTopic {
            topic: filter.to_owned(),
            source,
        })?;
        let (sender, rx) = mpsc::channel(self.shared.options.subscriber_capacity);
        let local_id = self.shared.next_id();
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Subscribe {
                filter: filter.clone(),
                local_id,
                sender,
                reply,
            })
            .map_err(|_| Error::Closed)?;
        // Made before waiting, so that a timeout or a cancelled call detaches
        // it again through `Drop`.
        let subscription = Subscription {
            filter,
            local_id,
            rx,
            commands: self.commands.clone(),
            request_timeout: self.shared.options.request_timeout,
            released: false,
        };
        await_reply(answer, self.shared.options.request_timeout).await?;
        Ok(subscription)
    }

    /// Who is on presence topic `topic` (one the broker keeps presence on,
    /// `--presence`): how many members, and up to 1,000 of them with their
    /// sessions and `info`. Joins and leaves as they happen come as
    /// [`Event::Join`] and [`Event::Leave`] to a client subscribed to the
    /// topic.
    ///
    /// Fails with [`Error::Server`] (`invalid_topic` for a topic without
    /// presence, `unauthorized` without the right to subscribe to it).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), starling_client::Error> {
    /// let client = starling_client::Client::connect("ws://127.0.0.1:7070/ws").await?;
    /// let room = client.presence("chat.lobby").await?;
    /// for member in &room.members {
    ///     println!("{} ({} sessions)", member.name, member.sessions.unwrap_or(0));
    /// }
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// [`Event::Join`]: crate::Event::Join
    /// [`Event::Leave`]: crate::Event::Leave
    pub async fn presence(&self, topic: &str) -> Result<Presence> {
        let topic = Topic::new(topic).map_err(|source| Error::InvalidTopic {
            topic: topic.to_owned(),
            source,
        })?;
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Presence { topic, reply })
            .map_err(|_| Error::Closed)?;
        await_reply(answer, self.shared.options.request_timeout).await
    }

    /// Publishes `value`, serialized with `serde`, without waiting for the
    /// broker (no `id`): returns once the message is queued. Frames are
    /// batched, so a burst of publishes costs few writes. Use
    /// [`flush`](Client::flush) to wait until the broker has them, or
    /// [`publish_with_ack`](Client::publish_with_ack) for one message.
    ///
    /// Fails at once with [`Error::InvalidTopic`] (patterns included) or
    /// [`Error::MessageTooLarge`] (over the broker's `max_message_bytes`, as
    /// encoded). A refusal by the broker arrives later as
    /// [`Event::ServerError`]. While disconnected, see [`OfflinePolicy`].
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), starling_client::Error> {
    /// #[derive(serde::Serialize)]
    /// struct Reading { sensor: &'static str, celsius: f64 }
    ///
    /// let client = starling_client::Client::connect("ws://127.0.0.1:7070/ws").await?;
    /// client.publish("sensors.temp", &Reading { sensor: "t1", celsius: 21.5 }).await?;
    /// client.flush().await?;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// [`Event::ServerError`]: crate::Event::ServerError
    pub async fn publish<T: Serialize + ?Sized>(&self, topic: &str, value: &T) -> Result<()> {
        let payload = to_payload(value)?;
        self.publish_payload(topic, payload).await
    }

    /// Publishes a [`Payload`] as it is, without waiting for the broker. Use
    /// it for payloads built by hand, such as a MessagePack value with `bin`
    /// data ([`Payload::from_value`]).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), starling_client::Error> {
    /// use starling_client::protocol::{Payload, Value};
    ///
    /// let client = starling_client::ConnectOptions::new()
    ///     .codec(starling_client::Codec::MsgPack)
    ///     .connect("ws://127.0.0.1:7070/ws")
    ///     .await?;
    /// client.publish_payload("blobs.in", Payload::from_value(Value::Bin(vec![0, 1, 2]))).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn publish_payload(&self, topic: &str, payload: Payload) -> Result<()> {
        let message = self.encode_publish(None, topic, payload)?;
        self.acquire_outbound().await?;
        self.send_publish(Command::Publish { message })
    }

    /// Publishes `value` and waits for the broker's `ack`. Returns the offset
    /// the message got when its topic keeps history, `None` otherwise. A
    /// refusal comes back as [`Error::Server`] with the protocol's code.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), starling_client::Error> {
    /// let client = starling_client::Client::connect("ws://127.0.0.1:7070/ws").await?;
    /// let order = std::collections::HashMap::from([("id", 42)]);
    /// let offset = client.publish_with_ack("orders.new", &order).await?;
    /// println!("stored at {offset:?}");
    /// # Ok(())
    /// # }
    /// ```
    pub async fn publish_with_ack<T: Serialize + ?Sized>(
        &self,
        topic: &str,
        value: &T,
    ) -> Result<Option<u64>> {
        let payload = to_payload(value)?;
        let id = self.shared.next_id();
        let message = self.encode_publish(Some(id), topic, payload)?;
        self.acquire_outbound().await?;
        let (reply, answer) = oneshot::channel();
        self.send_publish(Command::PublishAck { id, message, reply })?;
        await_reply(answer, self.shared.options.request_timeout).await
    }

    /// Waits until the broker has handled everything this client queued
    /// before the call (publishes included): the client sends a `ping` with
    /// an id behind them and waits for its `pong`, as the broker handles a
    /// connection's frames in order.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), starling_client::Error> {
    /// let client = starling_client::Client::connect("ws://127.0.0.1:7070/ws").await?;
    /// for i in 0..1000 {
    ///     client.publish("load.test", &i).await?;
    /// }
    /// client.flush().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn flush(&self) -> Result<()> {
        self.check_offline()?;
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Flush { reply })
            .map_err(|_| Error::Closed)?;
        await_reply(answer, self.shared.options.request_timeout).await
    }

    /// Flushes what is queued, closes the connection with 1000 and stops the
    /// background task. Every handle then fails with [`Error::Closed`] and
    /// every [`Subscription`] ends. Closing a closed client does nothing.
    ///
    /// While disconnected, what is queued cannot be flushed and is dropped.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), starling_client::Error> {
    /// let client = starling_client::Client::connect("ws://127.0.0.1:7070/ws").await?;
    /// client.publish("app.events", &"bye").await?;
    /// client.close().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn close(&self) -> Result<()> {
        let (reply, answer) = oneshot::channel();
        if self.commands.send(Command::Close { reply }).is_err() {
            return Ok(());
        }
        answer.await.unwrap_or(Ok(()))
    }

    /// A stream of connection [`Event`]s from now on. Any number of observers
    /// may listen; one that falls behind misses the oldest events.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), starling_client::Error> {
    /// use starling_client::Event;
    ///
    /// let client = starling_client::Client::connect("ws://127.0.0.1:7070/ws").await?;
    /// let mut events = client.events();
    /// tokio::spawn(async move {
    ///     while let Some(event) = events.recv().await {
    ///         match event {
    ///             Event::Disconnected { reason, .. } => eprintln!("offline: {reason}"),
    ///             Event::Reconnected => eprintln!("back online"),
    ///             other => eprintln!("{other:?}"),
    ///         }
    ///     }
    /// });
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// [`Event`]: crate::Event
    pub fn events(&self) -> Events {
        Events::new(self.shared.events.subscribe())
    }

    /// Whether the client is connected right now.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), starling_client::Error> {
    /// let client = starling_client::Client::connect("ws://127.0.0.1:7070/ws").await?;
    /// assert!(client.is_connected());
    /// # Ok(())
    /// # }
    /// ```
    pub fn is_connected(&self) -> bool {
        self.shared.connected.load(Ordering::Relaxed)
    }

    /// The codec of the connection.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), starling_client::Error> {
    /// let client = starling_client::Client::connect("ws://127.0.0.1:7070/ws").await?;
    /// assert_eq!(client.codec(), starling_client::Codec::Json);
    /// # Ok(())
    /// # }
    /// ```
    pub fn codec(&self) -> Codec {
        self.shared.options.codec
    }

    /// The largest frame the broker accepts, from its last `welcome`; a
    /// publish whose frame is larger fails with [`Error::MessageTooLarge`].
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), starling_client::Error> {
    /// let client = starling_client::Client::connect("ws://127.0.0.1:7070/ws").await?;
    /// println!("up to {} bytes per message", client.max_message_bytes());
    /// # Ok(())
    /// # }
    /// ```
    pub fn max_message_bytes(&self) -> u64 {
        self.shared.max_message_bytes.load(Ordering::Relaxed)
    }

    fn encode_publish(&self, id: Option<u64>, topic: &str, payload: Payload) -> Result<WsMessage> {
        let topic = Topic::new(topic).map_err(|source| Error::InvalidTopic {
            topic: topic.to_owned(),
            source,
        })?;
        let frame = self
            .shared
            .options
            .codec
            .encode(&Envelope::Publish { id, topic, payload })
            .map_err(|e| Error::Encode(e.to_string()))?;
        let limit = self.max_message_bytes();
        if frame.len() as u64 > limit {
            return Err(Error::MessageTooLarge {
                size: frame.len(),
                limit,
            });
        }
        Ok(connection::to_ws(frame))
    }

    fn check_offline(&self) -> Result<()> {
        if self.shared.options.offline == OfflinePolicy::FailFast && !self.is_connected() {
            return Err(if self.commands.is_closed() {
                Error::Closed
            } else {
                Error::Disconnected
            });
        }
        Ok(())
    }

    /// Takes one outbound permit, waiting for room; the task gives it back
    /// once the frame is written (or dropped).
    async fn acquire_outbound(&self) -> Result<()> {
        self.check_offline()?;
        let permit = self
            .shared
            .outbound
            .acquire()
            .await
            .map_err(|_| Error::Closed)?;
        permit.forget();
        if let Err(error) = self.check_offline() {
            // The connection dropped while this call waited for room.
            self.shared.outbound.add_permits(1);
            return Err(error);
        }
        Ok(())
    }

    fn send_publish(&self, command: Command) -> Result<()> {
        self.commands.send(command).map_err(|_| {
            // The task is gone; the permit goes nowhere, which is fine.
            Error::Closed
        })
    }
}

// `ConnectOptions::connect` lives here, next to what it starts, so that the
// options do not depend on the client.
impl ConnectOptions {
    /// Connects to `url` (`ws://HOST:PORT/ws`) with these options: opens the
    /// WebSocket, waits for the broker's `welcome` and starts the background
    /// task. Fails within the connect timeout when the broker cannot be
    /// reached; the first connection is not retried.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), starling_client::Error> {
    /// let client = starling_client::ConnectOptions::new()
    ///     .name("ingest")
    ///     .connect("ws://127.0.0.1:7070/ws")
    ///     .await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn connect(self, url: impl AsRef<str>) -> Result<Client> {
        Client::connect_with(url.as_ref(), self).await
    }
}

/// Serializes a value into a payload. JSON text is the common form: the
/// protocol crate turns it into a MessagePack value for MessagePack frames.
fn to_payload<T: Serialize + ?Sized>(value: &T) -> Result<Payload> {
    Payload::to_json_payload(value).map_err(|e| Error::Encode(e.to_string()))
}
