//! Property tests of the wire protocol: codec round trips, decoder robustness
//! on arbitrary input, the topic grammar and filter matching, and stack safety
//! on deeply nested payloads.
//!
//! The reference implementations here (topic validator, filter matcher, client
//! frame decoder, JSON view of MessagePack values) are written from
//! PROTOCOL.md, independently of `src/`.
//!
//! Failure persistence is off so that the suite never writes files outside
//! `tests/`: a failing case is printed by proptest and belongs in a plain
//! regression test below.

use std::process::Command;

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::{Index, select};
use starling_protocol::{
    Codec, CodecName, Envelope, ErrorCode, Filter, Frame, Limits, MAX_TOPIC_BYTES, Payload, Topic,
    TopicError, Value,
};

/// 256 cases per property keeps the file at about a second in debug builds;
/// set `STARLING_PROPTEST_CASES` for a longer run.
fn config() -> ProptestConfig {
    let cases = std::env::var("STARLING_PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(256);
    ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::with_cases(cases)
    }
}

/// The codes a decoder may answer with.
const DECODE_CODES: [ErrorCode; 3] = [
    ErrorCode::BadFrame,
    ErrorCode::UnknownType,
    ErrorCode::InvalidTopic,
];

const CLIENT_TYPES: [&str; 4] = ["subscribe", "unsubscribe", "publish", "ping"];
const SERVER_TYPES: [&str; 6] = ["welcome", "message", "ack", "error", "lagged", "pong"];

// ---------------------------------------------------------------------------
// Reference implementations, from PROTOCOL.md.
// ---------------------------------------------------------------------------

/// Whether `s` is a topic (`wildcards == false`) or a subscribe filter:
/// 1 to 255 bytes of `[A-Za-z0-9_\-:]+` tokens joined by single dots; the
/// first token may start with `$` (reserved broker topics); in filters a token
/// may be `*`, and the last one `>`.
fn ref_valid(s: &str, wildcards: bool) -> bool {
    if s.is_empty() || s.len() > MAX_TOPIC_BYTES {
        return false;
    }
    let tokens: Vec<&str> = s.split('.').collect();
    tokens.iter().enumerate().all(|(i, token)| {
        let last = i + 1 == tokens.len();
        if wildcards && (*token == "*" || (*token == ">" && last)) {
            return true;
        }
        let body = if i == 0 {
            token.strip_prefix('$').unwrap_or(token)
        } else {
            token
        };
        !body.is_empty()
            && body
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-:".contains(&b))
    })
}

/// Whether the valid filter `filter` matches the topic `topic`: `*` is exactly
/// one token, a trailing `>` one or more, anything else itself.
fn ref_matches(filter: &str, topic: &str) -> bool {
    fn go(f: &[&str], t: &[&str]) -> bool {
        match (f, t) {
            ([], []) => true,
            ([">"], [_, ..]) => true,
            (["*", f_rest @ ..], [_, t_rest @ ..]) => go(f_rest, t_rest),
            ([lit, f_rest @ ..], [tok, t_rest @ ..]) => lit == tok && go(f_rest, t_rest),
            _ => false,
        }
    }
    let f: Vec<&str> = filter.split('.').collect();
    let t: Vec<&str> = topic.split('.').collect();
    go(&f, &t)
}

/// Standard base64 with padding.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn str_value(s: &str) -> Value {
    Value::Str(s.to_owned())
}

fn int_value(n: i64) -> Value {
    if n < 0 {
        Value::Int(n)
    } else {
        Value::UInt(n as u64)
    }
}

/// What a JSON subscriber sees of a MessagePack value with string map keys:
/// `bin` as `{"$bin": b64}`, `ext` as `{"$ext": tag, "$bin": b64}`.
fn json_view(v: &Value) -> Value {
    match v {
        Value::Bin(bytes) => Value::Map(vec![(str_value("$bin"), Value::Str(base64(bytes)))]),
        Value::Ext(tag, bytes) => Value::Map(vec![
            (str_value("$ext"), int_value(i64::from(*tag))),
            (str_value("$bin"), Value::Str(base64(bytes))),
        ]),
        Value::Array(items) => Value::Array(items.iter().map(json_view).collect()),
        Value::Map(entries) => Value::Map(
            entries
                .iter()
                .map(|(k, v)| (k.clone(), json_view(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// The outcome PROTOCOL.md asks of a client frame given as a map with unique
/// string keys: the envelope, or the error code. Unknown fields are ignored.
fn ref_decode_client(fields: &[(String, Value)]) -> Result<Envelope, ErrorCode> {
    let get = |name: &str| fields.iter().find(|(k, _)| k == name).map(|(_, v)| v);
    // Optional fields: null counts as absent; a wrong type is bad_frame.
    let opt_u64 = |name: &str| match get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::UInt(n)) => Ok(Some(*n)),
        Some(_) => Err(ErrorCode::BadFrame),
    };
    let opt_str = |name: &str| match get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Str(s)) => Ok(Some(s.clone())),
        Some(_) => Err(ErrorCode::BadFrame),
    };
    let kind = opt_str("type")?;
    let id = opt_u64("id")?;
    let topic = opt_str("topic")?;
    let since = opt_u64("since")?;
    let epoch = opt_str("epoch")?;
    let payload = get("payload").cloned();

    let filter = |topic: Option<String>| {
        let topic = topic.ok_or(ErrorCode::BadFrame)?;
        if !ref_valid(&topic, true) {
            return Err(ErrorCode::InvalidTopic);
        }
        Ok(Filter::new(&topic).expect("the reference accepted it"))
    };
    match kind.as_deref().ok_or(ErrorCode::BadFrame)? {
        "subscribe" => Ok(Envelope::Subscribe {
            name: None,
            info: None,
            id,
            topic: filter(topic)?,
            since,
            epoch: epoch.map(Into::into),
        }),
        "unsubscribe" => Ok(Envelope::Unsubscribe {
            id,
            topic: filter(topic)?,
        }),
        "publish" => {
            let topic = topic.ok_or(ErrorCode::BadFrame)?;
            if !ref_valid(&topic, false) {
                return Err(ErrorCode::InvalidTopic);
            }
            Ok(Envelope::Publish {
                id,
                topic: Topic::new(&topic).expect("the reference accepted it"),
                payload: Payload::from_value(payload.ok_or(ErrorCode::BadFrame)?),
            })
        }
        "ping" => Ok(Envelope::Ping { id }),
        _ => Err(ErrorCode::UnknownType),
    }
}

// ---------------------------------------------------------------------------
// Strategies.
// ---------------------------------------------------------------------------

fn token() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[a-z]{1,6}",
        2 => "[A-Za-z0-9_:-]{1,12}",
        1 => "[A-Za-z0-9_:-]{30,64}",
    ]
}

