//! Golden JSON fixtures: the exact text the JSON codec writes for one
//! representative frame of each kind (the examples of PROTOCOL.md where it has
//! them). The files in `tests/fixtures/` are shared with the JavaScript client,
//! so a change here is a wire change.

use std::path::{Path, PathBuf};

use starling_protocol::{
    Codec, CodecName, Envelope, ErrorCode, Filter, Frame, Limits, Member, Payload, Topic, Value,
};

struct Fixture {
    /// The file name in `tests/fixtures/`.
    file: &'static str,
    /// The frame whose JSON encoding the file holds.
    envelope: Envelope,
    /// What decoding the file gives, when it differs from `envelope`
    /// (MessagePack `bin` reads back as its `{"$bin": ...}` JSON form).
    decoded: Option<Envelope>,
}

fn fixture(file: &'static str, envelope: Envelope) -> Fixture {
    Fixture {
        file,
        envelope,
        decoded: None,
    }
}

fn topic(name: &str) -> Topic {
    Topic::new(name).unwrap()
}

fn filter(name: &str) -> Filter {
    Filter::new(name).unwrap()
}

fn json(text: &str) -> Payload {
    Payload::from_json(text).unwrap()
}

fn chat() -> Payload {
    json(r#"{"user":"ada","text":"hi"}"#)
}

fn fixtures() -> Vec<Fixture> {
    let s = |v: &str| Value::Str(v.into());
    let bin_message = |payload| Envelope::Message {
        epoch: None,
        topic: topic("files.upload"),
        payload,
        offset: None,
        sub: None,
        from: None,
    };
    vec![
        fixture(
            "subscribe.json",
            Envelope::Subscribe {
                name: None,
                info: None,
                epoch: None,
                id: Some(1),
                topic: filter("chat.lobby"),
                since: None,
            },
        ),
        fixture(
            "subscribe_since.json",
            Envelope::Subscribe {
                name: None,
                info: None,
                epoch: None,
                id: Some(4),
                topic: filter("chat.*"),
                since: Some(41),
            },
        ),
        fixture(
            "subscribe_resume.json",
            Envelope::Subscribe {
                name: None,
                info: None,
                id: Some(7),
                topic: filter("chat.lobby"),
                since: Some(41),
                epoch: Some("k3x9q2".into()),
            },
        ),
        fixture(
            "unsubscribe.json",
            Envelope::Unsubscribe {
                id: Some(5),
                topic: filter("chat.lobby"),
            },
        ),
        fixture(
            "publish.json",
            Envelope::Publish {
                id: Some(2),
                topic: topic("chat.lobby"),
                payload: chat(),
            },
        ),
        fixture("ping.json", Envelope::Ping { id: Some(6) }),
        fixture(
            "welcome.json",
            Envelope::Welcome {
                version: 1,
                node: "n1".into(),
                codec: CodecName::Json,
                limits: Limits::default(),
            },
        ),
        fixture(
            "message.json",
            Envelope::Message {
                epoch: None,
                topic: topic("chat.lobby"),
                payload: chat(),
                offset: None,
                sub: None,
                from: None,
            },
        ),
        fixture(
            "message_offset.json",
            Envelope::Message {
                topic: topic("chat.lobby"),
                payload: chat(),
                offset: Some(42),
                epoch: Some("k3x9q2".into()),
                sub: None,
                from: None,
            },
        ),
        fixture(
            "message_pattern.json",
            Envelope::Message {
                epoch: None,
                topic: topic("chat.lobby"),
                payload: chat(),
                offset: Some(42),
                sub: Some(filter("chat.*")),
                from: None,
            },
        ),
        Fixture {
            file: "message_bin.json",
            envelope: bin_message(Payload::from_value(Value::Map(vec![
                (s("name"), s("a.bin")),
                (s("data"), Value::Bin(vec![1, 2, 3])),
            ]))),
            decoded: Some(bin_message(json(
                r#"{"name":"a.bin","data":{"$bin":"AQID"}}"#,
            ))),
        },
        fixture(
            "ack.json",
            Envelope::Ack {
                epoch: None,
                id: 1,
                offset: None,
            },
        ),
        fixture(
            "ack_offset.json",
            Envelope::Ack {
                epoch: None,
                id: 2,
                offset: Some(42),
            },
        ),
        fixture(
            "ack_subscribe.json",
            Envelope::Ack {
                id: 7,
                offset: Some(45),
                epoch: Some("k3x9q2".into()),
            },
        ),
        fixture(
            "error.json",
            Envelope::error(
                Some(3),
                ErrorCode::InvalidTopic,
                "empty token in topic name",
            ),
        ),
        fixture(
            "lagged.json",
            Envelope::Lagged {
                reset: false,
                topic: filter("chat.>"),
                missed: Some(12),
            },
        ),
        fixture(
            "lagged_reset.json",
            Envelope::Lagged {
                topic: filter("chat.lobby"),
                missed: None,
                reset: true,
            },
        ),
        fixture("pong.json", Envelope::Pong { id: Some(6) }),
        fixture(
            "subscribe_presence.json",
            Envelope::Subscribe {
                id: Some(7),
                topic: filter("chat.lobby"),
                since: None,
                epoch: None,
                name: Some("ada".into()),
                info: Some(json(r#"{"status":"online"}"#)),
            },
        ),
        fixture(
            "presence.json",
            Envelope::Presence {
                id: Some(8),
                topic: topic("chat.lobby"),
                count: None,
                members: None,
            },
        ),
        fixture(
            "presence_answer.json",
            Envelope::Presence {
                id: Some(8),
                topic: topic("chat.lobby"),
                count: Some(2),
                members: Some(vec![
                    Member {
                        name: "ada".into(),
                        sessions: Some(2),
                        info: Some(json(r#"{"status":"online"}"#)),
                    },
                    Member {
                        name: "bob".into(),
                        sessions: Some(1),
                        info: None,
                    },
                ]),
            },
        ),
        fixture(
            "join.json",
            Envelope::Join {
                topic: topic("chat.lobby"),
                member: Member {
                    name: "ada".into(),
                    sessions: None,
                    info: Some(json(r#"{"status":"online"}"#)),
                },
            },
        ),
        fixture(
            "leave.json",
            Envelope::Leave {
                topic: topic("chat.lobby"),
                member: Member {
                    name: "ada".into(),
                    sessions: None,
                    info: None,
                },
            },
        ),
    ]
}

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn read(file: &str) -> String {
    let path = fixtures_dir().join(file);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn text(frame: Frame) -> String {
    match frame {
        Frame::Text(s) => s,
        Frame::Binary(b) => panic!("JSON gave a binary frame: {b:?}"),
    }
}

#[test]
fn json_encoding_matches_the_fixtures() {
    for f in fixtures() {
        let encoded = text(Codec::Json.encode(&f.envelope).unwrap());
        assert_eq!(encoded, read(f.file).trim(), "{}", f.file);
    }
}

#[test]
fn fixtures_decode_to_their_envelopes() {
    for f in fixtures() {
        let content = read(f.file);
        let expected = f.decoded.as_ref().unwrap_or(&f.envelope);
        let decoded = Codec::Json.decode(&Frame::Text(content.clone())).unwrap();
        assert_eq!(&decoded, expected, "{}", f.file);
        let client = Codec::Json.decode_client(content.as_bytes());
        if expected.is_client_frame() {
            assert_eq!(client.as_ref().unwrap(), expected, "{}", f.file);
        } else if let Envelope::Presence { id, topic, .. } = expected {
            // The broker's answer reads, as a client's frame, as the question.
            let question = Envelope::Presence {
                id: *id,
                topic: topic.clone(),
                count: None,
                members: None,
            };
            assert_eq!(client.unwrap(), question, "{}", f.file);
        } else {
            assert_eq!(
                client.unwrap_err().code(),
                ErrorCode::UnknownType,
                "{}",
                f.file
            );
        }
    }
}

/// A JSON peer gets exactly the fixture text whichever codec the frame
/// crossed before (a MessagePack publisher, the broker's conversion).
#[test]
fn fixtures_survive_msgpack() {
    for f in fixtures() {
        let via_msgpack = Codec::MsgPack
            .decode(&Codec::MsgPack.encode(&f.envelope).unwrap())
            .unwrap();
        assert_eq!(via_msgpack, f.envelope, "{}", f.file);
        let encoded = text(Codec::Json.encode(&via_msgpack).unwrap());
        assert_eq!(encoded, read(f.file).trim(), "{}", f.file);
    }
}

/// Fixtures stay minimal and uniform for the JavaScript side: one line of
/// compact JSON and a final newline.
#[test]
fn fixtures_are_single_lines() {
    for f in fixtures() {
        let content = read(f.file);
        assert!(
            content.ends_with('\n') && content.trim_end().lines().count() == 1,
            "{} must be one line with a final newline",
            f.file
        );
        assert!(!content.contains('\r'), "{}", f.file);
    }
}

/// Every file in `tests/fixtures/` is checked here, and each frame kind has one.
#[test]
fn every_fixture_file_is_covered() {
    let mut on_disk: Vec<String> = std::fs::read_dir(fixtures_dir())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    on_disk.sort();
    let mut listed: Vec<String> = fixtures().iter().map(|f| f.file.to_owned()).collect();
    listed.sort();
    assert_eq!(on_disk, listed);

    let mut kinds: Vec<&str> = fixtures().iter().map(|f| f.envelope.type_name()).collect();
    kinds.sort();
    kinds.dedup();
    assert_eq!(
        kinds,
        [
            "ack",
            "error",
            "join",
            "lagged",
            "leave",
            "message",
            "ping",
            "pong",
            "presence",
            "publish",
            "subscribe",
            "unsubscribe",
            "welcome"
        ]
    );
}
