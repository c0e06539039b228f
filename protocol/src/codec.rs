//! The two codecs, JSON text frames and MessagePack binary frames.

use std::borrow::Cow;

use std::cell::Cell;
use std::sync::Arc;

use serde::Deserialize;
use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, Visitor};

use crate::codes::ErrorCode;
use crate::envelope::{CodecName, Envelope, Limits, Member};
use crate::error::CodecError;
use crate::payload::{Payload, from_msgpack};
use crate::topic::{Filter, Topic};

/// The `Sec-WebSocket-Protocol` of the JSON codec.
pub const JSON_SUBPROTOCOL: &str = "starling.v1.json";
/// The `Sec-WebSocket-Protocol` of the MessagePack codec.
pub const MSGPACK_SUBPROTOCOL: &str = "starling.v1.msgpack";

/// An encoded frame: a WebSocket text message (JSON) or binary message (MessagePack).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A text message holding one JSON object.
    Text(String),
    /// A binary message holding one MessagePack map.
    Binary(Vec<u8>),
}

impl Frame {
    /// The encoded bytes.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Frame::Text(s) => s.as_bytes(),
            Frame::Binary(b) => b,
        }
    }

    /// The encoded length in bytes.
    pub fn len(&self) -> usize {
        self.as_bytes().len()
    }

    /// Whether the frame is empty.
    pub fn is_empty(&self) -> bool {
        self.as_bytes().is_empty()
    }
}

/// Why no codec could be chosen in the handshake.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "none of the offered subprotocols ({offered}) is supported; offer starling.v1.json or starling.v1.msgpack"
)]
pub struct NegotiationError {
    /// What the client offered.
    pub offered: String,
}

/// The codec of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Codec {
    /// JSON in WebSocket text messages.
    Json,
    /// MessagePack in WebSocket binary messages.
    MsgPack,
}

impl Codec {
    /// Both codecs.
    pub const ALL: [Codec; 2] = [Codec::Json, Codec::MsgPack];