/// A valid concrete topic; often exactly at the 255-byte limit.
fn topic_name() -> impl Strategy<Value = String> {
    (prop::bool::weighted(0.1), vec(token(), 1..10)).prop_map(|(reserved, tokens)| {
        let mut name = tokens.join(".");
        if reserved {
            name.insert(0, '$');
        }
        if name.len() > MAX_TOPIC_BYTES {
            name.truncate(MAX_TOPIC_BYTES);
            while name.ends_with('.') {
                name.pop();
            }
        }
        name
    })
}

/// A valid filter: literal tokens, `*` tokens and maybe a trailing `>`.
fn filter_name() -> impl Strategy<Value = String> {
    (
        prop::bool::weighted(0.1),
        vec(prop_oneof![3 => token(), 1 => Just("*".to_owned())], 1..8),
        prop::bool::weighted(0.3),
    )
        .prop_map(|(reserved, mut tokens, tail)| {
            if reserved && tokens[0] != "*" {
                tokens[0].insert(0, '$');
            }
            let reserve = if tail { 2 } else { 0 };
            while tokens.len() > 1 && tokens.join(".").len() + reserve > MAX_TOPIC_BYTES {
                tokens.pop();
            }
            if tail {
                tokens.push(">".to_owned());
            }
            tokens.join(".")
        })
}

fn topic() -> impl Strategy<Value = Topic> {
    topic_name().prop_map(|name| Topic::new(&name).expect("generated topics are valid"))
}

fn filter() -> impl Strategy<Value = Filter> {
    filter_name().prop_map(|name| Filter::new(&name).expect("generated filters are valid"))
}

fn epoch() -> impl Strategy<Value = std::sync::Arc<str>> {
    "[0-9a-z-]{1,16}".prop_map(Into::into)
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[a-z ]{0,8}",
        4 => vec(any::<char>(), 0..12).prop_map(String::from_iter),
        1 => ".{32,300}",
    ]
}

/// Whether `f` comes back unchanged from the crate's JSON text (every finite
/// float must: serde_json parses floats with correct rounding).
fn json_float_survives(f: f64) -> bool {
    let text = Payload::from_value(Value::Float(f)).to_json_string();
    Payload::from_json(&text).map(|p| p.to_value()).ok() == Some(Value::Float(f))
}

fn float() -> impl Strategy<Value = f64> {
    any_float()
}

/// Any finite float.
fn any_float() -> impl Strategy<Value = f64> {
    prop_oneof![
        4 => any::<f64>().prop_filter("finite", |f| f.is_finite()),
        2 => -1.0e6f64..1.0e6,
        1 => select(vec![
            0.0,
            -0.0,
            0.1,
            1.5,
            -2.5,
            1.0e20,
            f64::MAX,
            f64::MIN,
            f64::MIN_POSITIVE,
            f64::EPSILON,
            5.0e-324,
        ]),
    ]
}

/// Integers as the decoders produce them: negative ones are `Int`,
/// non-negative ones `UInt`.
fn integer() -> impl Strategy<Value = Value> {
    prop_oneof![
        (i64::MIN..0).prop_map(Value::Int),
        (-300i64..0).prop_map(Value::Int),
        any::<u64>().prop_map(Value::UInt),
        (0u64..300).prop_map(Value::UInt),
        select(vec![
            Value::Int(i64::MIN),
            Value::Int(-1),
            Value::UInt(0),
            Value::UInt(u64::MAX),
            Value::UInt(1 << 53),
        ]),
    ]
}

fn json_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        integer(),
        float().prop_map(Value::Float),
        text().prop_map(Value::Str),
    ]
}

/// Any value JSON can carry: no `bin`/`ext`, string map keys.
fn json_value() -> impl Strategy<Value = Value> {
    json_leaf().prop_recursive(4, 48, 18, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..18).prop_map(Value::Array),
            vec((text(), inner), 0..18).prop_map(|entries| {
                Value::Map(
                    entries
                        .into_iter()
                        .map(|(k, v)| (Value::Str(k), v))
                        .collect(),
                )
            }),
        ]
    })
}

fn bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => vec(any::<u8>(), 0..20),
        // The fixext sizes.
        2 => select(vec![1usize, 2, 4, 8, 16]).prop_flat_map(|n| vec(any::<u8>(), n)),
        // bin16 / ext16.
        1 => vec(any::<u8>(), 250..300),
    ]
}

fn msgpack_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        3 => json_leaf(),
        1 => bytes().prop_map(Value::Bin),
        1 => (any::<i8>(), bytes()).prop_map(|(tag, b)| Value::Ext(tag, b)),
    ]
}

