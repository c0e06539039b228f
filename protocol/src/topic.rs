//! Topic names and subscription filters.
//!
//! A topic is 1 to 255 bytes of tokens made of `[A-Za-z0-9_\-:]`, separated by
//! single dots. A [`Filter`] is what a `subscribe` names: either a concrete
//! [`Topic`] or a pattern with `*` (exactly one token) and a trailing `>` (one
//! or more tokens).

use std::borrow::Borrow;
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The longest topic or filter, in bytes.
pub const MAX_TOPIC_BYTES: usize = 255;

/// Why a string is not a valid topic or filter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// The name is empty.
    #[error("topic name is empty")]
    Empty,
    /// The name is longer than [`MAX_TOPIC_BYTES`].
    #[error("topic name is {0} bytes, more than the limit of 255")]
    TooLong(usize),
    /// Two dots in a row, or a leading or trailing dot.
    #[error("empty token in topic name")]
    EmptyToken,
    /// A byte outside `[A-Za-z0-9_\-:]` (and outside `*`/`>` for filters).
    #[error("invalid character {0:?} in topic name")]
    InvalidChar(char),
    /// A wildcard used where only concrete topics are allowed (publish).
    #[error("wildcards are only allowed in subscribe")]
    Wildcard,
    /// `*` or `>` mixed with other characters in one token, or `>` not last.
    #[error("a wildcard must be a whole token, and `>` only the last one")]
    MisplacedWildcard,
}

/// Whether a topic is reserved for the broker (its first token starts with `$`).
fn is_reserved_name(name: &str) -> bool {
    name.starts_with('$')
}

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b':')
}

/// Validates `name` as a topic (`allow_wildcards == false`) or a filter.
/// Returns whether it holds a wildcard.
fn validate(name: &str, allow_wildcards: bool) -> Result<bool, TopicError> {
    if name.is_empty() {
        return Err(TopicError::Empty);
    }
    if name.len() > MAX_TOPIC_BYTES {
        return Err(TopicError::TooLong(name.len()));
    }
    let mut wildcard = false;
    let mut tokens = name.split('.').peekable();
    let mut first = true;
    while let Some(token) = tokens.next() {
        if token.is_empty() {
            return Err(TopicError::EmptyToken);
        }
        // `$` may start the first token only: it marks broker topics.
        let body = if first {
            token.strip_prefix('$').unwrap_or(token)
        } else {
            token
        };
        first = false;
        if token == "*" || token == ">" {
            if !allow_wildcards {
                return Err(TopicError::Wildcard);
            }
            if token == ">" && tokens.peek().is_some() {
                return Err(TopicError::MisplacedWildcard);
            }
            wildcard = true;
            continue;
        }
        if body.is_empty() {
            return Err(TopicError::EmptyToken);
        }
        if let Some(c) = body
            .chars()
            .find(|c| !(c.is_ascii() && is_token_byte(*c as u8)))
        {
            return Err(if c == '*' || c == '>' {
                if allow_wildcards {
                    TopicError::MisplacedWildcard
                } else {
                    TopicError::Wildcard
                }
            } else {
                TopicError::InvalidChar(c)
            });
        }
    }
    Ok(wildcard)
}

/// A validated, concrete topic name. Cheap to clone (shared string).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Topic(Arc<str>);

impl Topic {
    /// Validates `name` as a concrete topic.
    ///
    /// ```
    /// use starling_protocol::Topic;
    /// assert!(Topic::new("chat.room-42").is_ok());
    /// assert!(Topic::new("chat..bad").is_err());
    /// assert!(Topic::new("metrics.>").is_err());
    /// ```
    pub fn new(name: &str) -> Result<Self, TopicError> {
        validate(name, false)?;
        Ok(Self(Arc::from(name)))
    }

    /// The topic as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The shared string behind the topic.
    pub fn as_arc(&self) -> &Arc<str> {
        &self.0
    }

    /// Whether this topic is reserved for the broker (`$sys.…`).
    pub fn is_reserved(&self) -> bool {
        is_reserved_name(&self.0)
    }

