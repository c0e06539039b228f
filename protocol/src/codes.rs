//! The stable error codes of `error` frames and the WebSocket close codes.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The `code` of an `error` frame (and of an HTTP error body).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The frame could not be parsed, or a field had the wrong type.
    BadFrame,
    /// The frame's `type` is not one a client may send.
    UnknownType,
    /// The topic or pattern is not valid here.
    InvalidTopic,
    /// The message is larger than `max_message_bytes`.
    MessageTooLarge,
    /// The connection already holds `max_subscriptions`.
    TooManySubscriptions,
    /// `unsubscribe` for something the connection is not subscribed to.
    NotSubscribed,
    /// The client may not do this (for example publish to a `$` topic).
    Unauthorized,
    /// The client sent faster than its allowance.
    RateLimited,
    /// The broker failed; the request may be retried.
    Internal,
}

impl ErrorCode {
    /// Every code, in the order of PROTOCOL.md.
    pub const ALL: [ErrorCode; 9] = [
        ErrorCode::BadFrame,
        ErrorCode::UnknownType,
        ErrorCode::InvalidTopic,
        ErrorCode::MessageTooLarge,
        ErrorCode::TooManySubscriptions,
        ErrorCode::NotSubscribed,
        ErrorCode::Unauthorized,
        ErrorCode::RateLimited,
        ErrorCode::Internal,
    ];

    /// The snake_case word on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadFrame => "bad_frame",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::InvalidTopic => "invalid_topic",
            ErrorCode::MessageTooLarge => "message_too_large",
            ErrorCode::TooManySubscriptions => "too_many_subscriptions",
            ErrorCode::NotSubscribed => "not_subscribed",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Internal => "internal",
        }
    }

    /// The HTTP status that `POST /api/publish` answers with for this code.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::BadFrame | ErrorCode::UnknownType | ErrorCode::InvalidTopic => 400,
            ErrorCode::NotSubscribed => 400,
            ErrorCode::MessageTooLarge => 413,
            ErrorCode::TooManySubscriptions => 409,
            ErrorCode::Unauthorized => 403,
            ErrorCode::RateLimited => 429,
            ErrorCode::Internal => 500,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The `code` of an HTTP error body that no `error` frame carries: refusals
/// of a WebSocket handshake and answers of the HTTP router. (An HTTP error
/// about a frame's content, such as `invalid_topic` from `POST
/// /api/publish`, carries an [`ErrorCode`].)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HttpErrorCode {
    /// A request to `/ws` that is not a WebSocket upgrade, or of a version
    /// other than 13 (400, or 426 for the version).
    NotWebsocket,
    /// The client offered subprotocols and none of Starling's (400).
    UnsupportedSubprotocol,
    /// The broker is at its connection limit (503).
    TooManyConnections,
    /// The broker is shutting down (503).
    ShuttingDown,
    /// No such path (404).
    NotFound,
    /// The path does not take this method (405).
    MethodNotAllowed,
    /// A WebSocket handshake from a web origin the broker does not allow (403).
    ForbiddenOrigin,
    /// `POST /api/publish` with a body that is not `application/json` (415).
    UnsupportedMediaType,
    /// A request body that did not arrive in time (408).
    RequestTimeout,
}

impl HttpErrorCode {
    /// Every HTTP-only code.
    pub const ALL: [HttpErrorCode; 9] = [
        HttpErrorCode::NotWebsocket,
        HttpErrorCode::UnsupportedSubprotocol,
        HttpErrorCode::TooManyConnections,
        HttpErrorCode::ShuttingDown,
        HttpErrorCode::NotFound,
        HttpErrorCode::MethodNotAllowed,
        HttpErrorCode::ForbiddenOrigin,
        HttpErrorCode::UnsupportedMediaType,
        HttpErrorCode::RequestTimeout,
    ];

