//! Connection settings: the [`ConnectOptions`] builder and its policies.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use starling_protocol::{Codec, Payload};

use crate::tls::TlsOptions;
use crate::token::{TokenError, TokenProvider};

/// How the client reconnects after it lost its connection.
///
/// The delay before attempt `n` (counting from 0) is drawn uniformly from
/// `0..=min(max_delay, initial_delay * 2^n)` ("full jitter"), so a fleet of
/// clients that lost the same broker does not come back all at once.
///
/// # Examples
///
/// ```no_run
/// # async fn run() -> Result<(), starling_client::Error> {
/// use std::time::Duration;
/// use starling_client::{ConnectOptions, ReconnectPolicy};
///
/// let client = ConnectOptions::new()
///     .reconnect(ReconnectPolicy {
///         initial_delay: Duration::from_millis(50),
///         max_delay: Duration::from_secs(2),
///         max_attempts: Some(100),
///     })
///     .connect("ws://127.0.0.1:7070/ws")
///     .await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReconnectPolicy {
    /// The bound of the first delay (default 100 ms).
    pub initial_delay: Duration,
    /// The largest bound of any delay (default 5 s).
    pub max_delay: Duration,
    /// Consecutive failed attempts after which the client gives up and
    /// closes (`None`, the default: never give up; `Some(0)`: never reconnect).
    pub max_attempts: Option<u32>,
}

impl Default for ReconnectPolicy {
    fn default() -> Self {
        ReconnectPolicy {
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(5),
            max_attempts: None,
        }
    }
}

impl ReconnectPolicy {
    /// A policy that never reconnects: a lost connection closes the client.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), starling_client::Error> {
    /// use starling_client::{ConnectOptions, ReconnectPolicy};
    /// let client = ConnectOptions::new()
    ///     .reconnect(ReconnectPolicy::never())
    ///     .connect("ws://127.0.0.1:7070/ws")
    ///     .await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn never() -> Self {
        ReconnectPolicy {
            max_attempts: Some(0),
            ..ReconnectPolicy::default()
        }
    }

    /// The largest delay before attempt `attempt` (counting from 0):
    /// `min(max_delay, initial_delay * 2^attempt)`. The actual delay is drawn
    /// uniformly between zero and this bound.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use starling_client::ReconnectPolicy;
    ///
    /// let policy = ReconnectPolicy::default();
    /// assert_eq!(policy.delay_bound(0), Duration::from_millis(100));
    /// assert_eq!(policy.delay_bound(3), Duration::from_millis(800));
    /// assert_eq!(policy.delay_bound(40), Duration::from_secs(5));
    /// ```
    pub fn delay_bound(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
        self.initial_delay
            .checked_mul(factor)
            .unwrap_or(Duration::MAX)
            .min(self.max_delay)
    }
}

/// The delay before reconnect attempt `attempt`: full jitter over
/// [`ReconnectPolicy::delay_bound`].
pub(crate) fn backoff(attempt: u32, policy: &ReconnectPolicy, rng: &mut impl Rng) -> Duration {
    let bound = policy.delay_bound(attempt);
    let nanos = u64::try_from(bound.as_nanos()).unwrap_or(u64::MAX);
    Duration::from_nanos(rng.random_range(0..=nanos))
}

/// What `publish` does while the client is not connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OfflinePolicy {
    /// Publishes wait in the outbound queue (bounded by
    /// [`ConnectOptions::outbound_capacity`]) and are sent after the
    /// reconnect; once it is full, `publish` waits for room.
    #[default]
    Queue,
    /// Publishes and flushes fail at once with
    /// [`Error::Disconnected`](crate::Error::Disconnected), and what was
    /// queued when the connection dropped is discarded.
    FailFast,
}

/// Settings for a connection: a consuming builder that ends with
/// [`connect`](ConnectOptions::connect).
///
/// # Examples
///
/// ```no_run
/// # async fn run() -> Result<(), starling_client::Error> {
/// use std::time::Duration;
/// use starling_client::{Codec, ConnectOptions};
///
/// let client = ConnectOptions::new()
///     .codec(Codec::MsgPack)
///     .name("ingest")
///     .token("s3cret")
///     .request_timeout(Duration::from_secs(5))
///     .connect("ws://127.0.0.1:7070/ws")
///     .await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
#[must_use = "options do nothing until `connect` is called"]
pub struct ConnectOptions {
    pub(crate) codec: Codec,
    pub(crate) name: Option<String>,
    pub(crate) member: Option<String>,
    pub(crate) info: Option<Payload>,
    pub(crate) token: Option<String>,
    pub(crate) token_provider: Option<TokenProvider>,
    pub(crate) reconnect: ReconnectPolicy,
    pub(crate) offline: OfflinePolicy,
    pub(crate) connect_timeout: Duration,
    pub(crate) request_timeout: Duration,
    pub(crate) outbound_capacity: usize,
    pub(crate) subscriber_capacity: usize,
    pub(crate) event_capacity: usize,
    pub(crate) ping_interval: Duration,
    pub(crate) ping_timeout: Duration,
    pub(crate) tls: TlsOptions,
}

