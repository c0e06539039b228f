//! The frames of the wire protocol, both directions.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::codes::ErrorCode;
use crate::error::CodecError;
use crate::payload::Payload;
use crate::topic::{Filter, Topic};

/// The protocol version this crate speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// The limits in force on a connection, announced in `welcome`.
///
/// Unknown fields from a newer broker are ignored and missing ones take their
/// defaults, so old clients work with new brokers and the reverse.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Limits {
    /// The largest WebSocket message a client may send, as encoded.
    pub max_message_bytes: u64,
    /// The most subscriptions one connection may hold.
    pub max_subscriptions: u64,
    /// The longest topic or pattern, in bytes.
    pub max_topic_bytes: u64,
    /// How many messages a subscription may fall behind before it gets `lagged`.
    pub subscriber_buffer: u64,
    /// The interval of the broker's WebSocket pings, in milliseconds (0: none).
    pub ping_interval_ms: u64,
    /// How long the broker waits for any frame before it closes an idle peer,
    /// in milliseconds (0: forever).
    pub idle_timeout_ms: u64,
    /// The largest WebSocket message or frame the broker reads at all (twice
    /// `max_message_bytes`): over it the connection is closed with 1009.
    pub max_frame_bytes: u64,
    /// Bytes the broker queues for this connection before it stops taking
    /// more messages for it (then it lags).
    pub outbound_queue_bytes: u64,
    /// Frames per second this connection may send (0: unlimited).
    pub rate_limit: u64,
    /// Connections the broker accepts at once.
    pub max_connections: u64,
    /// The most of a connection's subscriptions that may be patterns
    /// (`*` or `>`).
    pub max_patterns: u64,
    /// How many bytes of messages a subscription may fall behind on one
    /// topic before it gets `lagged` (as `subscriber_buffer`, in bytes).
    pub subscriber_buffer_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_message_bytes: 1024 * 1024,
            max_subscriptions: 1024,
            max_topic_bytes: crate::MAX_TOPIC_BYTES as u64,
            subscriber_buffer: 1024,
            ping_interval_ms: 25_000,
            idle_timeout_ms: 60_000,
            max_frame_bytes: 2 * 1024 * 1024,
            outbound_queue_bytes: 64 * 1024,
            rate_limit: 0,
            max_connections: 100_000,
            max_patterns: 64,
            subscriber_buffer_bytes: 8 * 1024 * 1024,
        }
    }
}

/// The codec named in `welcome`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CodecName {
    /// `starling.v1.json`
    Json,
    /// `starling.v1.msgpack`
    Msgpack,
}

/// One wire message, in either direction.
///
/// Client to broker: `Subscribe`, `Unsubscribe`, `Publish`, `Ping`, `Refresh`,
/// `Presence`. Broker to client: `Welcome`, `Message`, `Ack`, `Error`,
/// `Lagged`, `Pong`, `Presence`, `Join`, `Leave`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Envelope {
    /// Start receiving messages on a topic or pattern.
    Subscribe {
        /// Correlation id, answered by one `ack` or `error`.
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        /// The topic or pattern.
        topic: Filter,
        /// Replay retained messages with an offset greater than this one first.
        #[serde(skip_serializing_if = "Option::is_none")]
        since: Option<u64>,
        /// The epoch `since` belongs to, as the client last saw it.
        #[serde(skip_serializing_if = "Option::is_none")]
        epoch: Option<Arc<str>>,
        /// On a presence topic without auth: the member's name (1 to 64
        /// bytes).
        #[serde(skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        /// On a presence topic: what others see of this session (an object
        /// of at most 1 KiB).
        #[serde(skip_serializing_if = "Option::is_none")]
        info: Option<Payload>,
    },
    /// Stop receiving messages on a topic or pattern.
    Unsubscribe {
        /// Correlation id.
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        /// The topic or pattern, as it was subscribed.
        topic: Filter,
    },
    /// Send a payload to every subscriber of a topic.
    Publish {
        /// Correlation id.
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        /// The concrete topic.
        topic: Topic,
        /// Any JSON or MessagePack value.
        payload: Payload,
    },
    /// Application-level keepalive; answered by `pong`.
    Ping {
        /// Correlation id, echoed in the `pong`.
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
    },
    /// Replace the connection's token (when auth is on).
    Refresh {
        /// Correlation id, answered by one `ack` or `error`.
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        /// The new JWT.
        token: String,
    },
    /// The first frame on every connection.
    Welcome {
        /// Protocol version (1).
        version: u32,
        /// The broker node's id.
        node: Arc<str>,
        /// The codec in use on this connection.
        codec: CodecName,
        /// The limits in force.
        limits: Limits,
    },
    /// A delivered message.
    Message {
        /// The concrete topic it was published to.
        topic: Topic,
        /// The payload as published.
        payload: Payload,
        /// The message's offset, when the topic keeps history.
        #[serde(skip_serializing_if = "Option::is_none")]
        offset: Option<u64>,
        /// The epoch of the offset, when the topic keeps history.
        #[serde(skip_serializing_if = "Option::is_none")]
        epoch: Option<Arc<str>>,
        /// The pattern that matched, when it differs from `topic`.
        #[serde(skip_serializing_if = "Option::is_none")]
        sub: Option<Filter>,
        /// The publisher's identity (its token's `sub`), when auth is on.
        #[serde(skip_serializing_if = "Option::is_none")]
        from: Option<Arc<str>>,
    },
    /// The frame with this id succeeded.
    Ack {
        /// The id of the frame.
        id: u64,
        /// For a publish on a topic with history, the offset it got; for a
        /// subscribe to such a topic, the topic's latest offset (0: none yet).
        #[serde(skip_serializing_if = "Option::is_none")]
        offset: Option<u64>,
        /// The epoch of `offset`.
        #[serde(skip_serializing_if = "Option::is_none")]
        epoch: Option<Arc<str>>,
    },
    /// A frame failed; the connection stays open.
    Error {
        /// The id of the frame, when it had one.
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        /// The stable error code.
        code: ErrorCode,
        /// A message for people.
        message: String,
    },
    /// The subscriber fell behind and `missed` messages were dropped for it;
    /// or, with `reset`, its history position is void (a foreign epoch, or
    /// an offset beyond the topic's latest) and what is retained follows.
    Lagged {
        /// The subscription (topic or pattern) that fell behind.
        topic: Filter,
        /// How many messages were lost (absent with `reset`: unknown).
        #[serde(skip_serializing_if = "Option::is_none")]
        missed: Option<u64>,
        /// The client's position is void; everything retained follows.
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        reset: bool,
    },
    /// Answer to `ping`.
    Pong {
        /// The id of the `ping`.
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
    },
    /// Who is subscribed to a presence topic: asked by a client (`count`
    /// and `members` absent), answered by the broker with the same `id`.
    Presence {
        /// Correlation id.
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        /// The topic.
        topic: Topic,
        /// How many members the topic has (in the answer).
        #[serde(skip_serializing_if = "Option::is_none")]
        count: Option<u64>,
        /// The members, at most 1,000 (in the answer).
        #[serde(skip_serializing_if = "Option::is_none")]
        members: Option<Vec<Member>>,
    },
    /// A member's first session subscribed to a presence topic.
    Join {
        /// The topic.
        topic: Topic,
        /// The member, with its `info`.
        member: Member,
    },
    /// A member's last session left a presence topic, and did not come back
    /// within the grace period.
    Leave {
        /// The topic.
        topic: Topic,
        /// The member (its `name` only).
        member: Member,
    },
}

