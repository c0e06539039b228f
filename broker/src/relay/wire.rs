//! What nodes exchange through Redis: channel names and the relayed message.
//!
//! A topic's messages travel on the channel `<prefix>:t:<topic>`; a pattern
//! subscription maps to a Redis glob over those channels. A relayed message
//! is version, flags, send time, origin node, topic, the publisher's
//! identity when the flags say so, and payload, encoded once by its origin.
//! The channel of a topic with history in Redis carries its messages
//! numbered (`h<offset> <epoch> <message>`), and the channel of a presence
//! topic also carries its `join` and `leave` events (`p<JSON event>`).

use starling_protocol::{Codec, Envelope, Filter, Payload, Topic};

const VERSION: u8 = 1;
const FLAG_JSON: u8 = 1;
/// The publisher's identity follows the topic (two bytes of length, then it).
const FLAG_FROM: u8 = 2;

/// Redis channel names for topics and patterns.
#[derive(Debug, Clone)]
pub(crate) struct Names {
    prefix: String,
    /// Channels carry the topic as a hash tag, `<prefix>:t:{<topic>}`, so
    /// that in a Redis Cluster a topic's channel and history keys live on
    /// one shard.
    tagged: bool,
}

/// What a node subscribes to in Redis for one topic or pattern.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Subscription {
    /// A topic's channel (`SUBSCRIBE`, `SSUBSCRIBE`).
    Channel(String),
    /// A glob over topic channels (`PSUBSCRIBE`), for a pattern.
    Glob(String),
}

impl Names {
    pub(crate) fn new(prefix: &str) -> Self {
        Names {
            prefix: prefix.to_owned(),
            tagged: false,
        }
    }

    /// Names for sharded pub/sub: topic channels carry a hash tag.
    pub(crate) fn tagged(prefix: &str) -> Self {
        Names {
            prefix: prefix.to_owned(),
            tagged: true,
        }
    }

    /// The prefix of every channel name.
    pub(crate) fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The channel of `topic`.
    pub(crate) fn channel(&self, topic: &str) -> String {
        if self.tagged {
            format!("{}:t:{{{topic}}}", self.prefix)
        } else {
            format!("{}:t:{topic}", self.prefix)
        }
    }

    /// The key of `topic`'s history stream.
    pub(crate) fn stream(&self, topic: &str) -> String {
        format!("{}:h:{{{topic}}}", self.prefix)
    }

    /// The key of the hash with `topic`'s epoch and latest offset.
    pub(crate) fn meta(&self, topic: &str) -> String {
        format!("{}:e:{{{topic}}}", self.prefix)
    }

    /// The Redis subscription for a filter: a channel for a topic, a glob for
    /// a pattern. Globs can match more than the pattern (`*` spans dots); the
    /// receiving node filters exactly.
    pub(crate) fn subscription(&self, filter: &Filter) -> Subscription {
        if !filter.is_pattern() {
            return Subscription::Channel(self.channel(filter.as_str()));
        }
        let glob: Vec<&str> = filter
            .as_str()
            .split('.')
            .map(|token| if token == ">" { "*" } else { token })
            .collect();
        Subscription::Glob(self.channel(&glob.join(".")))
    }

    /// The topic (or the glob over topics) behind a channel name.
    pub(crate) fn topic_of<'a>(&self, channel: &'a str) -> Option<&'a str> {
        let topic = channel
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix(":t:")?;
        if self.tagged {
            topic.strip_prefix('{')?.strip_suffix('}')
        } else {
            Some(topic)
        }
    }
}

/// Whether `pattern` is relayed through `glob` (as [`Names::subscription`]
/// maps it, without the prefix): the same tokens, with `>` as `*`.
pub(crate) fn relayed_through(pattern: &Filter, glob: &str) -> bool {
    let mut globs = glob.split('.');
    for token in pattern.as_str().split('.') {
        let token = if token == ">" { "*" } else { token };
        if globs.next() != Some(token) {
            return false;
        }
    }
    globs.next().is_none()
}

