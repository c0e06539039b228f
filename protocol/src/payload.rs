//! Message payloads: any JSON value or any MessagePack value.
//!
//! A [`Payload`] keeps the form it arrived in, so that the common case (JSON in,
//! JSON out) copies the publisher's text through without building a tree. A
//! payload is converted to the other codec's form at most once per message, in
//! the broker's per-codec encoding cache.
//!
//! Across codecs the mapping is one to one except for MessagePack `bin`, which
//! JSON has no type for: a JSON subscriber sees each `bin` as
//! `{"$bin": "<standard base64>"}`. A MessagePack `ext` value is shown to JSON
//! subscribers as `{"$ext": <type>, "$bin": "<base64>"}`. MessagePack map keys
//! that are not strings become their JSON text (`1` becomes `"1"`).

use std::fmt;
use std::sync::Arc;

use base64::Engine as _;
use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;

use crate::error::CodecError;

/// A self-describing value that can hold everything MessagePack can.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `null` / `nil`.
    Null,
    /// A boolean.
    Bool(bool),
    /// A negative integer (non-negative ones are [`Value::UInt`]).
    Int(i64),
    /// A non-negative integer.
    UInt(u64),
    /// A floating-point number.
    Float(f64),
    /// A UTF-8 string.
    Str(String),
    /// MessagePack `bin`.
    Bin(Vec<u8>),
    /// An array.
    Array(Vec<Value>),
    /// A map, in the order its entries arrived. Keys may be any value.
    Map(Vec<(Value, Value)>),
    /// MessagePack `ext`: a type tag and its bytes.
    Ext(i8, Vec<u8>),
}

impl Value {
    /// About how many bytes the value holds (see [`Payload::weight`]).
    fn weight(&self) -> usize {
        const NODE: usize = std::mem::size_of::<Value>();
        match self {
            Value::Str(s) => NODE + s.len(),
            Value::Bin(b) | Value::Ext(_, b) => NODE + b.len(),
            Value::Array(items) => NODE + items.iter().map(Value::weight).sum::<usize>(),
            Value::Map(entries) => {
                NODE + entries
                    .iter()
                    .map(|(k, v)| k.weight() + v.weight())
                    .sum::<usize>()
            }
            _ => NODE,
        }
    }

    /// Whether this value is, or contains, binary data (`bin` or `ext`).
    pub fn contains_binary(&self) -> bool {
        match self {
            Value::Bin(_) | Value::Ext(..) => true,
            Value::Array(items) => items.iter().any(Value::contains_binary),
            Value::Map(entries) => entries
                .iter()
                .any(|(k, v)| k.contains_binary() || v.contains_binary()),
            _ => false,
        }
    }

    fn json_key(&self) -> String {
        match self {
            Value::Str(s) => s.clone(),
            other => serde_json::to_string(other).unwrap_or_default(),
        }
    }
}

/// Checks JSON text that serde_json accepted as one value: it must be nested
/// at most [`MAX_DEPTH`](crate::MAX_DEPTH) levels and its numbers must be
/// finite as 64-bit floats, so that it can reach MessagePack subscribers too.
fn check_json(text: &str) -> Result<(), String> {
    let bytes = text.as_bytes();
    let mut depth = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    i += match bytes[i] {
                        b'\\' if bytes.get(i + 1) == Some(&b'u') => unicode_escape(bytes, i)?,
                        b'\\' => 2,
                        _ => 1,
                    };
                }
            }
            b'[' | b'{' => {
                depth += 1;
                if depth > crate::MAX_DEPTH {
                    return Err(format!(
                        "payload is nested deeper than {} levels",
                        crate::MAX_DEPTH
                    ));
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            b'-' | b'0'..=b'9' => {
                let start = i;
                while i + 1 < bytes.len()
                    && matches!(bytes[i + 1], b'0'..=b'9' | b'.' | b'e' | b'E' | b'+' | b'-')
                {
                    i += 1;
                }
                let number = &text[start..=i];
                // Short plain numbers always fit; check the rest.
                if (number.len() > 15 || number.contains(['e', 'E']))
                    && !number.parse::<f64>().is_ok_and(f64::is_finite)
                {
                    return Err(format!("number {number} is out of range"));
                }
            }
            _ => {}
        }
        i += 1;
    }
    Ok(())
}