    /// The dot-separated tokens of the topic.
    pub fn tokens(&self) -> std::str::Split<'_, char> {
        self.0.split('.')
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl Borrow<str> for Topic {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Topic {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for Topic {
    type Err = TopicError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl Serialize for Topic {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Topic {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = std::borrow::Cow::<'de, str>::deserialize(d)?;
        Topic::new(&s).map_err(serde::de::Error::custom)
    }
}

/// What a subscription names: a concrete topic or a wildcard pattern.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Filter {
    name: Arc<str>,
    wildcard: bool,
}

impl Filter {
    /// Validates `name` as a topic or a pattern.
    ///
    /// ```
    /// use starling_protocol::Filter;
    /// let f = Filter::new("metrics.*.cpu").unwrap();
    /// assert!(f.is_pattern());
    /// assert!(f.matches("metrics.host1.cpu"));
    /// assert!(!f.matches("metrics.host1.mem"));
    /// assert!(Filter::new("metrics.>.cpu").is_err());
    /// ```
    pub fn new(name: &str) -> Result<Self, TopicError> {
        let wildcard = validate(name, true)?;
        Ok(Self {
            name: Arc::from(name),
            wildcard,
        })
    }

    /// The filter as a string.
    pub fn as_str(&self) -> &str {
        &self.name
    }

    /// The shared string behind the filter.
    pub fn as_arc(&self) -> &Arc<str> {
        &self.name
    }

    /// Whether the filter holds `*` or `>`.
    pub fn is_pattern(&self) -> bool {
        self.wildcard
    }

    /// The concrete topic this filter names, when it is not a pattern.
    pub fn as_topic(&self) -> Option<Topic> {
        (!self.wildcard).then(|| Topic(self.name.clone()))
    }

    /// Whether every topic that `inner` matches, this filter matches too:
    /// a subscription to `inner` asks for nothing outside this filter.
    /// A topic is covered by itself and by every pattern that matches it;
    /// `chat.>` covers `chat.*` and `chat.room1`, `chat.*` does not cover
    /// `chat.>`, and a wildcard first token (`>`, `*.x`) covers no `$` topic.
    ///
    /// ```
    /// use starling_protocol::Filter;
    /// let f = |s: &str| Filter::new(s).unwrap();
    /// assert!(f("chat.>").covers(&f("chat.*")));
    /// assert!(f("chat.>").covers(&f("chat.room1.messages")));
    /// assert!(f("rooms.*.messages").covers(&f("rooms.42.messages")));
    /// assert!(!f("chat.*").covers(&f("chat.>")));
    /// assert!(!f(">").covers(&f("$sys.stats")));
    /// ```
    pub fn covers(&self, inner: &Filter) -> bool {
        let mut outer_tokens = self.name.split('.');
        let mut inner_tokens = inner.name.split('.');
        let mut first = true;
        loop {
            match (outer_tokens.next(), inner_tokens.next()) {
                // The rest of `inner` is one or more tokens, whatever they are.
                (Some(">"), Some(token)) => return !(first && token.starts_with('$')),
                (Some(_), None) | (None, Some(_)) => return false,
                (None, None) => return true,
                // `inner` goes on with any tokens; only `>` takes them all.
                (Some(_), Some(">")) => return false,
                (Some("*"), Some(token)) => {
                    if first && token.starts_with('$') {
                        return false;
                    }
                }
                (Some(literal), Some(token)) => {
                    if literal != token {
                        return false;
                    }
                }
            }
            first = false;
        }
    }

    /// Whether `topic` is matched by this filter.
    ///
    /// As in MQTT, a filter whose first token is a wildcard does not match
    /// reserved topics (`$sys.…`): those must be named, as in `$sys.>`.
    pub fn matches(&self, topic: &str) -> bool {
        if !self.wildcard {
            return &*self.name == topic;
        }
        if is_reserved_name(topic) && (self.name.starts_with('*') || self.name.starts_with('>')) {
            return false;
        }
        let mut topic_tokens = topic.split('.');
        for pattern_token in self.name.split('.') {
            match pattern_token {
                ">" => return topic_tokens.next().is_some(),
                "*" => {
                    if topic_tokens.next().is_none() {
                        return false;
                    }
                }
                literal => {
                    if topic_tokens.next() != Some(literal) {
                        return false;
                    }
                }
            }
        }
        topic_tokens.next().is_none()
    }
}

impl std::str::FromStr for Filter {
    type Err = TopicError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl From<Topic> for Filter {
    fn from(topic: Topic) -> Self {
        Self {
            name: topic.0,
            wildcard: false,
        }
    }
}

impl fmt::Display for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

impl fmt::Debug for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.name, f)
    }
}

impl Serialize for Filter {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.name)
    }
}

