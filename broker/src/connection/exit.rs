//! Why a connection ends.

use starling_protocol::CloseCode;

/// Why a connection ended.
#[derive(Debug)]
pub(crate) enum Exit {
    /// The peer sent a close frame; the answer is queued.
    PeerClosed,
    /// The transport failed or the peer vanished; nothing can be sent.
    PeerGone(String),
    /// The broker closes with this code and reason.
    Close(CloseCode, String),
    /// The peer broke a rule of RFC 6455 (or the size limit): the broker
    /// fails the connection with this code and reason, and reads nothing
    /// more from it (7.1.7), not even a close frame.
    Fail(CloseCode, String),
}

impl Exit {
    pub(crate) fn close(code: CloseCode, reason: impl Into<String>) -> Self {
        Exit::Close(code, reason.into())
    }

    /// The line logged when the connection ends.
    pub(crate) fn describe(&self) -> String {
        match self {
            Exit::PeerClosed => "client closed".to_owned(),
            Exit::PeerGone(why) => format!("connection lost: {why}"),
            Exit::Close(code, why) => format!("closed with {code}: {why}"),
            Exit::Fail(code, why) => format!("failed with {code}: {why}"),
        }
    }
}
