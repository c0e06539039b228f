//! WebSocket framing (RFC 6455, section 5) without I/O, for either side of a
//! connection.
//!
//! An endpoint plays a [`Role`]: a server reads masked client frames and
//! writes unmasked ones; a client reads unmasked server frames and masks
//! what it writes.
//!
//! - [`FrameReader`] parses the frames read so far in place, unmasks them,
//!   checks every rule of RFC 6455 (5.1-5.5, 7.4) and a message size limit,
//!   and reassembles fragmented messages. Every broken rule is a
//!   [`Violation`] that names the close code to fail the connection with.
//! - [`Header`] is one frame header, parsed ([`Header::parse`]) and checked
//!   for a role ([`Header::check`]) on its own, for readers that handle
//!   frames themselves.
//! - The writers append whole frames to an outbound buffer:
//!   [`write_message`], [`write_close`] and [`write_control`] for a server,
//!   [`write_masked`] for a client, and [`write_frame_raw`], which writes the
//!   first header byte exactly as given (for tests that need frames that
//!   break the rules).
//!
//! ```
//! use std::ops::ControlFlow;
//! use starling_protocol::framing::{self, Event, FrameReader, Kind, Role, opcode};
//!
//! // A client sends a masked text frame; the server reads it.
//! let mut wire = Vec::new();
//! framing::write_masked(&mut wire, framing::FIN | opcode::TEXT, b"hi", [1, 2, 3, 4]);
//! let mut reader = FrameReader::new(Role::Server);
//! reader.buffer().extend_from_slice(&wire);
//! let mut seen = Vec::new();
//! reader
//!     .parse(1 << 20, |event| {
//!         if let Event::Message(Kind::Text, text) = event {
//!             seen.push(text.to_vec());
//!         }
//!         ControlFlow::<()>::Continue(())
//!     })
//!     .unwrap();
//! assert_eq!(seen, [b"hi"]);
//! ```

mod frame;
pub mod opcode;
mod reader;

pub use frame::{
    FIN, Header, Kind, MAX_CONTROL_PAYLOAD, RSV, Role, Violation, apply_mask, close_code_allowed,
    frame_boundaries, parse_close, write_close, write_control, write_frame_raw, write_header,
    write_masked, write_message,
};
pub use reader::{Event, FrameReader};
