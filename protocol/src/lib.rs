//! The Starling wire protocol: frames, codecs, topics and codes.
//!
//! This crate is pure: it has no I/O. The broker and the client SDK both use it,
//! so the two sides agree on every byte.
//!
//! ```
//! use starling_protocol::{Codec, Envelope, Frame, Payload, Topic};
//!
//! let publish = Envelope::Publish {
//!     id: Some(2),
//!     topic: Topic::new("chat.lobby").unwrap(),
//!     payload: Payload::from_json(r#"{"user":"ada","text":"hi"}"#).unwrap(),
//! };
//! let frame = Codec::Json.encode(&publish).unwrap();
//! assert_eq!(
//!     frame,
//!     Frame::Text(r#"{"type":"publish","id":2,"topic":"chat.lobby","payload":{"user":"ada","text":"hi"}}"#.into())
//! );
//! assert_eq!(Codec::Json.decode(&frame).unwrap(), publish);
//! ```
#![warn(missing_docs)]

mod codec;

/// How deeply a payload may nest arrays and maps, in both codecs. Deeper
/// payloads are refused with `bad_frame`: every subscriber, whatever its
/// codec, must be able to receive what was accepted.
pub const MAX_DEPTH: usize = 64;

mod codes;
mod envelope;
mod error;
pub mod framing;
pub mod http;
mod payload;
mod topic;

pub use codec::{Codec, Frame, JSON_SUBPROTOCOL, MSGPACK_SUBPROTOCOL, NegotiationError};
pub use codes::{CloseCode, ErrorCode, HttpErrorCode};
pub use envelope::{CodecName, Envelope, Limits, Member, PROTOCOL_VERSION};
pub use error::CodecError;
pub use payload::{Payload, Value};
pub use topic::{Filter, MAX_TOPIC_BYTES, Topic, TopicError};