/// Any MessagePack value: with `bin` and `ext`; map keys are strings, or
/// (when `any_keys`) any value.
fn msgpack_value(any_keys: bool) -> impl Strategy<Value = Value> {
    msgpack_leaf().prop_recursive(4, 48, 18, move |inner| {
        let key = if any_keys {
            prop_oneof![3 => text().prop_map(Value::Str), 1 => inner.clone()].boxed()
        } else {
            text().prop_map(Value::Str).boxed()
        };
        prop_oneof![
            vec(inner.clone(), 0..18).prop_map(Value::Array),
            vec((key, inner), 0..18).prop_map(Value::Map),
        ]
    })
}

/// A payload a JSON connection can carry: JSON text, or a JSON-safe tree.
fn json_payload() -> BoxedStrategy<Payload> {
    prop_oneof![
        json_value().prop_map(|v| {
            let text = Payload::from_value(v).to_json_string();
            Payload::from_json(&text).expect("serialized JSON parses")
        }),
        json_value().prop_map(Payload::from_value),
    ]
    .boxed()
}

/// A payload a MessagePack connection can carry: anything.
fn msgpack_payload() -> BoxedStrategy<Payload> {
    prop_oneof![
        1 => json_payload(),
        2 => msgpack_value(true).prop_map(Payload::from_value),
    ]
    .boxed()
}

fn opt_id() -> impl Strategy<Value = Option<u64>> {
    prop::option::of(prop_oneof![0u64..100, any::<u64>()])
}

fn limits() -> impl Strategy<Value = Limits> {
    prop_oneof![
        Just(Limits::default()),
        any::<[u64; 12]>().prop_map(|l| Limits {
            max_message_bytes: l[0],
            max_subscriptions: l[1],
            max_topic_bytes: l[2],
            subscriber_buffer: l[3],
            ping_interval_ms: l[4],
            idle_timeout_ms: l[5],
            max_frame_bytes: l[6],
            outbound_queue_bytes: l[7],
            rate_limit: l[8],
            max_connections: l[9],
            max_patterns: l[10],
            subscriber_buffer_bytes: l[11],
        }),
    ]
}

fn error_code() -> impl Strategy<Value = ErrorCode> {
    select(ErrorCode::ALL.to_vec())
}

/// Any envelope, of every variant, with payloads from `payload`.
fn envelope(payload: BoxedStrategy<Payload>) -> impl Strategy<Value = Envelope> {
    prop_oneof![
        (
            opt_id(),
            filter(),
            prop::option::of(any::<u64>()),
            prop::option::of(epoch())
        )
            .prop_map(|(id, topic, since, epoch)| Envelope::Subscribe {
                name: None,
                info: None,
                id,
                topic,
                since,
                epoch
            }),
        (opt_id(), filter()).prop_map(|(id, topic)| Envelope::Unsubscribe { id, topic }),
        (opt_id(), topic(), payload.clone()).prop_map(|(id, topic, payload)| Envelope::Publish {
            id,
            topic,
            payload
        }),
        opt_id().prop_map(|id| Envelope::Ping { id }),
        (
            any::<u32>(),
            text(),
            select(vec![CodecName::Json, CodecName::Msgpack]),
            limits()
        )
            .prop_map(|(version, node, codec, limits)| Envelope::Welcome {
                version,
                node: node.into(),
                codec,
                limits,
            }),
        (
            topic(),
            payload,
            prop::option::of(any::<u64>()),
            prop::option::of(epoch()),
            prop::option::of(filter())
        )
            .prop_map(|(topic, payload, offset, epoch, sub)| Envelope::Message {
                epoch,
                topic,
                payload,
                offset,
                sub,
                from: None,
            }),
        (
            any::<u64>(),
            prop::option::of(any::<u64>()),
            prop::option::of(epoch())
        )
            .prop_map(|(id, offset, epoch)| Envelope::Ack { id, offset, epoch }),
        (opt_id(), error_code(), text()).prop_map(|(id, code, message)| Envelope::Error {
            id,
            code,
            message
        }),
        (filter(), any::<u64>()).prop_map(|(topic, missed)| Envelope::Lagged {
            topic,
            missed: Some(missed),
            reset: false
        }),
        filter().prop_map(|topic| Envelope::Lagged {
            topic,
            missed: None,
            reset: true
        }),
        opt_id().prop_map(|id| Envelope::Pong { id }),
    ]
}

/// Any value a frame field might hold.
fn field_value() -> impl Strategy<Value = Value> {
    let any_type = select(
        CLIENT_TYPES
            .iter()
            .chain(&SERVER_TYPES)
            .copied()
            .collect::<Vec<_>>(),
    );
    prop_oneof![
        3 => json_value(),
        2 => any_type.prop_map(str_value),
        2 => topic_name().prop_map(Value::Str),
        2 => filter_name().prop_map(Value::Str),
        1 => "[a-c.*>$ -]{0,8}".prop_map(Value::Str),
        2 => integer(),
        1 => select(ErrorCode::ALL.iter().map(|c| str_value(c.as_str())).collect::<Vec<_>>()),
    ]
}

