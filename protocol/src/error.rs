//! Why a frame could not be encoded or decoded.

use crate::codes::ErrorCode;
use crate::topic::TopicError;

/// Why a frame could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CodecError {
    /// Not parseable, not an object, or a field of the wrong type.
    #[error("malformed frame: {reason}")]
    Malformed {
        /// The frame's `id`, when it could be read.
        id: Option<u64>,
        /// What was wrong.
        reason: String,
    },
    /// A `type` this side does not accept.
    #[error("unknown frame type {kind:?}")]
    UnknownType {
        /// The frame's `id`, when it could be read.
        id: Option<u64>,
        /// The type that was sent.
        kind: String,
    },
    /// A topic or pattern that is not valid where it was used.
    #[error("{source}")]
    InvalidTopic {
        /// The frame's `id`.
        id: Option<u64>,
        /// Why the topic is invalid.
        source: TopicError,
    },
    /// A binary frame on a JSON connection or a text frame on a MessagePack one.
    #[error("{0} frame on a {1} connection")]
    WrongFrameKind(&'static str, &'static str),
    /// The frame could not be encoded.
    #[error("cannot encode frame: {0}")]
    Encode(String),
    /// A payload could not be converted to the requested type.
    #[error("cannot decode payload: {0}")]
    Payload(String),
}

impl CodecError {
    /// The protocol error code to answer with.
    pub fn code(&self) -> ErrorCode {
        match self {
            CodecError::Malformed { .. } | CodecError::WrongFrameKind(..) => ErrorCode::BadFrame,
            CodecError::Payload(_) => ErrorCode::BadFrame,
            CodecError::UnknownType { .. } => ErrorCode::UnknownType,
            CodecError::InvalidTopic { .. } => ErrorCode::InvalidTopic,
            CodecError::Encode(_) => ErrorCode::Internal,
        }
    }

    /// The `id` of the frame that failed, when it could be read.
    pub fn id(&self) -> Option<u64> {
        match self {
            CodecError::Malformed { id, .. }
            | CodecError::UnknownType { id, .. }
            | CodecError::InvalidTopic { id, .. } => *id,
            _ => None,
        }
    }
}