    /// The subprotocol name of this codec.
    pub fn subprotocol(self) -> &'static str {
        match self {
            Codec::Json => JSON_SUBPROTOCOL,
            Codec::MsgPack => MSGPACK_SUBPROTOCOL,
        }
    }

    /// The codec's name in `welcome`.
    pub fn name(self) -> CodecName {
        match self {
            Codec::Json => CodecName::Json,
            Codec::MsgPack => CodecName::Msgpack,
        }
    }

    /// The codec for one subprotocol name.
    pub fn from_subprotocol(name: &str) -> Option<Self> {
        match name.trim() {
            JSON_SUBPROTOCOL => Some(Codec::Json),
            MSGPACK_SUBPROTOCOL => Some(Codec::MsgPack),
            _ => None,
        }
    }

    /// Chooses the codec from the `Sec-WebSocket-Protocol` header values a
    /// client sent. Returns the codec and whether a subprotocol must be echoed.
    ///
    /// No offer means JSON without echo; an offer with none of ours is refused.
    ///
    /// ```
    /// use starling_protocol::Codec;
    /// assert_eq!(Codec::negotiate([]), Ok((Codec::Json, false)));
    /// assert_eq!(Codec::negotiate(["chat, starling.v1.msgpack"]), Ok((Codec::MsgPack, true)));
    /// assert!(Codec::negotiate(["mqtt"]).is_err());
    /// ```
    pub fn negotiate<'a>(
        offers: impl IntoIterator<Item = &'a str>,
    ) -> Result<(Codec, bool), NegotiationError> {
        let mut offered: Vec<&str> = Vec::new();
        for header in offers {
            for name in header.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                if let Some(codec) = Codec::from_subprotocol(name) {
                    return Ok((codec, true));
                }
                offered.push(name);
            }
        }
        if offered.is_empty() {
            Ok((Codec::Json, false))
        } else {
            Err(NegotiationError {
                offered: offered.join(", "),
            })
        }
    }

    /// Whether this codec uses WebSocket text messages.
    pub fn is_text(self) -> bool {
        matches!(self, Codec::Json)
    }

    /// Encodes one frame.
    pub fn encode(self, envelope: &Envelope) -> Result<Frame, CodecError> {
        match self {
            Codec::Json => serde_json::to_string(envelope)
                .map(Frame::Text)
                .map_err(|e| CodecError::Encode(e.to_string())),
            Codec::MsgPack => rmp_serde::to_vec_named(envelope)
                .map(Frame::Binary)
                .map_err(|e| CodecError::Encode(e.to_string())),
        }
    }

    /// Decodes one frame, checking that its kind (text or binary) fits the codec.
    pub fn decode(self, frame: &Frame) -> Result<Envelope, CodecError> {
        match (self, frame) {
            (Codec::Json, Frame::Text(_)) | (Codec::MsgPack, Frame::Binary(_)) => {
                self.decode_bytes(frame.as_bytes())
            }
            (Codec::Json, Frame::Binary(_)) => Err(CodecError::WrongFrameKind("binary", "JSON")),
            (Codec::MsgPack, Frame::Text(_)) => {
                Err(CodecError::WrongFrameKind("text", "MessagePack"))
            }
        }
    }

    /// Decodes the bytes of one WebSocket message holding any frame, in
    /// either direction (what a client reads from the broker).
    pub fn decode_bytes(self, bytes: &[u8]) -> Result<Envelope, CodecError> {
        self.parse::<RawFrame<'_>>(bytes)?.into_envelope()
    }

    /// Decodes the bytes of one WebSocket message a client sent to the broker.
    /// Only client frames are accepted (others are `unknown_type`), and fields
    /// that client frames do not have are ignored whatever their type.
    pub fn decode_client(self, bytes: &[u8]) -> Result<Envelope, CodecError> {
        self.parse::<ClientRawFrame<'_>>(bytes)?.into_envelope()
    }

    /// Reads just the `id` of a frame, to answer a frame that is refused
    /// (malformed, too large, rate limited) by its id. The id is found when it
    /// comes before whatever is wrong with the frame.
    pub fn probe_id(self, bytes: &[u8]) -> Option<u64> {
        let found = Cell::new(None);
        let seed = IdSeed(&found);
        let _ = match self {
            Codec::Json => seed
                .deserialize(&mut serde_json::Deserializer::from_slice(bytes))
                .map_err(|_| ()),
            Codec::MsgPack => {
                let mut de = rmp_serde::Deserializer::new(std::io::Cursor::new(bytes));
                de.set_max_depth(crate::MAX_DEPTH + 2);
                seed.deserialize(&mut de).map_err(|_| ())
            }
        };
        found.get()
    }

    fn parse<'a, T: Deserialize<'a>>(self, bytes: &'a [u8]) -> Result<T, CodecError> {
        match self {
            Codec::Json => {
                let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
                if first != Some(&b'{') {
                    return Err(malformed(None, "a frame must be a JSON object"));
                }
                serde_json::from_slice(bytes).map_err(|e| malformed(self.probe_id(bytes), e))
            }
            Codec::MsgPack => {
                if !bytes.first().is_some_and(|b| is_msgpack_map_marker(*b)) {
                    return Err(malformed(None, "a frame must be a MessagePack map"));
                }
                from_msgpack(bytes).map_err(|e| malformed(self.probe_id(bytes), e))
            }
        }
    }
}

fn is_msgpack_map_marker(b: u8) -> bool {
    (0x80..=0x8f).contains(&b) || b == 0xde || b == 0xdf
}

fn malformed(id: Option<u64>, reason: impl ToString) -> CodecError {
    CodecError::Malformed {
        id,
        reason: reason.to_string(),
    }
}

/// Walks the top-level map of a frame until it finds `id`, keeping it even
/// when a later part of the frame fails to decode.
struct IdSeed<'c>(&'c Cell<Option<u64>>);

impl<'de> DeserializeSeed<'de> for IdSeed<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for IdSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a frame")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            if key == "id" {
                self.0.set(map.next_value::<u64>().ok());
                return Ok(());
            }
            map.next_value::<IgnoredAny>()?;
        }
        Ok(())
    }
}

pub(crate) fn some_payload<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Payload>, D::Error> {
    Payload::deserialize(d).map(Some)
}