/// A value for the field `key`: mostly of the type the field has, sometimes
/// null or anything at all.
fn value_for(key: &'static str) -> BoxedStrategy<Value> {
    let uint = || (0u64..1000).prop_map(Value::UInt).boxed();
    let text = || text().prop_map(Value::Str).boxed();
    let typed: BoxedStrategy<Value> = match key {
        "type" => prop_oneof![
            6 => select(CLIENT_TYPES.to_vec()).prop_map(str_value),
            3 => select(SERVER_TYPES.to_vec()).prop_map(str_value),
            1 => "[a-z]{0,8}".prop_map(Value::Str),
        ]
        .boxed(),
        "id" | "since" | "offset" | "missed" | "version" => {
            prop_oneof![6 => uint(), 1 => integer()].boxed()
        }
        "topic" | "sub" => prop_oneof![
            3 => topic_name().prop_map(Value::Str),
            3 => filter_name().prop_map(Value::Str),
            2 => "[$]?[a-c*>]{0,2}(\\.[a-c*>]{0,2}){0,3}".prop_map(Value::Str),
        ]
        .boxed(),
        "payload" | "x" => json_value().boxed(),
        "node" | "message" | "epoch" => text(),
        "codec" => prop_oneof![
            8 => select(vec!["json", "msgpack"]).prop_map(str_value),
            1 => Just(str_value("xml")),
        ]
        .boxed(),
        "code" => prop_oneof![
            8 => error_code().prop_map(|c| str_value(c.as_str())),
            1 => Just(str_value("not_a_code")),
        ]
        .boxed(),
        "limits" => vec(
            (
                select(vec![
                    "max_message_bytes",
                    "max_subscriptions",
                    "max_topic_bytes",
                    "subscriber_buffer",
                    "ping_interval_ms",
                    "idle_timeout_ms",
                    "max_frame_bytes",
                    "outbound_queue_bytes",
                    "rate_limit",
                    "max_connections",
                    "future_limit",
                ]),
                prop_oneof![8 => uint(), 1 => field_value().boxed()],
            ),
            0..4,
        )
        .prop_map(|entries| {
            Value::Map(
                entries
                    .into_iter()
                    .map(|(k, v)| (str_value(k), v))
                    .collect(),
            )
        })
        .boxed(),
        "reset" => any::<bool>().prop_map(Value::Bool).boxed(),
        other => panic!("no strategy for field {other}"),
    };
    prop_oneof![20 => typed, 1 => Just(Value::Null), 2 => field_value()].boxed()
}

/// A map with some of `keys` (unique, `type` nearly always), in any order.
fn object(keys: &'static [&'static str]) -> impl Strategy<Value = Vec<(String, Value)>> {
    let fields: Vec<_> = keys
        .iter()
        .map(|&key| {
            let presence = match key {
                "type" => 0.95,
                "topic" | "payload" => 0.8,
                _ => 0.5,
            };
            prop::option::weighted(
                presence,
                value_for(key).prop_map(move |v| (key.to_owned(), v)),
            )
        })
        .collect();
    fields
        .prop_map(|fields| fields.into_iter().flatten().collect::<Vec<_>>())
        .prop_shuffle()
}

const CLIENT_KEYS: &[&str] = &["type", "id", "topic", "payload", "since", "epoch", "x"];
const ALL_KEYS: &[&str] = &[
    "type", "id", "topic", "payload", "since", "epoch", "x", "version", "node", "codec", "limits",
    "offset", "sub", "code", "message", "missed", "reset",
];

/// The object encoded by `codec`.
fn encode_object(codec: Codec, fields: &[(String, Value)]) -> Vec<u8> {
    let map = Value::Map(
        fields
            .iter()
            .map(|(k, v)| (str_value(k), v.clone()))
            .collect(),
    );
    match codec {
        Codec::Json => Payload::from_value(map).to_json_string().into_bytes(),
        Codec::MsgPack => rmp_serde::to_vec(&map).expect("values encode"),
    }
}

#[derive(Debug, Clone)]
enum Edit {
    Set(Index, u8),
    Insert(Index, u8),
    Remove(Index),
    Truncate(Index),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        3 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Edit::Set(i, b)),
        2 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Edit::Insert(i, b)),
        2 => any::<Index>().prop_map(Edit::Remove),
        1 => any::<Index>().prop_map(Edit::Truncate),
    ]
}

fn apply(bytes: &mut Vec<u8>, edit: &Edit) {
    if bytes.is_empty() {
        if let Edit::Insert(_, b) = edit {
            bytes.push(*b);
        }
        return;
    }
    match edit {
        Edit::Set(i, b) => {
            let i = i.index(bytes.len());
            bytes[i] = *b;
        }
        Edit::Insert(i, b) => bytes.insert(i.index(bytes.len() + 1), *b),
        Edit::Remove(i) => {
            bytes.remove(i.index(bytes.len()));
        }
        Edit::Truncate(i) => bytes.truncate(i.index(bytes.len())),
    }
}

// ---------------------------------------------------------------------------
// Helpers.
// ---------------------------------------------------------------------------

fn payload_of(env: &Envelope) -> Option<&Payload> {
    match env {
        Envelope::Publish { payload, .. } | Envelope::Message { payload, .. } => Some(payload),
        _ => None,
    }
}

/// Runs both decoders of `codec` on `bytes` and checks that whatever they
/// answer is sane.
fn check_decoders(codec: Codec, bytes: &[u8]) -> Result<(), TestCaseError> {
    let client = codec.decode_client(bytes);
    let any = codec.decode_bytes(bytes);
    for (is_client, result) in [(true, &client), (false, &any)] {
        match result {
            Ok(env) => {
                if is_client {
                    prop_assert!(env.is_client_frame(), "decode_client gave {:?}", env);
                }
                // What decoded encodes again in its own codec, and the other
                // codec does not panic on it.
                prop_assert!(codec.encode(env).is_ok(), "cannot re-encode {:?}", env);
                for other in Codec::ALL {
                    let _ = other.encode(env);
                }
            }
            Err(e) => {
                prop_assert!(
                    DECODE_CODES.contains(&e.code()),
                    "{:?} has code {}",
                    e,
                    e.code()
                );
                let _ = e.to_envelope();
            }
        }
    }
    let _ = codec.probe_id(bytes);
    Ok(())
}

/// Runs `f` on a thread with tokio's default worker stack size.
fn on_worker_stack(f: fn()) {
    std::thread::Builder::new()
        .name("small-stack".into())
        .stack_size(2 * 1024 * 1024)
        .spawn(f)
        .expect("spawn")
        .join()
        .expect("the check panicked");
}

