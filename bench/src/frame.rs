//! Building `publish` frames fast, with a send timestamp in the payload.
//!
//! The payload is a two-entry map `{"t": <send time>, "p": "<padding>"}`:
//! `t` is the send time in nanoseconds since the UNIX epoch, `p` pads the
//! encoded payload to the requested size. In MessagePack `t` is always a
//! `uint 64` (`0xcf` + 8 bytes) so that subscribers find it with a byte scan
//! (see [`crate::scan`]).
//!
//! Frames are written by hand rather than through the protocol crate's
//! `Codec::encode`, which would build a payload tree per message; the unit
//! tests check that the protocol crate decodes them to the intended `publish`.

use std::fmt::Write as _;

use starling_protocol::Codec;
use tokio_tungstenite::tungstenite::Message;

/// Digits of a send timestamp in nanoseconds, until the year 2286.
const TIMESTAMP_DIGITS: usize = 19;
/// `{"t":` + 19 digits + `,"p":"` + `"}`.
const JSON_PAYLOAD_BASE: usize = 5 + TIMESTAMP_DIGITS + 6 + 2;
/// fixmap(2), fixstr "t", uint64, fixstr "p"; the padding's header comes on top.
const MSGPACK_PAYLOAD_BASE: usize = 1 + 2 + 9 + 2;

/// Encodes `publish` frames for one codec and payload size.
#[derive(Debug, Clone)]
pub(crate) struct PublishEncoder {
    codec: Codec,
    padding: String,
}

impl PublishEncoder {
    /// An encoder whose payloads are about `payload_bytes` long as encoded
    /// (never less than the timestamp needs).
    pub(crate) fn new(codec: Codec, payload_bytes: usize) -> Self {
        let pad = match codec {
            Codec::Json => payload_bytes.saturating_sub(JSON_PAYLOAD_BASE),
            Codec::MsgPack => msgpack_padding(payload_bytes),
        };
        PublishEncoder {
            codec,
            padding: "x".repeat(pad),
        }
    }

    /// The encoded size of each payload.
    pub(crate) fn payload_len(&self) -> usize {
        let pad = self.padding.len();
        match self.codec {
            Codec::Json => JSON_PAYLOAD_BASE + pad,
            Codec::MsgPack => MSGPACK_PAYLOAD_BASE + str_header_len(pad) + pad,
        }
    }

    /// One `publish` of the payload stamped `sent_ns` to `topic` (a valid,
    /// concrete topic), with an optional correlation `id`.
    pub(crate) fn encode(&self, topic: &str, id: Option<u64>, sent_ns: u64) -> Message {
        match self.codec {
            Codec::Json => Message::text(self.json(topic, id, sent_ns)),
            Codec::MsgPack => Message::binary(self.msgpack(topic, id, sent_ns)),
        }
    }