/// A string field that must be a string (or null, as if absent): MessagePack
/// `bin` holding UTF-8 is refused, where serde would take it (a JSON client
/// could not send it).
fn text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Cow<'de, str>>, D::Error> {
    struct Text<'a>(Cow<'a, str>);
    impl<'de> Deserialize<'de> for Text<'de> {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_str(TextVisitor).map(Text)
        }
    }
    struct TextVisitor;
    impl<'de> Visitor<'de> for TextVisitor {
        type Value = Cow<'de, str>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a string")
        }
        fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
            Ok(Cow::Borrowed(v))
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(Cow::Owned(v.to_owned()))
        }
        fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Self::Value, E> {
            Ok(Cow::Owned(v))
        }
    }
    Ok(Option::<Text<'de>>::deserialize(d)?.map(|text| text.0))
}

/// The fields of client frames, flat: decoding reads this, then checks which
/// fields the `type` needs. Unknown fields are ignored.
#[derive(Deserialize)]
struct ClientRawFrame<'a> {
    #[serde(rename = "type", borrow, default, deserialize_with = "text")]
    kind: Option<Cow<'a, str>>,
    id: Option<u64>,
    #[serde(borrow, default, deserialize_with = "text")]
    topic: Option<Cow<'a, str>>,
    since: Option<u64>,
    #[serde(borrow, default, deserialize_with = "text")]
    epoch: Option<Cow<'a, str>>,
    #[serde(default, deserialize_with = "some_payload")]
    payload: Option<Payload>,
    #[serde(borrow, default, deserialize_with = "text")]
    token: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "text")]
    name: Option<Cow<'a, str>>,
    #[serde(default, deserialize_with = "some_payload")]
    info: Option<Payload>,
}

fn need(id: Option<u64>, field: &'static str) -> CodecError {
    malformed(id, format!("missing field `{field}`"))
}

fn filter(id: Option<u64>, topic: Option<Cow<'_, str>>) -> Result<Filter, CodecError> {
    Filter::new(&topic.ok_or_else(|| need(id, "topic"))?)
        .map_err(|source| CodecError::InvalidTopic { id, source })
}

fn topic(id: Option<u64>, topic: Option<Cow<'_, str>>) -> Result<Topic, CodecError> {
    Topic::new(&topic.ok_or_else(|| need(id, "topic"))?)
        .map_err(|source| CodecError::InvalidTopic { id, source })
}

impl ClientRawFrame<'_> {
    fn into_envelope(self) -> Result<Envelope, CodecError> {
        let id = self.id;
        let kind = self.kind.ok_or_else(|| need(id, "type"))?;
        Ok(match &*kind {
            "subscribe" => Envelope::Subscribe {
                id,
                topic: filter(id, self.topic)?,
                since: self.since,
                epoch: self.epoch.map(|e| Arc::from(e.as_ref())),
                name: self.name.map(Cow::into_owned),
                info: self.info,
            },
            "unsubscribe" => Envelope::Unsubscribe {
                id,
                topic: filter(id, self.topic)?,
            },
            "publish" => Envelope::Publish {
                id,
                topic: topic(id, self.topic)?,
                payload: self.payload.ok_or_else(|| need(id, "payload"))?,
            },
            "ping" => Envelope::Ping { id },
            "refresh" => Envelope::Refresh {
                id,
                token: self.token.ok_or_else(|| need(id, "token"))?.into_owned(),
            },
            "presence" => Envelope::Presence {
                id,
                topic: topic(id, self.topic)?,
                count: None,
                members: None,
            },
            other => {
                return Err(CodecError::UnknownType {
                    id,
                    kind: other.to_owned(),
                });
            }
        })
    }
}