/// One message on its way to the other nodes.
pub(crate) struct Outbound {
    pub(crate) topic: Topic,
    pub(crate) payload: Payload,
    pub(crate) from: Option<std::sync::Arc<str>>,
    pub(crate) sent_at_us: u64,
}

impl std::fmt::Debug for Outbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbound")
            .field("topic", &self.topic)
            .finish()
    }
}

/// Encodes a relayed message from node `origin`.
pub(crate) fn encode(origin: &str, out: &Outbound) -> Vec<u8> {
    let (json, payload) = out.payload.to_relay();
    let topic = out.topic.as_str().as_bytes();
    let origin = &origin.as_bytes()[..origin.len().min(255)];
    let from = out
        .from
        .as_deref()
        .map(|from| &from.as_bytes()[..from.len().min(u16::MAX as usize)]);
    let mut buf = Vec::with_capacity(
        14 + origin.len() + topic.len() + from.map_or(0, <[u8]>::len) + payload.len(),
    );
    buf.push(VERSION);
    let mut flags = if json { FLAG_JSON } else { 0 };
    if from.is_some() {
        flags |= FLAG_FROM;
    }
    buf.push(flags);
    buf.extend_from_slice(&out.sent_at_us.to_be_bytes());
    buf.push(origin.len() as u8);
    buf.extend_from_slice(origin);
    buf.push(topic.len() as u8);
    buf.extend_from_slice(topic);
    if let Some(from) = from {
        buf.extend_from_slice(&(from.len() as u16).to_be_bytes());
        buf.extend_from_slice(from);
    }
    buf.extend_from_slice(&payload);
    buf
}

/// A decoded relayed message.
pub(crate) struct Relayed<'a> {
    pub(crate) origin: &'a str,
    pub(crate) sent_at_us: u64,
    pub(crate) topic: &'a str,
    pub(crate) from: Option<&'a str>,
    json: bool,
    payload: &'a [u8],
}

impl Relayed<'_> {
    /// The payload, when it decodes.
    pub(crate) fn payload(&self) -> Option<Payload> {
        Payload::from_relay(self.json, self.payload).ok()
    }
}

/// Decodes a relayed message; `None` when it is not one.
pub(crate) fn decode(bytes: &[u8]) -> Option<Relayed<'_>> {
    let (&version, rest) = bytes.split_first()?;
    if version != VERSION {
        return None;
    }
    let (&flags, rest) = rest.split_first()?;
    let (sent, rest) = rest.split_at_checked(8)?;
    let sent_at_us = u64::from_be_bytes(sent.try_into().ok()?);
    let (&origin_len, rest) = rest.split_first()?;
    let (origin, rest) = rest.split_at_checked(origin_len as usize)?;
    let (&topic_len, rest) = rest.split_first()?;
    let (topic, rest) = rest.split_at_checked(topic_len as usize)?;
    let (from, payload) = if flags & FLAG_FROM != 0 {
        let (len, rest) = rest.split_at_checked(2)?;
        let len = u16::from_be_bytes(len.try_into().ok()?);
        let (from, rest) = rest.split_at_checked(len as usize)?;
        (Some(std::str::from_utf8(from).ok()?), rest)
    } else {
        (None, rest)
    };
    Some(Relayed {
        origin: std::str::from_utf8(origin).ok()?,
        sent_at_us,
        topic: std::str::from_utf8(topic).ok()?,
        from,
        json: flags & FLAG_JSON != 0,
        payload,
    })
}

/// Splits a numbered channel message, `h<offset> <epoch> <message>`, into
/// its parts; `None` when it is not one.
pub(crate) fn split_numbered(bytes: &[u8]) -> Option<(u64, &str, &[u8])> {
    let rest = bytes.strip_prefix(b"h")?;
    let space = rest.iter().position(|&b| b == b' ')?;
    let offset = std::str::from_utf8(&rest[..space]).ok()?.parse().ok()?;
    let rest = &rest[space + 1..];
    let space = rest.iter().position(|&b| b == b' ')?;
    let epoch = std::str::from_utf8(&rest[..space]).ok()?;
    Some((offset, epoch, &rest[space + 1..]))
}