    fn json(&self, topic: &str, id: Option<u64>, sent_ns: u64) -> String {
        let mut s = String::with_capacity(64 + topic.len() + self.padding.len());
        s.push_str(r#"{"type":"publish","#);
        if let Some(id) = id {
            write!(s, r#""id":{id},"#).expect("writing to a String cannot fail");
        }
        // Topics are validated: they hold no character JSON would escape.
        s.push_str(r#""topic":""#);
        s.push_str(topic);
        write!(s, r#"","payload":{{"t":{sent_ns},"p":""#).expect("writing to a String cannot fail");
        s.push_str(&self.padding);
        s.push_str(r#""}}"#);
        s
    }

    fn msgpack(&self, topic: &str, id: Option<u64>, sent_ns: u64) -> Vec<u8> {
        let mut b = Vec::with_capacity(48 + topic.len() + self.padding.len());
        b.push(if id.is_some() { 0x84 } else { 0x83 });
        put_str(&mut b, "type");
        put_str(&mut b, "publish");
        if let Some(id) = id {
            put_str(&mut b, "id");
            put_u64(&mut b, id);
        }
        put_str(&mut b, "topic");
        put_str(&mut b, topic);
        put_str(&mut b, "payload");
        b.push(0x82);
        put_str(&mut b, "t");
        put_u64(&mut b, sent_ns);
        put_str(&mut b, "p");
        put_str(&mut b, &self.padding);
        b
    }
}

/// The padding that makes a MessagePack payload `target` bytes long (or as
/// close as the string header sizes allow).
fn msgpack_padding(target: usize) -> usize {
    let room = target.saturating_sub(MSGPACK_PAYLOAD_BASE);
    // The largest padding whose header plus itself fits in `room`.
    [1usize, 2, 3, 5]
        .iter()
        .map(|h| room.saturating_sub(*h))
        .filter(|pad| str_header_len(*pad) + pad <= room)
        .max()
        .unwrap_or(0)
}

fn str_header_len(len: usize) -> usize {
    match len {
        0..=31 => 1,
        32..=0xff => 2,
        0x100..=0xffff => 3,
        _ => 5,
    }
}

fn put_str(b: &mut Vec<u8>, s: &str) {
    let len = s.len();
    match str_header_len(len) {
        1 => b.push(0xa0 | len as u8),
        2 => b.extend_from_slice(&[0xd9, len as u8]),
        3 => {
            b.push(0xda);
            b.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            b.push(0xdb);
            b.extend_from_slice(&(len as u32).to_be_bytes());
        }
    }
    b.extend_from_slice(s.as_bytes());
}

fn put_u64(b: &mut Vec<u8>, v: u64) {
    b.push(0xcf);
    b.extend_from_slice(&v.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use starling_protocol::{Envelope, Value};

    const T: u64 = 1_765_432_109_876_543_210;

    fn bytes(m: &Message) -> &[u8] {
        match m {
            Message::Text(t) => t.as_bytes(),
            Message::Binary(b) => b,
            other => panic!("publish frames are data frames, not {other:?}"),
        }
    }

    fn decoded(codec: Codec, m: &Message) -> (Option<u64>, String, Value) {
        match codec.decode_client(bytes(m)).unwrap() {
            Envelope::Publish { id, topic, payload } => (id, topic.to_string(), payload.to_value()),
            other => panic!("not a publish: {other:?}"),
        }
    }

    #[test]
    fn both_codecs_encode_a_publish_the_protocol_crate_decodes() {
        for codec in Codec::ALL {
            let enc = PublishEncoder::new(codec, 64);
            for id in [None, Some(0), Some(7), Some(u64::MAX)] {
                let m = enc.encode("bench.fanout", id, T);
                assert_eq!(m.is_text(), codec.is_text());
                let (got_id, topic, payload) = decoded(codec, &m);
                assert_eq!(got_id, id);
                assert_eq!(topic, "bench.fanout");
                let Value::Map(entries) = payload else {
                    panic!("payload is a map")
                };
                assert_eq!(entries[0], (Value::Str("t".into()), Value::UInt(T)));
                assert_eq!(entries[1].0, Value::Str("p".into()));
            }
        }
    }

    #[test]
    fn payload_has_the_requested_size() {
        for codec in Codec::ALL {
            for size in [40, 64, 200, 300, 1024, 70_000] {
                let enc = PublishEncoder::new(codec, size);
                assert_eq!(enc.payload_len(), size, "{codec:?} {size}");
                // The payload as the codec would write it alone.
                let m = enc.encode("a", None, T);
                let frame = bytes(&m);
                let payload_at = match codec {
                    Codec::Json => {
                        frame
                            .windows(10)
                            .position(|w| w == br#""payload":"#)
                            .unwrap()
                            + 10
                    }
                    Codec::MsgPack => {
                        frame.windows(8).position(|w| w == b"\xa7payload").unwrap() + 8
                    }
                };
                let tail = match codec {
                    Codec::Json => 1, // the frame's closing brace
                    Codec::MsgPack => 0,
                };
                assert_eq!(frame.len() - payload_at - tail, size, "{codec:?} {size}");
            }
        }
    }

    #[test]
    fn tiny_sizes_still_carry_the_timestamp() {
        assert_eq!(PublishEncoder::new(Codec::Json, 0).payload_len(), 32);
        assert_eq!(PublishEncoder::new(Codec::MsgPack, 0).payload_len(), 15);
    }

    #[test]
    fn msgpack_padding_fits_header_boundaries() {
        // 14 + 1 + 31 = 46; 32 bytes of padding need a 2-byte header, so 47
        // cannot be hit exactly and stays at 46; 48 = 14 + 2 + 32.
        assert_eq!(msgpack_padding(46), 31);
        assert_eq!(msgpack_padding(47), 31);
        assert_eq!(msgpack_padding(48), 32);
    }
}