impl<'de> Deserialize<'de> for Filter {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = std::borrow::Cow::<'de, str>::deserialize(d)?;
        Filter::new(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn covers_follows_the_permission_table() {
        let f = |s: &str| Filter::new(s).unwrap();
        // (filter, subscription, covered)
        let table = [
            ("chat.>", "chat.>", true),
            ("chat.>", "chat.*", true),
            ("chat.>", "chat.room1", true),
            ("chat.>", "chat.room1.typing", true),
            ("chat.>", "chat.*.typing", true),
            ("chat.>", "chat", false),
            ("chat.>", "chatter.x", false),
            ("chat.>", ">", false),
            ("chat.>", "*.room1", false),
            ("chat.*", "chat.room1", true),
            ("chat.*", "chat.*", true),
            ("chat.*", "chat.>", false),
            ("chat.*", "chat.room1.typing", false),
            ("chat.*", "chat", false),
            ("rooms.*.messages", "rooms.42.messages", true),
            ("rooms.*.messages", "rooms.*.messages", true),
            ("rooms.*.messages", "rooms.42.>", false),
            ("rooms.*.messages", "rooms.42.typing", false),
            ("$sys.stats", "$sys.stats", true),
            ("$sys.stats", "$sys.*", false),
            ("$sys.>", "$sys.stats", true),
            (">", "anything.at.all", true),
            (">", "*", true),
            (">", "*.x", true),
            (">", ">", true),
            (">", "$sys.stats", false),
            (">", "$sys.>", false),
            ("*.stats", "$sys.stats", false),
            ("*", "a", true),
            ("*", "*", true),
            ("*", ">", false),
            ("a.b", "a.b", true),
            ("a.b", "a.c", false),
            ("a.b", "a.*", false),
            ("a.b.c", "a.b", false),
        ];
        for (filter, inner, covered) in table {
            assert_eq!(
                f(filter).covers(&f(inner)),
                covered,
                "{filter} covers {inner}"
            );
        }
    }

    #[test]
    fn valid_topics() {
        for name in [
            "a",
            "chat.room-42",
            "metrics.cpu.host1",
            "a:b_c-d.E9",
            "$sys.stats",
        ] {
            assert!(Topic::new(name).is_ok(), "{name}");
        }
        assert!(Topic::new(&"a".repeat(255)).is_ok());
    }

    #[test]
    fn invalid_topics() {
        assert_eq!(Topic::new(""), Err(TopicError::Empty));
        assert_eq!(Topic::new(&"a".repeat(256)), Err(TopicError::TooLong(256)));
        assert_eq!(Topic::new("chat..bad"), Err(TopicError::EmptyToken));
        assert_eq!(Topic::new(".a"), Err(TopicError::EmptyToken));
        assert_eq!(Topic::new("a."), Err(TopicError::EmptyToken));
        assert_eq!(Topic::new("$"), Err(TopicError::EmptyToken));
        assert_eq!(Topic::new("a b"), Err(TopicError::InvalidChar(' ')));
        assert_eq!(Topic::new("a.$b"), Err(TopicError::InvalidChar('$')));
        assert_eq!(Topic::new("é"), Err(TopicError::InvalidChar('é')));
        assert_eq!(Topic::new("a.*"), Err(TopicError::Wildcard));
        assert_eq!(Topic::new("a.>"), Err(TopicError::Wildcard));
        assert_eq!(Topic::new("a*"), Err(TopicError::Wildcard));
    }

    #[test]
    fn reserved_topics() {
        assert!(Topic::new("$sys.stats").unwrap().is_reserved());
        assert!(!Topic::new("sys.stats").unwrap().is_reserved());
    }

    #[test]
    fn filters_validate_wildcards() {
        assert!(!Filter::new("a.b").unwrap().is_pattern());
        assert!(Filter::new("a.*").unwrap().is_pattern());
        assert!(Filter::new(">").unwrap().is_pattern());
        assert!(Filter::new("*.*.>").unwrap().is_pattern());
        assert_eq!(Filter::new("a.>.b"), Err(TopicError::MisplacedWildcard));
        assert_eq!(Filter::new("a.b*"), Err(TopicError::MisplacedWildcard));
        assert_eq!(Filter::new("a.>b"), Err(TopicError::MisplacedWildcard));
        assert_eq!(Filter::new("a..*"), Err(TopicError::EmptyToken));
    }

    #[test]
    fn filter_matching() {
        let star = Filter::new("metrics.*.cpu").unwrap();
        assert!(star.matches("metrics.h1.cpu"));
        assert!(!star.matches("metrics.cpu"));
        assert!(!star.matches("metrics.h1.cpu.x"));
        let tail = Filter::new("metrics.>").unwrap();
        assert!(tail.matches("metrics.cpu"));
        assert!(tail.matches("metrics.cpu.h1"));
        assert!(!tail.matches("metrics"));
        assert!(!tail.matches("other.cpu"));
        let exact = Filter::new("a.b").unwrap();
        assert!(exact.matches("a.b"));
        assert!(!exact.matches("a.b.c"));
        assert!(Filter::new(">").unwrap().matches("x"));
        assert!(Filter::new("*").unwrap().matches("x"));
        assert!(!Filter::new("*").unwrap().matches("x.y"));
        assert!(!Filter::new(">").unwrap().matches("$sys.stats"));
        assert!(!Filter::new("*.stats").unwrap().matches("$sys.stats"));
        assert!(Filter::new("$sys.>").unwrap().matches("$sys.stats"));
        assert!(Filter::new("$sys.*").unwrap().matches("$sys.stats"));
    }
}
