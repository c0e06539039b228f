//! Frame scanning: classify a broker frame and find a delivery's send
//! timestamp straight in its bytes, without decoding it.
//!
//! A `message` frame from the broker starts with its type, in both codecs
//! (`{"type":"message",...` or a MessagePack map whose first entry is
//! `type: "message"`). The payload the bench publishes is
//! `{"t": <ns>, "p": "..."}`, so the timestamp is the `t` entry after the
//! `payload` key: `"t":` followed by digits in JSON, fixstr `t` (`0xa1 0x74`)
//! followed by an unsigned integer (the bench always writes `0xcf` + 8 bytes)
//! in MessagePack. `ack` frames are recognised the same way. Anything else
//! (`lagged`, `error`, `welcome`, `pong`, or a frame laid out differently) is
//! [`Scan::Other`], for the caller to decode with the protocol crate.

use starling_protocol::Codec;

/// What a frame is, as far as a cheap look tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scan {
    /// A `message`, with the send timestamp when its payload carries one.
    Message(Option<u64>),
    /// An `ack` with this id.
    Ack(u64),
    /// Something else: decode it to know.
    Other,
}

const JSON_MESSAGE: &[u8] = br#"{"type":"message","#;
const JSON_ACK: &[u8] = br#"{"type":"ack","id":"#;
const JSON_PAYLOAD: &[u8] = br#""payload":"#;
const JSON_T: &[u8] = br#""t":"#;
const JSON_MESSAGE_TOPIC: &[u8] = br#"{"type":"message","topic":""#;
const JSON_PAYLOAD_T: &[u8] = br#"","payload":{"t":"#;

const MSGPACK_MESSAGE: &[u8] = b"\xa4type\xa7message";
const MSGPACK_ACK: &[u8] = b"\xa4type\xa3ack\xa2id";
const MSGPACK_PAYLOAD: &[u8] = b"\xa7payload";
const MSGPACK_T: &[u8] = b"\xa1t";
const MSGPACK_MESSAGE_TOPIC: &[u8] = b"\xa4type\xa7message\xa5topic";

/// Classifies one frame of `codec` from the broker.
pub(crate) fn scan(codec: Codec, frame: &[u8]) -> Scan {
    match codec {
        Codec::Json => {
            if frame.starts_with(JSON_MESSAGE) {
                Scan::Message(json_timestamp(frame))
            } else if let Some(rest) = frame.strip_prefix(JSON_ACK) {
                json_uint(rest).map_or(Scan::Other, Scan::Ack)
            } else {
                Scan::Other
            }
        }
        Codec::MsgPack => {
            let Some(body) = msgpack_map_body(frame) else {
                return Scan::Other;
            };
            if body.starts_with(MSGPACK_MESSAGE) {
                Scan::Message(msgpack_timestamp(frame))
            } else if let Some(rest) = body.strip_prefix(MSGPACK_ACK) {
                msgpack_uint(rest).map_or(Scan::Other, Scan::Ack)
            } else {
                Scan::Other
            }
        }
    }
}

/// The send timestamp of a delivery, in either codec.
pub(crate) fn timestamp(codec: Codec, frame: &[u8]) -> Option<u64> {
    match codec {
        Codec::Json => json_timestamp(frame),
        Codec::MsgPack => msgpack_timestamp(frame),
    }
}

/// `t` in a JSON `message` frame.
pub(crate) fn json_timestamp(frame: &[u8]) -> Option<u64> {
    json_timestamp_direct(frame).or_else(|| json_timestamp_search(frame))
}

/// `t` in the layout the broker writes and the bench publishes: the type,
/// the topic (which holds no quote or escape), then the payload starting
/// with `t`. `None` for any other layout.
fn json_timestamp_direct(frame: &[u8]) -> Option<u64> {
    let rest = frame.strip_prefix(JSON_MESSAGE_TOPIC)?;
    let end = rest.iter().position(|&b| b == b'"')?;
    json_uint(rest[end..].strip_prefix(JSON_PAYLOAD_T)?)
}

/// `t` anywhere: the first `"t":` after `"payload":`.
fn json_timestamp_search(frame: &[u8]) -> Option<u64> {
    let from = find(frame, JSON_PAYLOAD, 0).map_or(0, |at| at + JSON_PAYLOAD.len());
    let at = find(frame, JSON_T, from)? + JSON_T.len();
    json_uint(&frame[at..])
}

/// `t` in a MessagePack `message` frame.
pub(crate) fn msgpack_timestamp(frame: &[u8]) -> Option<u64> {
    msgpack_timestamp_direct(frame).or_else(|| msgpack_timestamp_search(frame))
}