/// The length of the `\\uXXXX` escape at `at` (12 for a surrogate pair), or
/// an error for a lone surrogate: JSON text may carry one, but no string of
/// the other codecs can, so it would reach no MessagePack subscriber.
fn unicode_escape(bytes: &[u8], at: usize) -> Result<usize, String> {
    let unit = |at: usize| {
        let digits = bytes.get(at + 2..at + 6)?;
        let digits = std::str::from_utf8(digits).ok()?;
        u16::from_str_radix(digits, 16).ok()
    };
    let lone = || "payload has a lone UTF-16 surrogate escape, which is not a character".to_owned();
    match unit(at) {
        Some(0xD800..=0xDBFF) => {
            let pair = bytes.get(at + 6..at + 8) == Some(b"\\u".as_slice());
            match pair.then(|| unit(at + 6)).flatten() {
                Some(0xDC00..=0xDFFF) => Ok(12),
                _ => Err(lone()),
            }
        }
        Some(0xDC00..=0xDFFF) => Err(lone()),
        // Other escapes (and malformed ones, which the JSON parser refuses).
        _ => Ok(6),
    }
}

fn base64_encode(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

impl Serialize for Value {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let human = s.is_human_readable();
        match self {
            Value::Null => s.serialize_unit(),
            Value::Bool(b) => s.serialize_bool(*b),
            Value::Int(i) => s.serialize_i64(*i),
            Value::UInt(u) => s.serialize_u64(*u),
            Value::Float(f) => s.serialize_f64(*f),
            Value::Str(v) => s.serialize_str(v),
            Value::Bin(bytes) if human => {
                let mut map = s.serialize_map(Some(1))?;
                map.serialize_entry("$bin", &base64_encode(bytes))?;
                map.end()
            }
            Value::Bin(bytes) => s.serialize_bytes(bytes),
            Value::Ext(tag, bytes) if human => {
                let mut map = s.serialize_map(Some(2))?;
                map.serialize_entry("$ext", tag)?;
                map.serialize_entry("$bin", &base64_encode(bytes))?;
                map.end()
            }
            Value::Ext(tag, bytes) => s.serialize_newtype_struct(
                rmp_serde::MSGPACK_EXT_STRUCT_NAME,
                &(tag, ExtBytes(bytes)),
            ),
            Value::Array(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(item)?;
                }
                seq.end()
            }
            Value::Map(entries) => {
                let mut map = s.serialize_map(Some(entries.len()))?;
                for (k, v) in entries {
                    if human {
                        map.serialize_entry(&k.json_key(), v)?;
                    } else {
                        map.serialize_entry(k, v)?;
                    }
                }
                map.end()
            }
        }
    }
}

struct ExtBytes<'a>(&'a [u8]);

impl Serialize for ExtBytes<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.0)
    }
}

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON or MessagePack value")
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        Value::deserialize(d)
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(if v >= 0 {
            Value::UInt(v as u64)
        } else {
            Value::Int(v)
        })
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::UInt(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::Float(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::Str(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::Str(v))
    }
    fn visit_bytes<E>(self, v: &[u8]) -> Result<Value, E> {
        Ok(Value::Bin(v.to_vec()))
    }
    fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<Value, E> {
        Ok(Value::Bin(v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(0).min(1024));
        while let Some(entry) = map.next_entry()? {
            entries.push(entry);
        }
        Ok(Value::Map(entries))
    }
    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        // rmp-serde presents MessagePack `ext` as a newtype holding (tag, bytes).
        d.deserialize_seq(ExtVisitor)
    }
}