/// Every field of every frame, flat, for decoding frames in either direction.
#[derive(Deserialize)]
struct RawFrame<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<Cow<'a, str>>,
    id: Option<u64>,
    #[serde(borrow)]
    topic: Option<Cow<'a, str>>,
    since: Option<u64>,
    #[serde(default, deserialize_with = "some_payload")]
    payload: Option<Payload>,
    version: Option<u32>,
    #[serde(borrow)]
    node: Option<Cow<'a, str>>,
    codec: Option<CodecName>,
    limits: Option<Limits>,
    offset: Option<u64>,
    #[serde(borrow)]
    sub: Option<Cow<'a, str>>,
    code: Option<ErrorCode>,
    #[serde(borrow)]
    message: Option<Cow<'a, str>>,
    missed: Option<u64>,
    reset: Option<bool>,
    #[serde(borrow)]
    epoch: Option<Cow<'a, str>>,
    #[serde(borrow)]
    from: Option<Cow<'a, str>>,
    #[serde(borrow)]
    token: Option<Cow<'a, str>>,
    #[serde(borrow)]
    name: Option<Cow<'a, str>>,
    #[serde(default, deserialize_with = "some_payload")]
    info: Option<Payload>,
    count: Option<u64>,
    members: Option<Vec<Member>>,
    member: Option<Member>,
}