/// `t` in the layout the broker writes and the bench publishes: the type,
/// the topic (a `str` of at most 255 bytes), then the payload map starting
/// with `t`. `None` for any other layout.
fn msgpack_timestamp_direct(frame: &[u8]) -> Option<u64> {
    let rest = msgpack_map_body(frame)?.strip_prefix(MSGPACK_MESSAGE_TOPIC)?;
    let (header, len) = match *rest.first()? {
        b @ 0xa0..=0xbf => (1, usize::from(b & 0x1f)),
        0xd9 => (2, usize::from(*rest.get(1)?)),
        _ => return None,
    };
    let rest = rest.get(header + len..)?.strip_prefix(MSGPACK_PAYLOAD)?;
    msgpack_uint(msgpack_map_body(rest)?.strip_prefix(MSGPACK_T)?)
}

/// `t` anywhere: fixstr `t` followed by an unsigned integer, after the
/// `payload` key.
fn msgpack_timestamp_search(frame: &[u8]) -> Option<u64> {
    let mut from = find(frame, MSGPACK_PAYLOAD, 0).map_or(0, |at| at + MSGPACK_PAYLOAD.len());
    // A topic or padding could hold the bytes "\xa1t" too: keep looking until
    // an integer follows.
    while let Some(at) = find(frame, MSGPACK_T, from) {
        let value = at + MSGPACK_T.len();
        if let Some(t) = msgpack_uint(&frame[value..]) {
            return Some(t);
        }
        from = at + 1;
    }
    None
}

/// The entries of a MessagePack map, after its header.
fn msgpack_map_body(frame: &[u8]) -> Option<&[u8]> {
    let header = match *frame.first()? {
        0x80..=0x8f => 1,
        0xde => 3,
        0xdf => 5,
        _ => return None,
    };
    frame.get(header..)
}

/// The decimal digits at the start of `bytes`, as a `u64`: `None` without
/// a digit, with more than 20 or over `u64::MAX`.
///
/// Every delivery's timestamp goes through here (19 digits): the first 16
/// digits are read eight at a time, where they cannot overflow.
fn json_uint(bytes: &[u8]) -> Option<u64> {
    let mut n = 0u64;
    let mut digits = 0;
    while digits < 16 {
        let Some(chunk) = bytes.get(digits..digits + 8) else {
            break;
        };
        let word = u64::from_le_bytes(chunk.try_into().expect("a slice of 8 bytes"));
        if !eight_digits(word) {
            break;
        }
        n = n * 100_000_000 + parse_eight_digits(word);
        digits += 8;
    }
    for &b in &bytes[digits..] {
        let d = b.wrapping_sub(b'0');
        if d > 9 {
            break;
        }
        if digits == 20 {
            return None;
        }
        n = n.checked_mul(10)?.checked_add(u64::from(d))?;
        digits += 1;
    }
    (digits > 0).then_some(n)
}

/// Whether the 8 bytes of `word` (read little-endian) are all ASCII digits.
fn eight_digits(word: u64) -> bool {
    const HIGH: u64 = 0xf0f0_f0f0_f0f0_f0f0;
    const ZEROS: u64 = 0x3030_3030_3030_3030;
    // 0x30..=0x39 have the high nibble 3, and keep it when 6 is added.
    word & HIGH == ZEROS && word.wrapping_add(0x0606_0606_0606_0606) & HIGH == ZEROS
}

/// The value of 8 ASCII digits read little-endian (the first digit in the
/// lowest byte): pairs, then quads, then the whole.
fn parse_eight_digits(word: u64) -> u64 {
    let v = word - 0x3030_3030_3030_3030;
    let v = (v.wrapping_mul(10) + (v >> 8)) & 0x00ff_00ff_00ff_00ff;
    let v = (v.wrapping_mul(100) + (v >> 16)) & 0x0000_ffff_0000_ffff;
    (v.wrapping_mul(10_000) + (v >> 32)) & 0xffff_ffff
}

/// A MessagePack unsigned integer at the start of `bytes`.
fn msgpack_uint(bytes: &[u8]) -> Option<u64> {
    let be = |n: usize| -> Option<u64> {
        let raw = bytes.get(1..1 + n)?;
        Some(raw.iter().fold(0u64, |v, b| (v << 8) | u64::from(*b)))
    };
    match *bytes.first()? {
        v @ 0x00..=0x7f => Some(u64::from(v)),
        0xcc => be(1),
        0xcd => be(2),
        0xce => be(4),
        0xcf => be(8),
        _ => None,
    }
}

