//! One published message on its way to subscribers.

use std::sync::{Arc, OnceLock};

use starling_protocol::{Codec, Envelope, Filter, Frame, Payload, Topic};
use tokio_tungstenite::tungstenite::Message;

/// A message as it travels through a topic's broadcast channel.
///
/// Every subscriber of the topic receives the same `Arc<Delivery>`. Its wire
/// frame is encoded at most once per codec, on first use, and then shared:
/// a subscriber's writer clones bytes, it never re-encodes.
#[derive(Debug)]
pub struct Delivery {
    /// The concrete topic it was published to.
    pub topic: Topic,
    /// The payload, as published.
    pub payload: Payload,
    /// Its offset, when the topic keeps history.
    pub offset: Option<u64>,
    /// The pattern it matched, for deliveries through a pattern subscription.
    pub sub: Option<Filter>,
    /// The node it was published on.
    pub origin: Arc<str>,
    encoded: [OnceLock<Option<Message>>; 2],
}

impl Delivery {
    /// A new delivery of `payload` on `topic`, published on node `origin`.
    pub fn new(topic: Topic, payload: Payload, offset: Option<u64>, origin: Arc<str>) -> Self {
        Delivery {
            topic,
            payload,
            offset,
            sub: None,
            origin,
            encoded: Default::default(),
        }
    }

    /// The same message, as delivered through the pattern subscription `sub`.
    pub fn through_pattern(&self, sub: Filter) -> Self {
        Delivery {
            topic: self.topic.clone(),
            payload: self.payload.clone(),
            offset: self.offset,
            sub: Some(sub),
            origin: self.origin.clone(),
            encoded: Default::default(),
        }
    }

    /// The `message` frame in `codec`, encoded on first use. `None` when the
    /// payload cannot be expressed in that codec.
    pub fn frame(&self, codec: Codec) -> Option<&Message> {
        let slot = match codec {
            Codec::Json => &self.encoded[0],
            Codec::MsgPack => &self.encoded[1],
        };
        slot.get_or_init(|| {
            let envelope = Envelope::Message {
                topic: self.topic.clone(),
                payload: self.payload.clone(),
                offset: self.offset,
                sub: self.sub.clone(),
            };
            match codec.encode(&envelope) {
                Ok(frame) => Some(to_message(frame)),
                Err(error) => {
                    tracing::error!(topic = %self.topic, %error, "cannot encode message");
                    None
                }
            }
        })
        .as_ref()
    }
}

/// A protocol frame as a WebSocket message: the one place where the two meet.
pub(crate) fn to_message(frame: Frame) -> Message {
    match frame {
        Frame::Text(text) => Message::Text(text.into()),
        Frame::Binary(bytes) => Message::Binary(bytes.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_once_per_codec_and_shares_bytes() {
        let d = Delivery::new(
            Topic::new("t").unwrap(),
            Payload::from_json("{\"a\":1}").unwrap(),
            None,
            "n1".into(),
        );
        let a = d.frame(Codec::Json).unwrap().clone();
        let b = d.frame(Codec::Json).unwrap().clone();
        let (Message::Text(a), Message::Text(b)) = (a, b) else {
            panic!("json frames are text")
        };
        assert_eq!(
            a.as_str(),
            r#"{"type":"message","topic":"t","payload":{"a":1}}"#
        );
        // Same allocation: the second call did not encode again.
        assert_eq!(a.as_str().as_ptr(), b.as_str().as_ptr());
        assert!(d.frame(Codec::MsgPack).unwrap().is_binary());
    }

    #[test]
    fn pattern_delivery_names_the_pattern() {
        let d = Delivery::new(
            Topic::new("metrics.cpu").unwrap(),
            Payload::from_json("1").unwrap(),
            None,
            "n1".into(),
        );
        let p = d.through_pattern(Filter::new("metrics.*").unwrap());
        let Message::Text(text) = p.frame(Codec::Json).unwrap() else {
            panic!("json frames are text")
        };
        assert_eq!(
            text.as_str(),
            r#"{"type":"message","topic":"metrics.cpu","payload":1,"sub":"metrics.*"}"#
        );
    }
}