/// A presence event as it travels on a topic's channel.
pub(crate) fn event(event: &Envelope) -> Vec<u8> {
    let mut bytes = b"p".to_vec();
    if let Ok(frame) = Codec::Json.encode(event) {
        bytes.extend_from_slice(frame.as_bytes());
    }
    bytes
}

/// The presence event in a channel message, when it is one.
pub(crate) fn split_event(bytes: &[u8]) -> Option<&[u8]> {
    bytes.strip_prefix(b"p")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(s: &str) -> Filter {
        Filter::new(s).unwrap()
    }

    #[test]
    fn patterns_map_to_globs() {
        let names = Names::new("st");
        assert_eq!(
            names.subscription(&f("a.b")),
            Subscription::Channel("st:t:a.b".into())
        );
        assert_eq!(
            names.subscription(&f("a.*.c")),
            Subscription::Glob("st:t:a.*.c".into())
        );
        assert_eq!(
            names.subscription(&f("metrics.>")),
            Subscription::Glob("st:t:metrics.*".into())
        );
        assert_eq!(names.topic_of("st:t:a.b"), Some("a.b"));
        assert_eq!(names.topic_of("other:t:a.b"), None);
        let tagged = Names::tagged("st");
        assert_eq!(tagged.channel("a.b"), "st:t:{a.b}");
        assert_eq!(tagged.topic_of("st:t:{a.b}"), Some("a.b"));
        assert_eq!(tagged.topic_of("st:t:a.b"), None);
        assert_eq!(tagged.stream("a.b"), "st:h:{a.b}");
    }

    #[test]
    fn a_pattern_is_relayed_through_its_own_glob_only() {
        let names = Names::new("st");
        for pattern in ["metrics.>", "metrics.*", "a.*.c", "*.b", ">"] {
            let Subscription::Glob(glob) = names.subscription(&f(pattern)) else {
                panic!("{pattern} maps to a glob");
            };
            let glob = names.topic_of(&glob).unwrap();
            assert!(relayed_through(&f(pattern), glob), "{pattern} via {glob}");
        }
        assert!(!relayed_through(&f("metrics.*"), "metrics.*.x"));
        assert!(!relayed_through(&f("metrics.*.x"), "metrics.*"));
        assert!(!relayed_through(&f("a.*"), "b.*"));
    }

    #[test]
    fn numbered_messages_split_into_offset_epoch_and_message() {
        assert_eq!(
            split_numbered(b"h42 abc-1 \x01rest"),
            Some((42, "abc-1", &b"\x01rest"[..]))
        );
        assert_eq!(split_numbered(b"\x01plain"), None);
        assert_eq!(split_numbered(b"hx y z"), None);
        assert_eq!(split_numbered(b"h1 nospace"), None);
    }

    #[test]
    fn relay_messages_round_trip() {
        let out = Outbound {
            topic: Topic::new("chat.lobby").unwrap(),
            payload: Payload::from_json(r#"{"text":"hi"}"#).unwrap(),
            from: None,
            sent_at_us: 42,
        };
        let bytes = encode("n1", &out);
        let back = decode(&bytes).unwrap();
        assert_eq!(
            (back.origin, back.topic, back.sent_at_us, back.from),
            ("n1", "chat.lobby", 42, None)
        );
        assert_eq!(back.payload().unwrap(), out.payload);
        let signed = Outbound {
            from: Some("ada".into()),
            ..out
        };
        let bytes = encode("n1", &signed);
        let back = decode(&bytes).unwrap();
        assert_eq!((back.topic, back.from), ("chat.lobby", Some("ada")));
        assert_eq!(back.payload().unwrap(), signed.payload);
        assert!(decode(&bytes[..5]).is_none());
        assert!(decode(&[9, 0]).is_none());
    }
}
