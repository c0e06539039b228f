//! One published message on its way to subscribers.

use std::sync::{Arc, OnceLock};

use starling_protocol::{Codec, Envelope, Filter, Frame, Payload, Topic, Value};

use starling_protocol::framing::{self, Kind};

/// A message as it travels through a topic's broadcast channel.
///
/// Every subscriber of the topic receives the same `Arc<Delivery>`. Its wire
/// frame is encoded at most once per codec, on first use, as a complete
/// WebSocket frame (header included), and then shared: a subscriber's writer
/// copies those bytes into its outbound buffer, it never re-encodes.
#[derive(Debug)]
pub struct Delivery {
    /// The concrete topic it was published to.
    pub(crate) topic: Topic,
    /// The payload, as published.
    pub(crate) payload: Payload,
    /// Its offset, when the topic keeps history.
    pub(crate) offset: Option<u64>,
    /// The epoch of its offset.
    pub(crate) epoch: Option<Arc<str>>,
    /// The pattern it matched, for deliveries through a pattern subscription.
    pub(crate) sub: Option<Filter>,
    /// The node it was published on.
    pub(crate) origin: Arc<str>,
    /// The publisher's identity, when auth is on.
    pub(crate) from: Option<Arc<str>>,
    /// A broker event on the topic (`join`, `leave`) sent instead of a
    /// `message`.
    event: Option<Box<Envelope>>,
    /// What memory bounds count it as: its payload and topic, in bytes.
    weight: usize,
    encoded: [OnceLock<Option<Box<[u8]>>>; 2],
}

impl crate::ring::Weigh for Arc<Delivery> {
    fn weight(&self) -> usize {
        self.weight
    }
}

impl Delivery {
    /// A new delivery of `payload` on `topic`, published on node `origin`.
    pub fn new(topic: Topic, payload: Payload, offset: Option<u64>, origin: Arc<str>) -> Self {
        Delivery {
            weight: payload.weight() + topic.as_str().len(),
            topic,
            payload,
            offset,
            epoch: None,
            sub: None,
            origin,
            from: None,
            event: None,
            encoded: Default::default(),
        }
    }

    /// A broker event on `topic` (`join`, `leave`), delivered in order with
    /// its messages.
    pub(crate) fn event(topic: Topic, event: Envelope, origin: Arc<str>) -> Self {
        let mut delivery = Delivery::new(topic, Payload::from_value(Value::Null), None, origin);
        delivery.event = Some(Box::new(event));
        delivery
    }

    /// The same delivery, published by `from` (a token's `sub`).
    pub(crate) fn with_from(mut self, from: Option<Arc<str>>) -> Self {
        self.from = from;
        self
    }

    /// The same delivery, its offset in history epoch `epoch`.
    pub(crate) fn with_epoch(mut self, epoch: Arc<str>) -> Self {
        self.epoch = Some(epoch);
        self
    }

    /// The same message, as delivered through the pattern subscription `sub`.
    pub(crate) fn through_pattern(&self, sub: Filter) -> Self {
        Delivery {
            topic: self.topic.clone(),
            payload: self.payload.clone(),
            offset: self.offset,
            epoch: self.epoch.clone(),
            sub: Some(sub),
            origin: self.origin.clone(),
            from: self.from.clone(),
            event: self.event.clone(),
            weight: self.weight,
            encoded: Default::default(),
        }
    }

    /// The type of the frame it is sent as: `message`, or the event's
    /// (`join`, `leave`).
    pub(crate) fn kind(&self) -> &'static str {
        self.event
            .as_ref()
            .map_or("message", |event| event.type_name())
    }

    /// The `message` frame in `codec` as WebSocket frame bytes, encoded on
    /// first use. `None` when the payload cannot be expressed in that codec.
    pub fn wire(&self, codec: Codec) -> Option<&[u8]> {
        let slot = match codec {
            Codec::Json => &self.encoded[0],
            Codec::MsgPack => &self.encoded[1],
        };
        slot.get_or_init(|| {
            if let Some(event) = &self.event {
                return codec.encode(event).ok().map(|frame| {
                    let mut wire = Vec::new();
                    write_protocol_frame(&mut wire, &frame);
                    wire.into_boxed_slice()
                });
            }
            let envelope = Envelope::Message {
                topic: self.topic.clone(),
                payload: self.payload.clone(),
                offset: self.offset,
                epoch: self.epoch.clone(),
                sub: self.sub.clone(),
                from: self.from.clone(),
            };
            match codec.encode(&envelope) {
                Ok(frame) => {
                    let mut wire = Vec::new();
                    write_protocol_frame(&mut wire, &frame);
                    Some(wire.into_boxed_slice())
                }
                Err(error) => {
                    tracing::error!(topic = %self.topic, %error, "cannot encode message");
                    None
                }
            }
        })
        .as_deref()
    }
}

/// Appends a protocol frame as one WebSocket message: the one place where
/// the two meet.
pub(crate) fn write_protocol_frame(out: &mut Vec<u8>, frame: &Frame) {
    match frame {
        Frame::Text(text) => framing::write_message(out, Kind::Text, text.as_bytes()),
        Frame::Binary(bytes) => framing::write_message(out, Kind::Binary, bytes),
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
        let a = d.wire(Codec::Json).unwrap();
        let b = d.wire(Codec::Json).unwrap();
        let text = r#"{"type":"message","topic":"t","payload":{"a":1}}"#;
        // A final text frame (0x81) of its length, unmasked.
        assert_eq!(&a[..2], &[0x81, text.len() as u8]);
        assert_eq!(&a[2..], text.as_bytes());
        // Same allocation: the second call did not encode again.
        assert_eq!(a.as_ptr(), b.as_ptr());
        // A final binary frame.
        assert_eq!(d.wire(Codec::MsgPack).unwrap()[0], 0x82);
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
        let wire = p.wire(Codec::Json).unwrap();
        assert_eq!(
            &wire[2..],
            br#"{"type":"message","topic":"metrics.cpu","payload":1,"sub":"metrics.*"}"#
        );
    }
}