struct ExtVisitor;

impl<'de> Visitor<'de> for ExtVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a MessagePack ext value")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let tag: i8 = seq
            .next_element()?
            .ok_or_else(|| de::Error::invalid_length(0, &self))?;
        let bytes = seq
            .next_element_seed(BytesSeed)?
            .ok_or_else(|| de::Error::invalid_length(1, &self))?;
        Ok(Value::Ext(tag, bytes))
    }
}

struct BytesSeed;

impl<'de> DeserializeSeed<'de> for BytesSeed {
    type Value = Vec<u8>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Vec<u8>, D::Error> {
        struct BytesVisitor;
        impl Visitor<'_> for BytesVisitor {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
            fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(v)
            }
        }
        d.deserialize_bytes(BytesVisitor)
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Value, D::Error> {
        d.deserialize_any(ValueVisitor)
    }
}

#[derive(Clone)]
enum Repr {
    /// JSON text as the publisher sent it (validated, not parsed into a tree).
    Json(Arc<RawValue>),
    /// A decoded tree (from MessagePack, or built by an application).
    Value(Arc<Value>),
}

/// The payload of a `publish` or `message`: any JSON or MessagePack value.
///
/// Cheap to clone: the data is shared.
#[derive(Clone)]
pub struct Payload(Repr);

impl Payload {
    /// A payload from JSON text. Fails when `json` is not one JSON value.
    ///
    /// ```
    /// use starling_protocol::Payload;
    /// let p = Payload::from_json(r#"{"user":"ada"}"#).unwrap();
    /// assert_eq!(p.to_json_string(), r#"{"user":"ada"}"#);
    /// ```
    pub fn from_json(json: &str) -> Result<Self, CodecError> {
        let payload_error = |e: String| CodecError::Payload(e);
        let raw = RawValue::from_string(json.trim().to_owned())
            .map_err(|e| payload_error(e.to_string()))?;
        check_json(raw.get()).map_err(payload_error)?;
        Ok(Self(Repr::Json(Arc::from(raw))))
    }

    /// A payload from any serializable value, encoded as JSON text.
    pub fn to_json_payload<T: Serialize + ?Sized>(value: &T) -> Result<Self, serde_json::Error> {
        let raw = serde_json::value::to_raw_value(value)?;
        check_json(raw.get()).map_err(<serde_json::Error as serde::ser::Error>::custom)?;
        Ok(Self(Repr::Json(Arc::from(raw))))
    }

    /// A payload holding `value`.
    pub fn from_value(value: Value) -> Self {
        Self(Repr::Value(Arc::new(value)))
    }

    /// The payload as a [`Value`] tree (parses JSON text when needed).
    pub fn to_value(&self) -> Value {
        match &self.0 {
            Repr::Json(raw) => serde_json::from_str(raw.get()).unwrap_or(Value::Null),
            Repr::Value(v) => (**v).clone(),
        }
    }

    /// The payload as JSON text, with `bin` shown as `{"$bin": "<base64>"}`.
    pub fn to_json_string(&self) -> String {
        match &self.0 {
            Repr::Json(raw) => raw.get().to_owned(),
            Repr::Value(v) => serde_json::to_string(&**v).unwrap_or_else(|_| "null".to_owned()),
        }
    }

    /// About how many bytes the payload holds: its JSON text, or its
    /// tree's strings and binaries plus a few bytes per value. What memory
    /// bounds count a message as.
    pub fn weight(&self) -> usize {
        match &self.0 {
            Repr::Json(raw) => raw.get().len(),
            Repr::Value(v) => v.weight(),
        }
    }

    /// The JSON text the publisher sent, when the payload arrived as JSON.
    pub fn as_raw_json(&self) -> Option<&str> {
        match &self.0 {
            Repr::Json(raw) => Some(raw.get()),
            Repr::Value(_) => None,
        }
    }

