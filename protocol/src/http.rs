//! The JSON bodies of the HTTP API (`POST /api/publish`, `GET
//! /api/history` and error answers).

use std::borrow::Cow;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::{CodecError, ErrorCode, HttpErrorCode, Payload, Topic};

/// The body of `POST /api/publish`: `{"topic": "...", "payload": ...}`.
#[derive(Debug, Clone, PartialEq)]
pub struct PublishRequest {
    /// The concrete topic.
    pub topic: Topic,
    /// Any JSON value.
    pub payload: Payload,
}

#[derive(Deserialize)]
struct RawPublish<'a> {
    #[serde(borrow)]
    topic: Option<Cow<'a, str>>,
    #[serde(default, deserialize_with = "crate::codec::some_payload")]
    payload: Option<Payload>,
}

impl PublishRequest {
    /// Decodes a request body. Errors carry the protocol code to answer with
    /// (`bad_frame` for a body that does not parse, `invalid_topic`).
    ///
    /// ```
    /// use starling_protocol::http::PublishRequest;
    /// let req = PublishRequest::from_json(br#"{"topic":"chat.lobby","payload":{"text":"hi"}}"#).unwrap();
    /// assert_eq!(req.topic.as_str(), "chat.lobby");
    /// ```
    pub fn from_json(body: &[u8]) -> Result<Self, CodecError> {
        let malformed = |reason: String| CodecError::Malformed { id: None, reason };
        if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err(malformed("the body must be a JSON object".into()));
        }
        let raw: RawPublish<'_> =
            serde_json::from_slice(body).map_err(|e| malformed(e.to_string()))?;
        let topic = raw
            .topic
            .ok_or_else(|| malformed("missing field `topic`".into()))?;
        let topic =
            Topic::new(&topic).map_err(|source| CodecError::InvalidTopic { id: None, source })?;
        let payload = raw
            .payload
            .ok_or_else(|| malformed("missing field `payload`".into()))?;
        Ok(PublishRequest { topic, payload })
    }

    /// Encodes the request as a JSON body.
    pub fn to_json(&self) -> String {
        #[derive(Serialize)]
        struct Body<'a> {
            topic: &'a Topic,
            payload: &'a Payload,
        }
        serde_json::to_string(&Body {
            topic: &self.topic,
            payload: &self.payload,
        })
        .expect("a topic and a payload always encode")
    }
}

/// An HTTP error body: `{"code": "...", "message": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// A stable snake_case code: an [`ErrorCode`] or an [`HttpErrorCode`].
    pub code: Cow<'static, str>,
    /// A message for people.
    pub message: String,
}

impl ErrorBody {
    /// An error body with a protocol error code.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ErrorBody {
            code: Cow::Borrowed(code.as_str()),
            message: message.into(),
        }
    }

    /// An error body with an HTTP-only code.
    pub fn http(code: HttpErrorCode, message: impl Into<String>) -> Self {
        ErrorBody {
            code: Cow::Borrowed(code.as_str()),
            message: message.into(),
        }
    }

    /// The body as JSON text.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("an error body always encodes")
    }
}

/// The body of `GET /healthz`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// `ok`; `degraded` when the node is in a cluster and Redis is
    /// unreachable (local clients are still served); `shutting_down` (HTTP 503).
    pub status: Cow<'static, str>,
    /// The node id.
    pub node: String,
    /// Open WebSocket connections.
    pub connections: u64,
    /// The cluster link: `off` (single node), `up` or `down`.
    #[serde(default)]
    pub cluster: Cow<'static, str>,
}

/// The body of `GET /api/history`: a page of a topic's retained messages,
/// oldest first, and where the topic's history stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryPage {
    /// The topic.
    pub topic: Topic,
    /// The history's epoch.
    pub epoch: Arc<str>,
    /// The topic's latest offset (0: none yet).
    pub offset: u64,
    /// The `since` and `epoch` asked for were void there (another epoch, or
    /// an offset beyond the latest): the page starts at the oldest retained
    /// message.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reset: bool,
    /// How many messages after `since` are no longer retained.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missed: Option<u64>,
    /// The messages, oldest first.
    pub messages: Vec<HistoryMessage>,
}

/// One message of a [`HistoryPage`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryMessage {
    /// Its offset.
    pub offset: u64,
    /// The payload as published.
    pub payload: Payload,
    /// The publisher's identity, when auth was on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<Arc<str>>,
}

/// Encodes any serializable value as a JSON body (for the broker's small
/// HTTP answers, such as `/healthz`).
pub fn to_json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("HTTP answers are plain data and always encode")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_request_errors_have_codes() {
        let code = |b: &str| PublishRequest::from_json(b.as_bytes()).unwrap_err().code();
        assert_eq!(code("nope"), ErrorCode::BadFrame);
        assert_eq!(code("{\"topic\":1,\"payload\":1}"), ErrorCode::BadFrame);
        assert_eq!(code("{\"payload\":1}"), ErrorCode::BadFrame);
        assert_eq!(code("{\"topic\":\"a\"}"), ErrorCode::BadFrame);
        assert_eq!(
            code("{\"topic\":\"a..b\",\"payload\":1}"),
            ErrorCode::InvalidTopic
        );
        let ok = PublishRequest::from_json(b"{\"topic\":\"a\",\"payload\":null}").unwrap();
        assert_eq!(ok.payload.to_json_string(), "null");
        assert_eq!(ok.to_json(), "{\"topic\":\"a\",\"payload\":null}");
    }

    #[test]
    fn history_pages_round_trip() {
        let page = HistoryPage {
            topic: Topic::new("chat.room").unwrap(),
            epoch: "k3x9q2ab".into(),
            offset: 42,
            reset: false,
            missed: Some(2),
            messages: vec![HistoryMessage {
                offset: 41,
                payload: Payload::from_json(r#"{"text":"hi"}"#).unwrap(),
                from: None,
            }],
        };
        let json = to_json(&page);
        assert_eq!(
            json,
            r#"{"topic":"chat.room","epoch":"k3x9q2ab","offset":42,"missed":2,"messages":[{"offset":41,"payload":{"text":"hi"}}]}"#
        );
        assert_eq!(serde_json::from_str::<HistoryPage>(&json).unwrap(), page);
    }

    #[test]
    fn error_body_json() {
        assert_eq!(
            ErrorBody::new(ErrorCode::InvalidTopic, "bad").to_json(),
            r#"{"code":"invalid_topic","message":"bad"}"#
        );
    }
}