const ISOLATED: &str = "STARLING_PROTOCOL_ISOLATED_TEST";

/// Runs `f` on a 2 MiB stack in a child process (this test binary, filtered
/// to the test `name`), so that a stack overflow, which aborts the process,
/// fails this one test instead of killing the whole suite.
fn isolated_on_worker_stack(name: &str, f: fn()) {
    if std::env::var(ISOLATED).as_deref() == Ok(name) {
        on_worker_stack(f);
        return;
    }
    let out = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            name,
            "--exact",
            "--include-ignored",
            "--test-threads=1",
            "--nocapture",
        ])
        .env(ISOLATED, name)
        .output()
        .expect("run the test binary");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "{name} failed in its child process ({}):\n{}\n{}",
        out.status,
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
}

fn nested(depth: usize, open: &[u8], leaf: &[u8], close: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(depth * (open.len() + close.len()) + leaf.len());
    for _ in 0..depth {
        out.extend_from_slice(open);
    }
    out.extend_from_slice(leaf);
    for _ in 0..depth {
        out.extend_from_slice(close);
    }
    out
}

/// A MessagePack map of `fields`, whose values are already encoded.
fn msgpack_map(fields: &[(&str, &[u8])]) -> Vec<u8> {
    assert!(fields.len() < 16);
    let mut out = vec![0x80 | fields.len() as u8];
    for (key, value) in fields {
        assert!(key.len() < 32);
        out.push(0xa0 | key.len() as u8);
        out.extend_from_slice(key.as_bytes());
        out.extend_from_slice(value);
    }
    out
}

fn msgpack_str(s: &str) -> Vec<u8> {
    assert!(s.len() < 32);
    let mut out = vec![0xa0 | s.len() as u8];
    out.extend_from_slice(s.as_bytes());
    out
}

const DEEP: usize = 100_000;

// ---------------------------------------------------------------------------
// Round trips.
// ---------------------------------------------------------------------------

proptest! {
    #![proptest_config(config())]

    #[test]
    fn json_round_trip(env in envelope(json_payload())) {
        let frame = Codec::Json.encode(&env).unwrap();
        prop_assert!(matches!(frame, Frame::Text(_)));
        let back = Codec::Json.decode(&frame).unwrap();
        prop_assert_eq!(&back, &env);
        if let (Some(a), Some(b)) = (payload_of(&back), payload_of(&env)) {
            prop_assert_eq!(a.to_value(), b.to_value());
        }
        prop_assert_eq!(&Codec::Json.decode_bytes(frame.as_bytes()).unwrap(), &env);
        let client = Codec::Json.decode_client(frame.as_bytes());
        if env.is_client_frame() {
            prop_assert_eq!(client.unwrap(), env);
        } else {
            prop_assert_eq!(client.unwrap_err().code(), ErrorCode::UnknownType);
        }
        // Encoding what was decoded gives the same text.
        prop_assert_eq!(Codec::Json.encode(&back).unwrap(), frame);
    }

    #[test]
    fn msgpack_round_trip(env in envelope(msgpack_payload())) {
        let frame = Codec::MsgPack.encode(&env).unwrap();
        prop_assert!(matches!(frame, Frame::Binary(_)));
        let back = Codec::MsgPack.decode(&frame).unwrap();
        prop_assert_eq!(&back, &env);
        if let (Some(a), Some(b)) = (payload_of(&back), payload_of(&env)) {
            prop_assert_eq!(a.to_value(), b.to_value());
        }
        prop_assert_eq!(&Codec::MsgPack.decode_bytes(frame.as_bytes()).unwrap(), &env);
        let client = Codec::MsgPack.decode_client(frame.as_bytes());
        if env.is_client_frame() {
            prop_assert_eq!(client.unwrap(), env);
        } else {
            prop_assert_eq!(client.unwrap_err().code(), ErrorCode::UnknownType);
        }
        prop_assert_eq!(Codec::MsgPack.encode(&back).unwrap(), frame);
    }

    /// A message published over MessagePack reaches a JSON subscriber with
    /// `bin` as `{"$bin": ...}` and `ext` as `{"$ext": .., "$bin": ..}`, and a
    /// JSON payload reaches a MessagePack subscriber one to one.
    #[test]
    fn payloads_cross_codecs(
        mp in msgpack_value(false),
        json in json_payload(),
        topic in topic(),
    ) {
        let message = |payload: Payload| Envelope::Message {
            epoch: None,
            topic: topic.clone(),
            payload,
            offset: None,
            sub: None,
            from: None,
        };
        let via_json = Codec::Json
            .decode(&Codec::Json.encode(&message(Payload::from_value(mp.clone()))).unwrap())
            .unwrap();
        prop_assert_eq!(payload_of(&via_json).unwrap().to_value(), json_view(&mp));

        let via_mp = Codec::MsgPack
            .decode(&Codec::MsgPack.encode(&message(json.clone())).unwrap())
            .unwrap();
        prop_assert_eq!(payload_of(&via_mp).unwrap().to_value(), json.to_value());
        // And back to JSON: the same value again.
        let again = Codec::Json
            .decode(&Codec::Json.encode(&via_mp).unwrap())
            .unwrap();
        prop_assert_eq!(payload_of(&again).unwrap().to_value(), json.to_value());
    }
}

proptest! {
    #![proptest_config(config())]

    /// The JSON text the crate writes for a float is its exact shortest form.
    #[test]
    fn json_float_text_is_exact(f in any_float()) {
        let text = Payload::from_value(Value::Float(f)).to_json_string();
        prop_assert_eq!(text.parse::<f64>().unwrap(), f, "{}", text);
    }

    /// A float published as JSON reaches a MessagePack subscriber (and a Rust
    /// JSON reader) unchanged.
    #[test]
        fn json_floats_round_trip_exactly(f in any_float()) {
        prop_assert!(json_float_survives(f), "{:?}", f);
    }
}