impl std::fmt::Debug for ConnectOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectOptions")
            .field("codec", &self.codec)
            .field("name", &self.name)
            .field("member", &self.member)
            .field("info", &self.info)
            // Never print the secret itself.
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field(
                "token_provider",
                &self.token_provider.as_ref().map(|_| "<callback>"),
            )
            .field("reconnect", &self.reconnect)
            .field("offline", &self.offline)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("outbound_capacity", &self.outbound_capacity)
            .field("subscriber_capacity", &self.subscriber_capacity)
            .field("event_capacity", &self.event_capacity)
            .field("ping_interval", &self.ping_interval)
            .field("ping_timeout", &self.ping_timeout)
            .field("tls", &self.tls)
            .finish()
    }
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            codec: Codec::Json,
            name: None,
            member: None,
            info: None,
            token: None,
            token_provider: None,
            reconnect: ReconnectPolicy::default(),
            offline: OfflinePolicy::Queue,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            outbound_capacity: 8192,
            subscriber_capacity: 65_536,
            event_capacity: 256,
            ping_interval: Duration::from_secs(15),
            ping_timeout: Duration::from_secs(10),
            tls: TlsOptions::default(),
        }
    }
}

impl ConnectOptions {
    /// The defaults: JSON, reconnect forever with 100 ms to 5 s of backoff,
    /// queue publishes while disconnected, 5 s connect timeout, 10 s request
    /// timeout, ping every 15 s and give up on the connection after 10 s
    /// without an answer.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), starling_client::Error> {
    /// let client = starling_client::ConnectOptions::new()
    ///     .connect("ws://127.0.0.1:7070/ws")
    ///     .await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// The codec: [`Codec::Json`] (default) or [`Codec::MsgPack`]. Offered to
    /// the broker as the `Sec-WebSocket-Protocol` of the handshake.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), starling_client::Error> {
    /// use starling_client::{Codec, ConnectOptions};
    /// let client = ConnectOptions::new().codec(Codec::MsgPack).connect("ws://127.0.0.1:7070/ws").await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn codec(mut self, codec: Codec) -> Self {
        self.codec = codec;
        self
    }

    /// A name for this connection, sent in the handshake as the
    /// `X-Starling-Client-Name` header (so the broker can log it; it is not
    /// part of the wire protocol) and used in this client's log lines.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), starling_client::Error> {
    /// let client = starling_client::ConnectOptions::new().name("ingest").connect("ws://127.0.0.1:7070/ws").await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// The name this client goes by on presence topics (the broker's
    /// `--presence`), sent in every `subscribe` (1 to 64 bytes). A broker
    /// with auth on uses the token's `sub` instead; without either, the
    /// broker names the connection.
    pub fn member(mut self, name: impl Into<String>) -> Self {
        self.member = Some(name.into());
        self
    }

    /// What others see of this session on presence topics (`info`, an
    /// object of at most 1 KiB as JSON), sent in every `subscribe`.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), starling_client::Error> {
    /// let client = starling_client::ConnectOptions::new()
    ///     .member("ada")
    ///     .info(&serde_json::json!({"status": "online"}))?
    ///     .connect("ws://127.0.0.1:7070/ws")
    ///     .await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn info<T: serde::Serialize + ?Sized>(mut self, info: &T) -> Result<Self, crate::Error> {
        let payload =
            Payload::to_json_payload(info).map_err(|e| crate::Error::Encode(e.to_string()))?;
        self.info = Some(payload);
        Ok(self)
    }

    /// A bearer token, sent on every handshake (first connection and
    /// reconnects) as `Authorization: Bearer <token>`.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), starling_client::Error> {
    /// let token = std::env::var("STARLING_TOKEN").unwrap_or_default();
    /// let client = starling_client::ConnectOptions::new().token(token).connect("ws://127.0.0.1:7070/ws").await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// An async callback that gives a token (a JWT): asked before every
    /// connection (first and reconnects, so a refused or expired token is
    /// replaced) and shortly before the current token's `exp`, when the
    /// client sends `refresh` with the new one. After the broker refuses a
    /// token (close 1008) the client reconnects only if the provider gives a
    /// different one. Takes precedence over [`ConnectOptions::token`].
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), starling_client::Error> {
    /// async fn fetch_token() -> Result<String, starling_client::TokenError> {
    ///     Ok(std::env::var("STARLING_TOKEN")?)
    /// }
    /// let client = starling_client::ConnectOptions::new()
    ///     .token_provider(fetch_token)
    ///     .connect("ws://127.0.0.1:7070/ws")
    ///     .await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn token_provider<F, Fut>(mut self, provider: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<String, TokenError>> + Send + 'static,
    {
        self.token_provider = Some(TokenProvider::new(provider));
        self
    }

    /// How to reconnect after a lost connection (see [`ReconnectPolicy`]).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), starling_client::Error> {
    /// use std::time::Duration;
    /// use starling_client::{ConnectOptions, ReconnectPolicy};
    /// let client = ConnectOptions::new()
    ///     .reconnect(ReconnectPolicy { max_delay: Duration::from_secs(1), ..Default::default() })
    ///     .connect("ws://127.0.0.1:7070/ws")
    ///     .await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn reconnect(mut self, policy: ReconnectPolicy) -> Self {
        self.reconnect = policy;
        self
    }

    /// What publishing does while disconnected (see [`OfflinePolicy`]).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), starling_client::Error> {
    /// use starling_client::{ConnectOptions, OfflinePolicy};
    /// let client = ConnectOptions::new().offline(OfflinePolicy::FailFast).connect("ws://127.0.0.1:7070/ws").await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn offline(mut self, policy: OfflinePolicy) -> Self {
        self.offline = policy;
        self
    }

    /// How long one connection attempt (TCP, WebSocket handshake and the
    /// broker's `welcome`) may take (default 5 s).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), starling_client::Error> {
    /// use std::time::Duration;
    /// let client = starling_client::ConnectOptions::new()
    ///     .connect_timeout(Duration::from_secs(2))
    ///     .connect("ws://127.0.0.1:7070/ws")
    ///     .await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long `subscribe`, `unsubscribe`, `publish_with_ack` and `flush`
    /// wait for the broker's answer (default 10 s); then they fail with
    /// [`Error::Timeout`](crate::Error::Timeout).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), starling_client::Error> {
    /// use std::time::Duration;
    /// let client = starling_client::ConnectOptions::new()
    ///     .request_timeout(Duration::from_secs(3))
    ///     .connect("ws://127.0.0.1:7070/ws")
    ///     .await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// How many publishes may wait to be written to the socket, connected or
    /// not (default 8192). When it is full, `publish` waits for room.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), starling_client::Error> {
    /// let client = starling_client::ConnectOptions::new()
    ///     .outbound_capacity(1024)
    ///     .connect("ws://127.0.0.1:7070/ws")
    ///     .await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn outbound_capacity(mut self, messages: usize) -> Self {
        self.outbound_capacity = messages.clamp(1, tokio::sync::Semaphore::MAX_PERMITS);
        self
    }

    /// How many messages each [`Subscription`](crate::Subscription) may hold
    /// before the application reads them (default 65,536). When it is full,
    /// new messages for it are dropped and
    /// [`Event::SlowConsumer`](crate::Event::SlowConsumer) is emitted; the
    /// connection and the other subscriptions carry on.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), starling_client::Error> {
    /// let client = starling_client::ConnectOptions::new()
    ///     .subscriber_capacity(1024)
    ///     .connect("ws://127.0.0.1:7070/ws")
    ///     .await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn subscriber_capacity(mut self, messages: usize) -> Self {
        self.subscriber_capacity = messages.clamp(1, tokio::sync::Semaphore::MAX_PERMITS);
        self
    }

    /// How many [`Event`](crate::Event)s an observer of
    /// [`Client::events`] may fall behind before it misses some (default 256).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), starling_client::Error> {
    /// let client = starling_client::ConnectOptions::new()
    ///     .event_capacity(1024)
    ///     .connect("ws://127.0.0.1:7070/ws")
    ///     .await?;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// [`Client::events`]: crate::Client::events
    pub fn event_capacity(mut self, events: usize) -> Self {
        self.event_capacity = events.max(1);
        self
    }

    /// How often the client sends the protocol's `ping` (default 15 s).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), starling_client::Error> {
    /// use std::time::Duration;
    /// let client = starling_client::ConnectOptions::new()
    ///     .ping_interval(Duration::from_secs(5))
    ///     .connect("ws://127.0.0.1:7070/ws")
    ///     .await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn ping_interval(mut self, interval: Duration) -> Self {
        self.ping_interval = interval.max(Duration::from_millis(1));
        self
    }

    /// How long after a `ping` the client waits for any frame from the
    /// broker before it declares the connection dead and reconnects
    /// (default 10 s).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), starling_client::Error> {
    /// use std::time::Duration;
    /// let client = starling_client::ConnectOptions::new()
    ///     .ping_timeout(Duration::from_secs(3))
    ///     .connect("ws://127.0.0.1:7070/ws")
    ///     .await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn ping_timeout(mut self, timeout: Duration) -> Self {
        self.ping_timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// Trusts the certificates in the PEM file at `path` for `wss://` URLs,
    /// besides the system's root certificates: a private certificate
    /// authority, or a development broker's self-signed certificate.
    /// Repeatable. The file is read at the first `wss://` connect; a file
    /// that cannot be read or holds no certificate fails it with
    /// [`Error::Tls`](crate::Error::Tls).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), starling_client::Error> {
    /// let client = starling_client::ConnectOptions::new()
    ///     .add_root_certificates("/etc/starling/ca.pem")
    ///     .connect("wss://broker.internal:7070/ws")
    ///     .await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn add_root_certificates(mut self, path: impl Into<PathBuf>) -> Self {
        self.tls.extra_roots.push(path.into());
        self.tls.changed();
        self
    }

    /// The whole rustls configuration for `wss://` URLs (client
    /// certificates, pinned roots, other protocol versions), replacing the
    /// system's roots and [`ConnectOptions::add_root_certificates`]. Build
    /// it with the [`rustls`](crate::rustls) this crate re-exports.
    pub fn tls_config(mut self, config: Arc<rustls::ClientConfig>) -> Self {
        self.tls.config = Some(config);
        self.tls.changed();
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn delay_bound_doubles_up_to_the_maximum() {
        let policy = ReconnectPolicy::default();
        let bounds: Vec<u64> = (0..8)
            .map(|n| policy.delay_bound(n).as_millis() as u64)
            .collect();
        assert_eq!(bounds, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        assert_eq!(policy.delay_bound(u32::MAX), Duration::from_secs(5));
    }

    #[test]
    fn delay_bound_never_overflows() {
        let policy = ReconnectPolicy {
            initial_delay: Duration::from_secs(u64::MAX / 2),
            max_delay: Duration::MAX,
            max_attempts: None,
        };
        assert_eq!(policy.delay_bound(64), Duration::MAX);
    }

    #[test]
    fn backoff_is_full_jitter_within_the_bound() {
        let policy = ReconnectPolicy::default();
        let mut rng = StdRng::seed_from_u64(7);
        for attempt in 0..20 {
            let bound = policy.delay_bound(attempt);
            let samples: Vec<Duration> = (0..200)
                .map(|_| backoff(attempt, &policy, &mut rng))
                .collect();
            assert!(samples.iter().all(|d| *d <= bound), "attempt {attempt}");
            // Full jitter: the draws spread over the whole range, low and high.
            assert!(samples.iter().any(|d| *d < bound / 4), "attempt {attempt}");
            assert!(
                samples.iter().any(|d| *d > bound * 3 / 4),
                "attempt {attempt}"
            );
        }
    }

    #[test]
    fn backoff_of_a_zero_policy_is_zero() {
        let policy = ReconnectPolicy {
            initial_delay: Duration::ZERO,
            ..ReconnectPolicy::default()
        };
        let mut rng = StdRng::seed_from_u64(1);
        assert_eq!(backoff(5, &policy, &mut rng), Duration::ZERO);
    }

    #[test]
    fn debug_output_hides_the_token() {
        let text = format!("{:?}", ConnectOptions::new().token("s3cret").name("n"));
        assert!(!text.contains("s3cret"), "{text}");
        assert!(text.contains("<redacted>"), "{text}");
    }

    #[test]
    fn builder_clamps_capacities() {
        let options = ConnectOptions::new()
            .outbound_capacity(0)
            .subscriber_capacity(0)
            .event_capacity(0);
        assert_eq!(options.outbound_capacity, 1);
        assert_eq!(options.subscriber_capacity, 1);
        assert_eq!(options.event_capacity, 1);
    }
}