impl RawFrame<'_> {
    fn into_envelope(self) -> Result<Envelope, CodecError> {
        let id = self.id;
        let kind = self.kind.ok_or_else(|| need(id, "type"))?;
        Ok(match &*kind {
            "pong" => Envelope::Pong { id },
            "welcome" => Envelope::Welcome {
                version: self.version.ok_or_else(|| need(id, "version"))?,
                node: self.node.ok_or_else(|| need(id, "node"))?.into(),
                codec: self.codec.ok_or_else(|| need(id, "codec"))?,
                limits: self.limits.unwrap_or_default(),
            },
            "message" => Envelope::Message {
                topic: topic(id, self.topic)?,
                payload: self.payload.ok_or_else(|| need(id, "payload"))?,
                offset: self.offset,
                epoch: self.epoch.map(|e| Arc::from(e.as_ref())),
                sub: self.sub.map(|s| filter(id, Some(s))).transpose()?,
                from: self.from.map(|from| from.as_ref().into()),
            },
            "ack" => Envelope::Ack {
                id: id.ok_or_else(|| need(id, "id"))?,
                offset: self.offset,
                epoch: self.epoch.map(|e| Arc::from(e.as_ref())),
            },
            "error" => Envelope::Error {
                id,
                code: self.code.ok_or_else(|| need(id, "code"))?,
                message: self.message.map(Cow::into_owned).unwrap_or_default(),
            },
            "lagged" => Envelope::Lagged {
                topic: filter(id, self.topic)?,
                reset: self.reset.unwrap_or(false),
                missed: match (self.missed, self.reset) {
                    (None, Some(true)) => None,
                    (missed, _) => Some(missed.ok_or_else(|| need(id, "missed"))?),
                },
            },
            // The broker's answer; a client's question has no `count`.
            "presence" if self.count.is_some() => Envelope::Presence {
                id,
                topic: topic(id, self.topic)?,
                count: self.count,
                members: self.members,
            },
            "join" => Envelope::Join {
                topic: topic(id, self.topic)?,
                member: self.member.ok_or_else(|| need(id, "member"))?,
            },
            "leave" => Envelope::Leave {
                topic: topic(id, self.topic)?,
                member: self.member.ok_or_else(|| need(id, "member"))?,
            },
            _ => ClientRawFrame {
                kind: Some(kind),
                id,
                topic: self.topic,
                since: self.since,
                epoch: self.epoch,
                payload: self.payload,
                token: self.token,
                name: self.name,
                info: self.info,
            }
            .into_envelope()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Value;

    fn all_frames() -> Vec<Envelope> {
        let topic = Topic::new("chat.lobby").unwrap();
        vec![
            Envelope::Subscribe {
                name: None,
                info: None,
                epoch: None,
                id: Some(1),
                topic: Filter::new("chat.*").unwrap(),
                since: Some(7),
            },
            Envelope::Subscribe {
                name: None,
                info: None,
                epoch: None,
                id: None,
                topic: Filter::new("a").unwrap(),
                since: None,
            },
            Envelope::Unsubscribe {
                id: Some(2),
                topic: Filter::new("chat.>").unwrap(),
            },
            Envelope::Publish {
                id: Some(3),
                topic: topic.clone(),
                payload: Payload::from_json(r#"{"user":"ada","text":"hi"}"#).unwrap(),
            },
            Envelope::Publish {
                id: None,
                topic: topic.clone(),
                payload: Payload::from_json("null").unwrap(),
            },
            Envelope::Ping { id: Some(4) },
            Envelope::Ping { id: None },
            Envelope::Welcome {
                version: 1,
                node: "n1".into(),
                codec: CodecName::Json,
                limits: Limits::default(),
            },
            Envelope::Message {
                epoch: None,
                topic: topic.clone(),
                payload: Payload::from_json("[1,2.5,\"x\"]").unwrap(),
                offset: Some(9),
                sub: Some(Filter::new("chat.*").unwrap()),
                from: None,
            },
            Envelope::Message {
                epoch: None,
                topic,
                payload: Payload::from_json("42").unwrap(),
                offset: None,
                sub: None,
                from: None,
            },
            Envelope::Ack {
                epoch: None,
                id: 5,
                offset: Some(10),
            },
            Envelope::Ack {
                epoch: None,
                id: 6,
                offset: None,
            },
            Envelope::error(
                Some(7),
                ErrorCode::InvalidTopic,
                "empty token in topic name",
            ),
            Envelope::error(None, ErrorCode::BadFrame, "oops"),
            Envelope::Lagged {
                reset: false,
                topic: Filter::new("chat.lobby").unwrap(),
                missed: Some(12),
            },
            Envelope::Pong { id: Some(8) },
            Envelope::Pong { id: None },
        ]
    }

    #[test]
    fn every_frame_round_trips_in_both_codecs() {
        for codec in Codec::ALL {
            for env in all_frames() {
                let frame = codec.encode(&env).unwrap();
                assert_eq!(codec.decode(&frame).unwrap(), env, "{codec:?} {frame:?}");
            }
        }
    }

    #[test]
    fn json_matches_the_protocol_examples() {
        let json = |env: &Envelope| match Codec::Json.encode(env).unwrap() {
            Frame::Text(s) => s,
            Frame::Binary(_) => unreachable!(),
        };
        assert_eq!(
            json(&Envelope::Ack {
                epoch: None,
                id: 1,
                offset: None
            }),
            r#"{"type":"ack","id":1}"#
        );
        assert_eq!(
            json(&Envelope::Message {
                epoch: None,
                topic: Topic::new("chat.lobby").unwrap(),
                payload: Payload::from_json(r#"{"user":"ada","text":"hi"}"#).unwrap(),
                offset: None,
                sub: None,
                from: None,
            }),
            r#"{"type":"message","topic":"chat.lobby","payload":{"user":"ada","text":"hi"}}"#
        );
        let welcome = json(&Envelope::Welcome {
            version: 1,
            node: "n1".into(),
            codec: CodecName::Json,
            limits: Limits::default(),
        });
        assert!(welcome.starts_with(r#"{"type":"welcome","version":1,"node":"n1","codec":"json","limits":{"max_message_bytes":1048576,"max_subscriptions":1024"#));
    }

    #[test]
    fn decode_errors_carry_code_and_id() {
        let err = |s: &str| Codec::Json.decode(&Frame::Text(s.into())).unwrap_err();
        let e = err(r#"{"type":"subscribe","id":3,"topic":"chat..bad"}"#);
        assert_eq!(e.code(), ErrorCode::InvalidTopic);
        assert_eq!(e.id(), Some(3));
        assert_eq!(e.to_string(), "empty token in topic name");

        let e = err(r#"{"type":"launch","id":4}"#);
        assert_eq!((e.code(), e.id()), (ErrorCode::UnknownType, Some(4)));

        let e = err(r#"{"type":"subscribe","id":5,"topic":17}"#);
        assert_eq!((e.code(), e.id()), (ErrorCode::BadFrame, Some(5)));

        let e = err(r#"{"type":"publish","id":6,"topic":"a.*","payload":1}"#);
        assert_eq!((e.code(), e.id()), (ErrorCode::InvalidTopic, Some(6)));

        let e = err(r#"{"type":"publish","id":7,"topic":"a"}"#);
        assert_eq!((e.code(), e.id()), (ErrorCode::BadFrame, Some(7)));

        for bad in [
            "",
            "not json",
            "[1,2]",
            "{\"type\":",
            "{}",
            r#"{"type":7}"#,
            "\"str\"",
        ] {
            assert_eq!(err(bad).code(), ErrorCode::BadFrame, "{bad}");
        }
        let e = err(r#"{"type":"subscribe","id":-1,"topic":"a"}"#);
        assert_eq!((e.code(), e.id()), (ErrorCode::BadFrame, None));
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let env = Codec::Json
            .decode(&Frame::Text(
                r#"{"type":"ping","id":1,"future":{"x":[1,2]},"also":null}"#.into(),
            ))
            .unwrap();
        assert_eq!(env, Envelope::Ping { id: Some(1) });
    }

    #[test]
    fn null_payload_is_a_payload() {
        let env = Codec::Json
            .decode(&Frame::Text(
                r#"{"type":"publish","topic":"a","payload":null}"#.into(),
            ))
            .unwrap();
        let Envelope::Publish { payload, .. } = env else {
            panic!("not a publish")
        };
        assert_eq!(payload.to_json_string(), "null");
    }

    #[test]
    fn wrong_frame_kind_is_rejected() {
        assert!(matches!(
            Codec::Json.decode(&Frame::Binary(vec![0x80])),
            Err(CodecError::WrongFrameKind(..))
        ));
        assert!(matches!(
            Codec::MsgPack.decode(&Frame::Text("{}".into())),
            Err(CodecError::WrongFrameKind(..))
        ));
    }

    #[test]
    fn msgpack_bin_reaches_json_as_dollar_bin() {
        let payload = Payload::from_value(Value::Map(vec![(
            Value::Str("data".into()),
            Value::Bin(vec![1, 2, 3]),
        )]));
        let env = Envelope::Publish {
            id: None,
            topic: Topic::new("t").unwrap(),
            payload,
        };
        let Envelope::Publish { payload, .. } = Codec::MsgPack
            .decode(&Codec::MsgPack.encode(&env).unwrap())
            .unwrap()
        else {
            panic!("not a publish")
        };
        let msg = Envelope::Message {
            epoch: None,
            topic: Topic::new("t").unwrap(),
            payload: payload.clone(),
            offset: None,
            sub: None,
            from: None,
        };
        assert_eq!(
            Codec::Json.encode(&msg).unwrap(),
            Frame::Text(
                r#"{"type":"message","topic":"t","payload":{"data":{"$bin":"AQID"}}}"#.into()
            )
        );
        // Between MessagePack clients, bin stays bin.
        let Envelope::Message { payload: back, .. } = Codec::MsgPack
            .decode(&Codec::MsgPack.encode(&msg).unwrap())
            .unwrap()
        else {
            panic!("not a message")
        };
        assert_eq!(back.to_value(), payload.to_value());
    }

    #[test]
    fn json_payload_reaches_msgpack_one_to_one() {
        let msg = Envelope::Message {
            epoch: None,
            topic: Topic::new("t").unwrap(),
            payload: Payload::from_json(r#"{"n":-5,"f":1.5,"s":"x","l":[true,null]}"#).unwrap(),
            offset: None,
            sub: None,
            from: None,
        };
        let Envelope::Message { payload, .. } = Codec::MsgPack
            .decode(&Codec::MsgPack.encode(&msg).unwrap())
            .unwrap()
        else {
            panic!("not a message")
        };
        let s = |v: &str| Value::Str(v.into());
        assert_eq!(
            payload.to_value(),
            Value::Map(vec![
                (s("n"), Value::Int(-5)),
                (s("f"), Value::Float(1.5)),
                (s("s"), s("x")),
                (s("l"), Value::Array(vec![Value::Bool(true), Value::Null])),
            ])
        );
    }

    #[test]
    fn negotiation() {
        assert_eq!(Codec::negotiate([]), Ok((Codec::Json, false)));
        assert_eq!(
            Codec::negotiate(["starling.v1.json"]),
            Ok((Codec::Json, true))
        );
        assert_eq!(
            Codec::negotiate(["foo", "starling.v1.msgpack, starling.v1.json"]),
            Ok((Codec::MsgPack, true))
        );
        assert!(Codec::negotiate(["foo, bar"]).is_err());
    }
}