#[test]
fn json_floats_reach_msgpack_subscribers_unchanged() {
    for text in ["1.2091498279965183e51", "-8.046956444830277e149"] {
        let exact: f64 = text.parse().unwrap();
        let frame = format!(r#"{{"type":"publish","topic":"a","payload":{text}}}"#);
        let env = Codec::Json.decode_client(frame.as_bytes()).unwrap();
        let relayed = Codec::MsgPack
            .decode(&Codec::MsgPack.encode(&env).unwrap())
            .unwrap();
        assert_eq!(
            payload_of(&relayed).unwrap().to_value(),
            Value::Float(exact),
            "{text}"
        );
    }
}

// ---------------------------------------------------------------------------
// Decoders on arbitrary input.
// ---------------------------------------------------------------------------

proptest! {
    #![proptest_config(config())]

    #[test]
    fn decoders_survive_arbitrary_bytes(bytes in vec(any::<u8>(), 0..256)) {
        for codec in Codec::ALL {
            check_decoders(codec, &bytes)?;
        }
    }

    /// Past the first-byte check: bytes after a map marker or `{`.
    #[test]
    fn decoders_survive_arbitrary_bytes_after_a_map_start(
        first in select(vec![0x80u8, 0x81, 0x83, 0x85, 0x8f, 0xde, 0xdf]),
        rest in vec(any::<u8>(), 0..256),
        text in ".{0,64}",
    ) {
        let mut bytes = vec![first];
        bytes.extend_from_slice(&rest);
        check_decoders(Codec::MsgPack, &bytes)?;
        check_decoders(Codec::Json, format!("{{{text}").as_bytes())?;
        check_decoders(Codec::Json, format!(" {{\"type\":{text}").as_bytes())?;
    }

    /// Valid frames with a few bytes changed, inserted, removed or cut off.
    #[test]
    fn decoders_survive_mutated_frames(
        env in envelope(msgpack_payload()),
        edits in vec(edit(), 1..6),
    ) {
        for codec in Codec::ALL {
            let mut bytes = codec.encode(&env).unwrap().as_bytes().to_vec();
            for e in &edits {
                apply(&mut bytes, e);
            }
            check_decoders(codec, &bytes)?;
        }
    }

    /// Well-formed objects with client fields of random types decode exactly
    /// as PROTOCOL.md says; errors carry the frame's `id` when it is one.
    #[test]
    fn client_objects_decode_as_specified(fields in object(CLIENT_KEYS)) {
        let expected = ref_decode_client(&fields);
        let id = fields.iter().find_map(|(k, v)| match (k.as_str(), v) {
            ("id", Value::UInt(n)) => Some(*n),
            _ => None,
        });
        for codec in Codec::ALL {
            let bytes = encode_object(codec, &fields);
            check_decoders(codec, &bytes)?;
            let got = codec.decode_client(&bytes).map_err(|e| e.code());
            prop_assert_eq!(&got, &expected, "{:?}", codec);
            if let Err(e) = codec.decode_client(&bytes) {
                prop_assert_eq!(e.id(), id, "{:?} {:?}", codec, e);
            }
            // A client frame reads the same with the broker-to-client decoder
            // (it only knows more types).
            let kind = fields.iter().find(|(k, _)| k == "type").map(|(_, v)| v);
            let server_kind = matches!(kind, Some(Value::Str(t)) if SERVER_TYPES.contains(&t.as_str()));
            if !server_kind {
                let any = codec.decode_bytes(&bytes).map_err(|e| e.code());
                prop_assert_eq!(any, got, "{:?}", codec);
            }
        }
    }

    /// Objects with every field name of either direction and random values:
    /// no panic, only decode codes, and the `id` is carried into errors.
    #[test]
    fn any_objects_decode_or_fail_cleanly(fields in object(ALL_KEYS)) {
        let id = fields.iter().find_map(|(k, v)| match (k.as_str(), v) {
            ("id", Value::UInt(n)) => Some(*n),
            _ => None,
        });
        for codec in Codec::ALL {
            let bytes = encode_object(codec, &fields);
            check_decoders(codec, &bytes)?;
            for result in [codec.decode_client(&bytes), codec.decode_bytes(&bytes)] {
                match result {
                    Err(e) => prop_assert_eq!(e.id(), id, "{:?} {:?}", codec, e),
                    Ok(env) => if let Some(n) = id {
                        // Every frame with an id keeps it.
                        if !matches!(env, Envelope::Welcome { .. } | Envelope::Message { .. } | Envelope::Lagged { .. }) {
                            prop_assert_eq!(env.id(), Some(n));
                        }
                    },
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Topics and filters.
// ---------------------------------------------------------------------------

fn topic_candidate() -> impl Strategy<Value = String> {
    prop_oneof![
        2 => any::<String>(),
        4 => "[a-c0-9_:.*>$ é-]{0,12}",
        2 => "[$]?[a-c*>]{0,2}(\\.[a-c*>]{0,2}){0,4}",
        2 => topic_name(),
        2 => filter_name(),
        1 => "[ab.]{250,260}",
        1 => "[a]{250,260}",
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn topics_accept_exactly_the_grammar(s in topic_candidate()) {
        let topic = Topic::new(&s);
        let filter = Filter::new(&s);
        prop_assert_eq!(topic.is_ok(), ref_valid(&s, false), "Topic::new({:?}) = {:?}", s, topic);
        prop_assert_eq!(filter.is_ok(), ref_valid(&s, true), "Filter::new({:?}) = {:?}", s, filter);

        if s.is_empty() {
            prop_assert_eq!(topic.clone().unwrap_err(), TopicError::Empty);
        } else if s.len() > MAX_TOPIC_BYTES {
            prop_assert_eq!(topic.clone().unwrap_err(), TopicError::TooLong(s.len()));
            prop_assert_eq!(filter.clone().unwrap_err(), TopicError::TooLong(s.len()));
        }
        if let Ok(t) = &topic {
            prop_assert_eq!(t.as_str(), s.as_str());
            prop_assert_eq!(t.to_string(), s.as_str());
            prop_assert_eq!(t.is_reserved(), s.starts_with('$'));
            let f = filter.as_ref().expect("a topic is a filter");
            prop_assert!(!f.is_pattern());
            prop_assert_eq!(f.as_topic(), Some(t.clone()));
            prop_assert_eq!(&Filter::from(t.clone()), f);
            prop_assert!(f.matches(&s));
        }
        if let Ok(f) = &filter {
            prop_assert_eq!(f.as_str(), s.as_str());
            if f.is_pattern() {
                prop_assert_eq!(topic.unwrap_err(), TopicError::Wildcard);
                prop_assert_eq!(f.as_topic(), None);
            } else {
                prop_assert!(topic.is_ok());
            }
        }
    }
}

/// One token of a small-alphabet filter, for matching tests.
#[derive(Debug, Clone)]
enum Pat {
    Lit(&'static str),
    Star,
}

fn small_token() -> impl Strategy<Value = &'static str> {
    select(vec!["a", "b", "c"])
}

fn small_filter() -> impl Strategy<Value = (Vec<Pat>, bool)> {
    (
        vec(
            prop_oneof![2 => small_token().prop_map(Pat::Lit), 1 => Just(Pat::Star)],
            0..5,
        ),
        any::<bool>(),
    )
        .prop_filter("not empty", |(pats, tail)| !pats.is_empty() || *tail)
}

fn render(pats: &[Pat], tail: bool) -> String {
    let mut tokens: Vec<&str> = pats
        .iter()
        .map(|p| match p {
            Pat::Lit(s) => *s,
            Pat::Star => "*",
        })
        .collect();
    if tail {
        tokens.push(">");
    }
    tokens.join(".")
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn matching_agrees_with_the_reference(
        (pats, tail) in small_filter(),
        topic in vec(small_token(), 1..7),
    ) {
        let f = render(&pats, tail);
        let topic = topic.join(".");
        let filter = Filter::new(&f).unwrap();
        prop_assert_eq!(filter.matches(&topic), ref_matches(&f, &topic), "{} ~ {}", f, topic);
    }

    /// Replacing each `*` by a token and `>` by one or more gives a match;
    /// dropping the tail or adding a token does not.
    #[test]
    fn instantiated_patterns_match(
        (pats, tail) in small_filter(),
        fill in vec(token(), 8),
        tail_len in 1usize..4,
        extra in token(),
    ) {
        let f = render(&pats, tail);
        let filter = Filter::new(&f).unwrap();
        let mut tokens: Vec<String> = pats
            .iter()
            .zip(&fill)
            .map(|(p, fill)| match p {
                Pat::Lit(s) => (*s).to_owned(),
                Pat::Star => fill.clone(),
            })
            .collect();
        let fixed = tokens.len();
        if tail {
            tokens.extend(fill.iter().rev().take(tail_len).cloned());
        }
        let topic = tokens.join(".");
        prop_assert!(filter.matches(&topic), "{} should match {}", f, topic);
        prop_assert!(ref_matches(&f, &topic));
        if fixed > 0 {
            let short = tokens[..fixed].join(".");
            prop_assert_eq!(filter.matches(&short), !tail && short == topic, "{} ~ {}", f, short);
        }
        let longer = format!("{topic}.{extra}");
        prop_assert_eq!(filter.matches(&longer), tail, "{} ~ {}", f, longer);
    }
}

// ---------------------------------------------------------------------------
// Deep nesting, on a tokio-sized worker stack.
// ---------------------------------------------------------------------------

#[test]
fn deeply_nested_json_does_not_overflow() {
    isolated_on_worker_stack("deeply_nested_json_does_not_overflow", || {
        let arrays = String::from_utf8(nested(DEEP, b"[", b"", b"]")).unwrap();
        let objects = String::from_utf8(nested(DEEP, b"{\"a\":", b"null", b"}")).unwrap();
        for deep in [&arrays, &objects] {
            let frames = [
                format!(r#"{{"type":"publish","topic":"a","payload":{deep}}}"#),
                format!(r#"{{"type":"message","topic":"a","payload":{deep}}}"#),
                format!(r#"{{"type":"ping","id":1,"x":{deep}}}"#),
                format!(
                    r#"{{"type":"welcome","version":1,"node":"n","codec":"json","limits":{deep}}}"#
                ),
                format!(r#"{{"type":"subscribe","topic":{deep}}}"#),
                format!(r#"{{"type":"publish","topic":"a","payload":{deep}"#),
            ];
            for frame in &frames {
                for result in [
                    Codec::Json.decode_client(frame.as_bytes()),
                    Codec::Json.decode_bytes(frame.as_bytes()),
                ] {
                    match result {
                        Ok(env) => {
                            // Whatever was accepted can be handled further.
                            if let Some(p) = payload_of(&env) {
                                let _ = p.to_value();
                                let _ = p.to_json_string();
                            }
                            let _ = Codec::MsgPack.encode(&env);
                            assert!(Codec::Json.encode(&env).is_ok());
                        }
                        Err(e) => assert!(DECODE_CODES.contains(&e.code()), "{e:?}"),
                    }
                }
                let _ = Codec::Json.probe_id(frame.as_bytes());
            }
        }
    });
}

#[test]
fn deeply_nested_msgpack_does_not_overflow() {
    isolated_on_worker_stack("deeply_nested_msgpack_does_not_overflow", || {
        let arrays = nested(DEEP, &[0x91], &[0xc0], &[]);
        let mut maps_open = vec![0x81];
        maps_open.extend_from_slice(&msgpack_str("a"));
        let maps = nested(DEEP, &maps_open, &[0xc0], &[]);
        let type_ = |t: &str| msgpack_str(t);
        for deep in [&arrays, &maps] {
            let frames = [
                msgpack_map(&[
                    ("type", &type_("publish")),
                    ("topic", &msgpack_str("a")),
                    ("payload", deep),
                ]),
                msgpack_map(&[
                    ("type", &type_("message")),
                    ("topic", &msgpack_str("a")),
                    ("payload", deep),
                ]),
                msgpack_map(&[("type", &type_("ping")), ("id", &[0x01]), ("x", deep)]),
                msgpack_map(&[("type", &type_("welcome")), ("limits", deep)]),
            ];
            for frame in &frames {
                for result in [
                    Codec::MsgPack.decode_client(frame),
                    Codec::MsgPack.decode_bytes(frame),
                ] {
                    match result {
                        Ok(env) => {
                            let _ = Codec::Json.encode(&env);
                            let _ = Codec::MsgPack.encode(&env);
                        }
                        Err(e) => assert!(DECODE_CODES.contains(&e.code()), "{e:?}"),
                    }
                }
                let _ = Codec::MsgPack.probe_id(frame);
            }
        }
    });
}

/// The deepest MessagePack payload that decodes must also survive the rest
/// of the pipeline (JSON encoding for JSON subscribers, comparison, drop) on
/// a worker stack. Finds the decoder's limit, then exercises it.
#[test]
fn msgpack_nesting_limit_fits_the_worker_stack() {
    isolated_on_worker_stack("msgpack_nesting_limit_fits_the_worker_stack", || {
        let publish = |depth: usize| {
            let deep = nested(depth, &[0x91], &[0xc0], &[]);
            msgpack_map(&[
                ("type", &msgpack_str("publish")),
                ("topic", &msgpack_str("a")),
                ("payload", &deep),
            ])
        };
        // rmp-serde's default limit is 1024; try every depth up to past it.
        let mut deepest = None;
        for depth in (0..=1100).step_by(10) {
            match Codec::MsgPack.decode_client(&publish(depth)) {
                Ok(env) => deepest = Some((depth, env)),
                Err(e) => assert_eq!(e.code(), ErrorCode::BadFrame),
            }
        }
        let (depth, env) = deepest.expect("shallow payloads decode");
        assert!(depth < 1100, "no nesting limit at all");
        let json = Codec::Json.encode(&env).unwrap();
        let _ = Codec::Json.decode(&json);
        assert_eq!(env.clone(), env);
        drop(env);
    });
}

#[test]
fn json_payloads_accepted_are_deliverable_to_msgpack() {
    on_worker_stack(|| {
        for depth in [127, 128, 200, 1000] {
            let deep = String::from_utf8(nested(depth, b"[", b"1", b"]")).unwrap();
            let frame = format!(r#"{{"type":"publish","topic":"a","payload":{deep}}}"#);
            let Ok(env) = Codec::Json.decode_client(frame.as_bytes()) else {
                // Refusing the frame is fine too.
                continue;
            };
            let payload = payload_of(&env).unwrap();
            assert_ne!(
                payload.to_value(),
                Value::Null,
                "depth {depth}: to_value lost the payload"
            );
            assert!(
                Codec::MsgPack.encode(&env).is_ok(),
                "depth {depth}: {:?}",
                Codec::MsgPack.encode(&env)
            );
        }
    });
}

#[test]
fn deep_msgpack_payloads_survive_the_json_view() {
    on_worker_stack(|| {
        let too_deep = nested(starling_protocol::MAX_DEPTH + 1, &[0x91], &[0x01], &[]);
        let frame = msgpack_map(&[
            ("type", &msgpack_str("publish")),
            ("id", &[0x07]),
            ("topic", &msgpack_str("a")),
            ("payload", &too_deep),
        ]);
        let err = Codec::MsgPack.decode_client(&frame).unwrap_err();
        assert_eq!(err.code(), ErrorCode::BadFrame);
        let deep = nested(starling_protocol::MAX_DEPTH, &[0x91], &[0x01], &[]);
        let frame = msgpack_map(&[
            ("type", &msgpack_str("publish")),
            ("topic", &msgpack_str("a")),
            ("payload", &deep),
        ]);
        let env = Codec::MsgPack.decode_client(&frame).unwrap();
        let back = Codec::Json
            .decode(&Codec::Json.encode(&env).unwrap())
            .unwrap();
        assert_eq!(
            payload_of(&back).unwrap().to_value(),
            payload_of(&env).unwrap().to_value()
        );
    });
}

#[test]
fn out_of_range_json_numbers_are_refused_or_deliverable() {
    for number in ["1e400", "-1e400", "1.7976931348623157e309"] {
        let frame = format!(r#"{{"type":"publish","id":9,"topic":"a","payload":[{number}]}}"#);
        match Codec::Json.decode_client(frame.as_bytes()) {
            Err(e) => assert_eq!((e.code(), e.id()), (ErrorCode::BadFrame, Some(9))),
            Ok(env) => {
                assert_ne!(
                    payload_of(&env).unwrap().to_value(),
                    Value::Null,
                    "{number}"
                );
                assert!(Codec::MsgPack.encode(&env).is_ok(), "{number}");
            }
        }
    }
    assert!(Payload::from_json("1e400").is_err());
    assert!(Payload::from_json("[-2e400]").is_err());
}