    /// The payload as bytes for relaying between broker nodes: JSON text as
    /// the publisher sent it, or a MessagePack encoding of the tree. The flag
    /// says which ([`Payload::from_relay`] takes both back).
    pub fn to_relay(&self) -> (bool, std::borrow::Cow<'_, [u8]>) {
        match &self.0 {
            Repr::Json(raw) => (true, std::borrow::Cow::Borrowed(raw.get().as_bytes())),
            Repr::Value(v) => (
                false,
                std::borrow::Cow::Owned(rmp_serde::to_vec(&**v).unwrap_or_else(|_| vec![0xc0])),
            ),
        }
    }

    /// The payload back from [`Payload::to_relay`]'s bytes.
    pub fn from_relay(json: bool, bytes: &[u8]) -> Result<Self, CodecError> {
        if json {
            let text =
                std::str::from_utf8(bytes).map_err(|e| CodecError::Payload(e.to_string()))?;
            Self::from_json(text)
        } else {
            from_msgpack::<Value>(bytes)
                .map(Self::from_value)
                .map_err(CodecError::Payload)
        }
    }

    /// Decodes the payload into any deserializable type.
    pub fn decode<T: serde::de::DeserializeOwned>(&self) -> Result<T, CodecError> {
        match &self.0 {
            Repr::Json(raw) => {
                serde_json::from_str(raw.get()).map_err(|e| CodecError::Payload(e.to_string()))
            }
            Repr::Value(v) => {
                let bytes =
                    rmp_serde::to_vec(&**v).map_err(|e| CodecError::Payload(e.to_string()))?;
                from_msgpack(&bytes).map_err(CodecError::Payload)
            }
        }
    }
}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Repr::Json(raw) => write!(f, "Payload({})", raw.get()),
            Repr::Value(v) => write!(f, "Payload({v:?})"),
        }
    }
}

impl PartialEq for Payload {
    fn eq(&self, other: &Self) -> bool {
        match (&self.0, &other.0) {
            (Repr::Json(a), Repr::Json(b)) if a.get() == b.get() => true,
            (Repr::Value(a), Repr::Value(b)) => a == b,
            _ => self.to_value() == other.to_value(),
        }
    }
}

impl From<Value> for Payload {
    fn from(value: Value) -> Self {
        Self::from_value(value)
    }
}

impl Serialize for Payload {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match &self.0 {
            Repr::Json(raw) if s.is_human_readable() => raw.serialize(s),
            Repr::Json(raw) => {
                let value: Value =
                    serde_json::from_str(raw.get()).map_err(serde::ser::Error::custom)?;
                value.serialize(s)
            }
            Repr::Value(v) => v.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for Payload {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            // serde_json hands over the value's text without building a tree.
            let raw = Box::<RawValue>::deserialize(d)?;
            check_json(raw.get()).map_err(de::Error::custom)?;
            Ok(Self(Repr::Json(Arc::from(raw))))
        } else {
            Ok(Self::from_value(Value::deserialize(d)?))
        }
    }
}