/// A member of a presence topic: an identity, with its sessions folded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Member {
    /// The identity: the token's `sub`, the `name` given in `subscribe`, or
    /// a name the broker chose for the connection.
    pub name: Arc<str>,
    /// How many sessions (subscribed connections) it has, in a `presence`
    /// answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sessions: Option<u64>,
    /// The `info` of its newest session, when it gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<Payload>,
}

impl CodecError {
    /// The `error` frame that answers this failure.
    pub fn to_envelope(&self) -> Envelope {
        Envelope::error(self.id(), self.code(), self.to_string())
    }
}

impl Envelope {
    /// The frame's `type` on the wire.
    pub fn type_name(&self) -> &'static str {
        match self {
            Envelope::Subscribe { .. } => "subscribe",
            Envelope::Unsubscribe { .. } => "unsubscribe",
            Envelope::Publish { .. } => "publish",
            Envelope::Ping { .. } => "ping",
            Envelope::Refresh { .. } => "refresh",
            Envelope::Welcome { .. } => "welcome",
            Envelope::Message { .. } => "message",
            Envelope::Ack { .. } => "ack",
            Envelope::Error { .. } => "error",
            Envelope::Lagged { .. } => "lagged",
            Envelope::Pong { .. } => "pong",
            Envelope::Presence { .. } => "presence",
            Envelope::Join { .. } => "join",
            Envelope::Leave { .. } => "leave",
        }
    }

    /// Whether a client may send this frame to the broker.
    pub fn is_client_frame(&self) -> bool {
        matches!(
            self,
            Envelope::Subscribe { .. }
                | Envelope::Unsubscribe { .. }
                | Envelope::Publish { .. }
                | Envelope::Ping { .. }
                | Envelope::Refresh { .. }
                | Envelope::Presence { count: None, .. }
        )
    }

    /// The correlation id of a client frame.
    pub fn id(&self) -> Option<u64> {
        match self {
            Envelope::Subscribe { id, .. }
            | Envelope::Unsubscribe { id, .. }
            | Envelope::Publish { id, .. }
            | Envelope::Ping { id }
            | Envelope::Refresh { id, .. }
            | Envelope::Presence { id, .. }
            | Envelope::Pong { id }
            | Envelope::Error { id, .. } => *id,
            Envelope::Ack { id, .. } => Some(*id),
            _ => None,
        }
    }

    /// An `error` frame.
    pub fn error(id: Option<u64>, code: ErrorCode, message: impl Into<String>) -> Self {
        Envelope::Error {
            id,
            code,
            message: message.into(),
        }
    }
}
