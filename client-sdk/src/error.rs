//! The SDK's one error type.

use std::time::Duration;

use starling_protocol::{CodecError, ErrorCode, TopicError};

/// Everything that can go wrong in the SDK.
///
/// Errors that the broker reports carry the protocol's stable `code`
/// ([`Error::Server`]); errors found before anything is sent (an invalid topic,
/// a message over the size limit) come back without a network round trip.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The URL cannot be used (not `ws://` or `wss://`, no host, ...).
    #[error("invalid broker url {url:?}: {reason}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// Why it cannot be used.
        reason: String,
    },

    /// An option cannot be sent as given (for example a token that is not a
    /// valid HTTP header value).
    #[error("invalid option {option}: {reason}")]
    InvalidOption {
        /// The option's name.
        option: &'static str,
        /// Why it is invalid.
        reason: String,
    },

    /// The broker could not be reached or the WebSocket handshake failed at
    /// the transport level (connection refused, reset, DNS, ...).
    #[error("cannot connect to {url}: {source}")]
    Connect {
        /// The broker's URL.
        url: String,
        /// The underlying failure.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },

    /// The connection and the `welcome` frame did not complete within the
    /// connect timeout.
    #[error("connecting to {url} timed out after {after:?}")]
    ConnectTimeout {
        /// The broker's URL.
        url: String,
        /// The connect timeout.
        after: Duration,
    },

    /// The broker refused the client's token: it closed the connection with
    /// 1008 before `welcome` (the token is missing, malformed, badly signed,
    /// expired or not yet valid).
    #[error("the broker refused the token: {reason}")]
    Unauthorized {
        /// The broker's close reason (it begins with `unauthorized`).
        reason: String,
    },

    /// TLS for a `wss://` URL cannot be set up: a root certificate file
    /// cannot be read or holds no certificate, or the system has no root
    /// certificates and none were added.
    #[error("TLS: {0}")]
    Tls(String),

    /// The token provider failed.
    #[error("the token provider failed: {0}")]
    TokenProvider(#[source] crate::token::TokenError),

    /// The broker answered the handshake with an HTTP error instead of
    /// upgrading (for example 400 `unsupported_subprotocol` or 503
    /// `too_many_connections` / `shutting_down`).
    #[error("broker refused the connection with HTTP {status} ({code}): {message}")]
    Refused {
        /// The HTTP status.
        status: u16,
        /// The `code` of the broker's JSON error body (`unknown` when the body
        /// has none).
        code: String,
        /// The body's `message`, or the body itself.
        message: String,
    },

    /// The broker upgraded the connection but did not speak the protocol as
    /// expected (no `welcome`, another version or codec).
    #[error("protocol handshake failed: {0}")]
    Handshake(String),

    /// A topic or pattern that is not valid; nothing was sent.
    #[error("invalid topic {topic:?}: {source}")]
    InvalidTopic {
        /// The topic as given.
        topic: String,
        /// Why it is invalid.
        #[source]
        source: TopicError,
    },

    /// The encoded message is larger than the broker's `max_message_bytes`;
    /// nothing was sent.
    #[error("message of {size} bytes is over the broker's limit of {limit} bytes")]
    MessageTooLarge {
        /// The encoded size of the frame.
        size: usize,
        /// The limit announced in `welcome`.
        limit: u64,
    },

    /// The broker answered the request with an `error` frame.
    #[error("broker error {code}: {message}")]
    Server {
        /// The protocol's stable error code.
        code: ErrorCode,
        /// The broker's message, for people.
        message: String,
    },

    /// The value could not be serialized into a payload.
    #[error("cannot encode payload: {0}")]
    Encode(String),

    /// A received payload could not be decoded into the requested type.
    #[error(transparent)]
    Decode(#[from] CodecError),

    /// No answer from the broker within the request timeout.
    #[error("no answer from the broker within {0:?}")]
    Timeout(Duration),

    /// The client is not connected right now (under
    /// [`OfflinePolicy::FailFast`](crate::OfflinePolicy::FailFast)), or the
    /// connection was lost before the broker answered, so the outcome of the
    /// request is unknown.
    #[error("not connected to the broker")]
    Disconnected,

    /// The client was closed, or gave up reconnecting.
    #[error("the client is closed")]
    Closed,
}

impl Error {
    /// The protocol error code when the broker refused the request.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), starling_client::Error> {
    /// use starling_client::protocol::ErrorCode;
    ///
    /// let client = starling_client::Client::connect("ws://127.0.0.1:7070/ws").await?;
    /// let err = client.publish_with_ack("$sys.mine", &1).await.unwrap_err();
    /// assert_eq!(err.code(), Some(ErrorCode::Unauthorized));
    /// # Ok(())
    /// # }
    /// ```
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Error::Server { code, .. } => Some(*code),
            Error::MessageTooLarge { .. } => Some(ErrorCode::MessageTooLarge),
            Error::InvalidTopic { .. } => Some(ErrorCode::InvalidTopic),
            Error::Unauthorized { .. } => Some(ErrorCode::Unauthorized),
            _ => None,
        }
    }

    /// Whether trying the same thing again later may succeed (the connection
    /// was down, or the broker was busy or slow).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), starling_client::Error> {
    /// let client = starling_client::Client::connect("ws://127.0.0.1:7070/ws").await?;
    /// match client.publish_with_ack("jobs.new", &"payload").await {
    ///     Err(e) if e.is_retryable() => { /* try again later */ }
    ///     other => { other?; }
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Connect { .. }
            | Error::ConnectTimeout { .. }
            | Error::Timeout(_)
            | Error::Disconnected => true,
            Error::Refused { status, .. } => *status == 503,
            Error::Server { code, .. } => {
                matches!(code, ErrorCode::RateLimited | ErrorCode::Internal)
            }
            _ => false,
        }
    }
}

/// A `Result` with the SDK's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