/// The first position of `needle` in `hay` at or after `from`.
fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    let first = *needle.first()?;
    let mut at = from;
    while at + needle.len() <= hay.len() {
        let offset = hay[at..=hay.len() - needle.len()]
            .iter()
            .position(|b| *b == first)?;
        at += offset;
        if &hay[at..at + needle.len()] == needle {
            return Some(at);
        }
        at += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::PublishEncoder;
    use starling_protocol::{Envelope, Filter, Payload, Topic, Value};

    const T: u64 = 1_765_432_109_876_543_210;

    /// What the broker sends for a delivery: the protocol crate's encoding.
    fn message(codec: Codec, topic: &str, payload: Payload, offset: Option<u64>) -> Vec<u8> {
        let envelope = Envelope::Message {
            epoch: None,
            topic: Topic::new(topic).unwrap(),
            payload,
            offset,
            sub: None,
            from: None,
        };
        codec.encode(&envelope).unwrap().as_bytes().to_vec()
    }

    /// The payload as the bench publishes it, decoded as the broker would.
    fn bench_payload(publisher: Codec) -> Payload {
        let m = PublishEncoder::new(publisher, 64).encode("bench.x", Some(1), T);
        let bytes = match &m {
            tokio_tungstenite::tungstenite::Message::Text(t) => t.as_bytes().to_vec(),
            tokio_tungstenite::tungstenite::Message::Binary(b) => b.to_vec(),
            _ => unreachable!("publish frames are data frames"),
        };
        match publisher.decode_client(&bytes).unwrap() {
            Envelope::Publish { payload, .. } => payload,
            other => panic!("not a publish: {other:?}"),
        }
    }

    #[test]
    fn finds_the_timestamp_in_every_codec_pairing() {
        for publisher in Codec::ALL {
            for subscriber in Codec::ALL {
                let frame = message(subscriber, "bench.fanout", bench_payload(publisher), None);
                assert_eq!(
                    scan(subscriber, &frame),
                    Scan::Message(Some(T)),
                    "{publisher:?} -> {subscriber:?}"
                );
            }
        }
    }

    #[test]
    fn the_broker_layout_is_read_directly() {
        for publisher in Codec::ALL {
            let long_topic = format!("bench.{}", "x".repeat(100));
            for topic in ["t", "bench.fanout", long_topic.as_str()] {
                let json = message(Codec::Json, topic, bench_payload(publisher), None);
                assert_eq!(json_timestamp_direct(&json), Some(T), "{topic}");
                let msgpack = message(Codec::MsgPack, topic, bench_payload(publisher), None);
                assert_eq!(msgpack_timestamp_direct(&msgpack), Some(T), "{topic}");
            }
        }
    }

    #[test]
    fn other_layouts_fall_back_to_the_search() {
        let json = br#"{"topic":"a","type":"message","payload":{"p":"x","t":42}}"#;
        assert_eq!(json_timestamp_direct(json), None);
        assert_eq!(json_timestamp(json), Some(42));
        let json = br#"{"type":"message","topic":"a","payload":{"p":"x","t":42}}"#;
        assert_eq!(json_timestamp_direct(json), None);
        assert_eq!(json_timestamp(json), Some(42));
        let payload = Payload::from_value(Value::Map(vec![
            (Value::Str("p".into()), Value::Str("x".into())),
            (Value::Str("t".into()), Value::UInt(42)),
        ]));
        let msgpack = message(Codec::MsgPack, "a", payload, None);
        assert_eq!(msgpack_timestamp_direct(&msgpack), None);
        assert_eq!(msgpack_timestamp(&msgpack), Some(42));
    }

    #[test]
    fn finds_the_timestamp_with_history_offset_and_pattern() {
        for codec in Codec::ALL {
            let envelope = Envelope::Message {
                epoch: None,
                topic: Topic::new("t.t").unwrap(),
                payload: bench_payload(codec),
                offset: Some(99),
                sub: Some(Filter::new("t.*").unwrap()),
                from: None,
            };
            let frame = codec.encode(&envelope).unwrap();
            assert_eq!(scan(codec, frame.as_bytes()), Scan::Message(Some(T)));
        }
    }

    #[test]
    fn a_topic_named_t_does_not_confuse_the_scan() {
        let payload = Payload::from_value(Value::Map(vec![
            (Value::Str("p".into()), Value::Str("t".into())),
            (Value::Str("t".into()), Value::UInt(5)),
        ]));
        for codec in Codec::ALL {
            let frame = message(codec, "t", payload.clone(), None);
            assert_eq!(timestamp(codec, &frame), Some(5), "{codec:?}");
        }
    }

    #[test]
    fn small_msgpack_integers_are_read_too() {
        for t in [0u64, 127, 128, 300, 70_000, 5_000_000_000] {
            let payload =
                Payload::from_value(Value::Map(vec![(Value::Str("t".into()), Value::UInt(t))]));
            let frame = message(Codec::MsgPack, "a.b", payload, None);
            assert_eq!(msgpack_timestamp(&frame), Some(t));
        }
    }

    #[test]
    fn a_message_without_timestamp_is_still_a_message() {
        for codec in Codec::ALL {
            let frame = message(codec, "a", Payload::from_json(r#"{"x":1}"#).unwrap(), None);
            assert_eq!(scan(codec, &frame), Scan::Message(None));
        }
    }

    #[test]
    fn acks_are_recognised_with_their_id() {
        for codec in Codec::ALL {
            for id in [0, 1, 127, 128, 65_535, 1 << 40, u64::MAX] {
                let frame = codec
                    .encode(&Envelope::Ack {
                        epoch: None,
                        id,
                        offset: None,
                    })
                    .unwrap();
                assert_eq!(
                    scan(codec, frame.as_bytes()),
                    Scan::Ack(id),
                    "{codec:?} {id}"
                );
            }
        }
    }

    #[test]
    fn lagged_and_errors_are_other() {
        let lagged = Envelope::Lagged {
            reset: false,
            topic: Filter::new("a").unwrap(),
            missed: Some(3),
        };
        let error = Envelope::error(Some(1), starling_protocol::ErrorCode::BadFrame, "no");
        for codec in Codec::ALL {
            for envelope in [&lagged, &error, &Envelope::Pong { id: None }] {
                let frame = codec.encode(envelope).unwrap();
                assert_eq!(scan(codec, frame.as_bytes()), Scan::Other);
            }
        }
    }

    #[test]
    fn garbage_is_other_and_does_not_panic() {
        for codec in Codec::ALL {
            for frame in [
                &b""[..],
                b"{",
                br#"{"type":"message","payload":{"t":"#,
                br#"{"type":"ack","id":x}"#,
                b"\x81\xa4type\xa7message\xa7payload\xa1t\xcf\x01",
                b"\x83",
                b"\xde\x00",
            ] {
                let _ = scan(codec, frame);
            }
        }
        assert_eq!(
            scan(Codec::Json, br#"{"type":"message","payload":{"t":"#),
            Scan::Message(None)
        );
        assert_eq!(json_uint(b"99999999999999999999999"), None);
        assert_eq!(json_uint(b"18446744073709551615"), Some(u64::MAX));
        assert_eq!(json_uint(b"18446744073709551616"), None);
    }

    #[test]
    fn json_uint_reads_like_a_plain_digit_loop() {
        /// The obvious reading, to compare with.
        fn reference(bytes: &[u8]) -> Option<u64> {
            let digits = bytes.iter().take_while(|b| b.is_ascii_digit()).count();
            if digits == 0 || digits > 20 {
                return None;
            }
            bytes[..digits].iter().try_fold(0u64, |n, d| {
                n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
            })
        }
        let mut cases: Vec<String> = vec![
            String::new(),
            "x".into(),
            "0".into(),
            "7,".into(),
            "12345678".into(),
            "12345678}".into(),
            "1234567/9".into(),
            "1234567:9".into(),
            "1234567890123456".into(),
            "12345678901234567".into(),
            "1765432109876543210".into(),
            "1765432109876543210,\"p\":\"xxxxxxxx\"".into(),
            "18446744073709551615".into(),
            "18446744073709551616".into(),
            "99999999999999999999".into(),
            "00000000000000000001".into(),
            "000000000000000000001".into(),
            "99999999999999999999999".into(),
        ];
        // Every length, and every position of a non-digit.
        let digits = "98765432109876543210123";
        for len in 0..=digits.len() {
            cases.push(digits[..len].to_owned());
            for stop in 0..len {
                let mut s = digits.as_bytes()[..len].to_vec();
                s[stop] = b'"';
                cases.push(String::from_utf8(s).unwrap());
            }
        }
        for case in &cases {
            assert_eq!(
                json_uint(case.as_bytes()),
                reference(case.as_bytes()),
                "{case:?}"
            );
        }
    }

    #[test]
    fn find_finds() {
        assert_eq!(find(b"abcabc", b"bc", 0), Some(1));
        assert_eq!(find(b"abcabc", b"bc", 2), Some(4));
        assert_eq!(find(b"abcabc", b"bd", 0), None);
        assert_eq!(find(b"ab", b"abc", 0), None);
        assert_eq!(find(b"abc", b"c", 3), None);
    }
}