/// Decodes one MessagePack value that must fill `bytes` exactly, nested at
/// most [`MAX_DEPTH`](crate::MAX_DEPTH) levels below the frame.
pub(crate) fn from_msgpack<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, String> {
    let mut de = rmp_serde::Deserializer::new(std::io::Cursor::new(bytes));
    de.set_max_depth(crate::MAX_DEPTH + 2);
    let value = T::deserialize(&mut de).map_err(|e| e.to_string())?;
    if de.position() != bytes.len() as u64 {
        return Err("trailing bytes after the frame".into());
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lone_surrogates_are_refused_and_pairs_kept() {
        for lone in [
            r#""\ud800""#,
            r#""\uDBFF x""#,
            r#""\udc00""#,
            r#"{"a":["ok","\ud800\u0041"]}"#,
            r#""\ud800\\udc00""#,
        ] {
            let error = Payload::from_json(lone).expect_err(lone);
            assert!(error.to_string().contains("surrogate"), "{lone}: {error}");
        }
        for fine in [
            r#""\ud83d\ude00""#,
            r#""\u00e9\\u\"\u0000""#,
            r#"{"\ud83d\ude00":"\uD83D\uDE00"}"#,
            r#""no escapes""#,
        ] {
            let payload = Payload::from_json(fine).expect(fine);
            // What is accepted reaches the other codec.
            let value = payload.to_value();
            assert!(rmp_serde::to_vec_named(&value).is_ok(), "{fine}");
        }
    }

    #[test]
    fn bin_becomes_dollar_bin_in_json() {
        let v = Value::Map(vec![
            (Value::Str("img".into()), Value::Bin(vec![0, 1, 2, 255])),
            (
                Value::UInt(7),
                Value::Array(vec![Value::Bin(b"hi".to_vec())]),
            ),
        ]);
        let json = Payload::from_value(v).to_json_string();
        assert_eq!(json, r#"{"img":{"$bin":"AAEC/w=="},"7":[{"$bin":"aGk="}]}"#);
    }

    #[test]
    fn json_payload_survives_msgpack() {
        let p = Payload::from_json(r#"{"a":[1,-2,3.5,"x",null,true]}"#).unwrap();
        let bytes = rmp_serde::to_vec_named(&p).unwrap();
        let back: Payload = rmp_serde::from_slice(&bytes).unwrap();
        assert_eq!(back, p);
        assert_eq!(back.to_json_string(), r#"{"a":[1,-2,3.5,"x",null,true]}"#);
    }

    #[test]
    fn ext_survives_msgpack_and_shows_in_json() {
        let v = Value::Ext(-1, vec![1, 2, 3, 4]);
        let bytes = rmp_serde::to_vec_named(&v).unwrap();
        let back: Value = rmp_serde::from_slice(&bytes).unwrap();
        assert_eq!(back, v);
        assert_eq!(
            Payload::from_value(v).to_json_string(),
            r#"{"$ext":-1,"$bin":"AQIDBA=="}"#
        );
    }

    #[test]
    fn json_payloads_are_checked_for_depth_and_range() {
        let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        assert!(Payload::from_json(&deep(crate::MAX_DEPTH)).is_ok());
        assert!(Payload::from_json(&deep(crate::MAX_DEPTH + 1)).is_err());
        // Brackets and escaped quotes inside strings do not count.
        let text = format!(r#"["{}\"{}", 1]"#, "[".repeat(100), "{".repeat(100));
        assert!(Payload::from_json(&text).is_ok(), "{text}");
        assert!(Payload::from_json("1e400").is_err());
        assert!(Payload::from_json("{\"a\":[-1.5e308, 12345678901234567890123]}").is_ok());
        assert!(Payload::from_json("-1.8e308").is_err());
    }

    #[test]
    fn relay_bytes_round_trip() {
        for p in [
            Payload::from_json(r#"{"a": [1, "x"]}"#).unwrap(),
            Payload::from_value(Value::Array(vec![Value::Bin(vec![1, 2]), Value::Int(-4)])),
        ] {
            let (json, bytes) = p.to_relay();
            let back = Payload::from_relay(json, &bytes).unwrap();
            assert_eq!(back, p);
            assert_eq!(back.as_raw_json(), p.as_raw_json());
        }
    }

    #[test]
    fn typed_decode() {
        #[derive(Deserialize, PartialEq, Debug)]
        struct Chat {
            user: String,
            n: u32,
        }
        let json = Payload::from_json(r#"{"user":"ada","n":3}"#).unwrap();
        let tree = Payload::from_value(json.to_value());
        let want = Chat {
            user: "ada".into(),
            n: 3,
        };
        assert_eq!(json.decode::<Chat>().unwrap(), want);
        assert_eq!(tree.decode::<Chat>().unwrap(), want);
    }
}