    /// The snake_case word in the body.
    pub fn as_str(self) -> &'static str {
        match self {
            HttpErrorCode::NotWebsocket => "not_websocket",
            HttpErrorCode::UnsupportedSubprotocol => "unsupported_subprotocol",
            HttpErrorCode::TooManyConnections => "too_many_connections",
            HttpErrorCode::ShuttingDown => "shutting_down",
            HttpErrorCode::NotFound => "not_found",
            HttpErrorCode::MethodNotAllowed => "method_not_allowed",
            HttpErrorCode::ForbiddenOrigin => "forbidden_origin",
            HttpErrorCode::UnsupportedMediaType => "unsupported_media_type",
            HttpErrorCode::RequestTimeout => "request_timeout",
        }
    }

    /// The HTTP status this code is answered with (426 for a WebSocket
    /// version other than 13 is the one exception, set by the broker).
    pub fn http_status(self) -> u16 {
        match self {
            HttpErrorCode::NotWebsocket | HttpErrorCode::UnsupportedSubprotocol => 400,
            HttpErrorCode::TooManyConnections | HttpErrorCode::ShuttingDown => 503,
            HttpErrorCode::NotFound => 404,
            HttpErrorCode::MethodNotAllowed => 405,
            HttpErrorCode::ForbiddenOrigin => 403,
            HttpErrorCode::UnsupportedMediaType => 415,
            HttpErrorCode::RequestTimeout => 408,
        }
    }
}

impl fmt::Display for HttpErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A WebSocket close code the broker sends before it drops a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum CloseCode {
    /// 1000: normal closure.
    Normal = 1000,
    /// 1001: the broker is shutting down; reconnect elsewhere.
    GoingAway = 1001,
    /// 1002: WebSocket protocol violation.
    Protocol = 1002,
    /// 1003: binary frame on a JSON connection or text on a MessagePack one.
    Unsupported = 1003,
    /// 1007: a text frame that is not UTF-8.
    InvalidPayload = 1007,
    /// 1008: policy violation (bad or expired token).
    Policy = 1008,
    /// 1009: a message over the size limit.
    TooBig = 1009,
    /// 1011: the broker failed.
    Internal = 1011,
    /// 4000: the client sent nothing, not even a pong, within the idle
    /// timeout. The client may reconnect.
    IdleTimeout = 4000,
    /// 4008: slow consumer dropped by policy. The client may reconnect.
    SlowConsumer = 4008,
    /// 4029: rate limit exceeded repeatedly. The client may reconnect later.
    RateLimited = 4029,
}

impl CloseCode {
    /// Every close code the broker sends, in numeric order.
    pub const ALL: [CloseCode; 11] = [
        CloseCode::Normal,
        CloseCode::GoingAway,
        CloseCode::Protocol,
        CloseCode::Unsupported,
        CloseCode::InvalidPayload,
        CloseCode::Policy,
        CloseCode::TooBig,
        CloseCode::Internal,
        CloseCode::IdleTimeout,
        CloseCode::SlowConsumer,
        CloseCode::RateLimited,
    ];

    /// The numeric code.
    pub const fn code(self) -> u16 {
        self as u16
    }

    /// The close code for a number, when it is one of Starling's.
    pub fn from_code(code: u16) -> Option<Self> {
        Some(match code {
            1000 => CloseCode::Normal,
            1001 => CloseCode::GoingAway,
            1002 => CloseCode::Protocol,
            1003 => CloseCode::Unsupported,
            1007 => CloseCode::InvalidPayload,
            1008 => CloseCode::Policy,
            1009 => CloseCode::TooBig,
            1011 => CloseCode::Internal,
            4000 => CloseCode::IdleTimeout,
            4008 => CloseCode::SlowConsumer,
            4029 => CloseCode::RateLimited,
            _ => return None,
        })
    }

    /// Whether a client may reconnect after this close (the SDK's retry rule).
    /// 1008 (bad credentials) and 4500-4999 are terminal.
    pub fn may_reconnect(code: u16) -> bool {
        !(code == CloseCode::Policy.code() || (4500..5000).contains(&code))
    }
}

impl fmt::Display for CloseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_are_snake_case_on_the_wire() {
        for code in ErrorCode::ALL {
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
            let back: ErrorCode = serde_json::from_str(&json).unwrap();
            assert_eq!(back, code);
        }
    }

    #[test]
    fn http_codes_are_snake_case_in_bodies() {
        for code in HttpErrorCode::ALL {
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
            assert!((400..600).contains(&code.http_status()));
        }
    }

    #[test]
    fn close_codes_round_trip() {
        for code in CloseCode::ALL {
            assert_eq!(CloseCode::from_code(code.code()), Some(code));
        }
        assert_eq!(CloseCode::from_code(4001), None);
        assert!(CloseCode::may_reconnect(4000));
        assert!(CloseCode::may_reconnect(1001));
        assert!(CloseCode::may_reconnect(4008));
        assert!(!CloseCode::may_reconnect(1008));
        assert!(!CloseCode::may_reconnect(4500));
    }
}
