//! Publish/subscribe round trips over real WebSockets, within and across codecs.

use starling_protocol::{Codec, Envelope, Payload, Value};
use starling_tests::{Client, TestBroker};

#[tokio::test]
async fn welcome_announces_version_node_codec_and_limits() {
    let broker = TestBroker::start().await;
    for (codec, name) in [
        (Some(Codec::Json), "Json"),
        (Some(Codec::MsgPack), "Msgpack"),
        (None, "Json"),
    ] {
        let client = Client::connect(&broker.ws_url(), codec).await;
        let Envelope::Welcome {
            version,
            node,
            codec,
            limits,
        } = &client.welcome
        else {
            panic!("first frame is welcome")
        };
        assert_eq!(*version, 1);
        assert_eq!(&**node, "test-node");
        assert_eq!(format!("{codec:?}"), name);
        assert_eq!(limits.max_message_bytes, 1024 * 1024);
        assert_eq!(limits.max_subscriptions, 1024);
        assert_eq!(limits.max_frame_bytes, 2 * 1024 * 1024);
        assert_eq!(limits.outbound_queue_bytes, 64 * 1024);
        assert_eq!(limits.max_connections, 100_000);
    }
    broker.stop().await;
}

#[tokio::test]
async fn json_round_trip_matches_the_protocol_example() {
    let broker = TestBroker::start().await;
    let mut a = broker.json().await;
    a.send_raw(r#"{"type":"subscribe","id":1,"topic":"chat.lobby"}"#.into())
        .await;
    assert_eq!(
        a.recv().await,
        Envelope::Ack {
            epoch: None,
            id: 1,
            offset: None
        }
    );
    a.send_raw(
        r#"{"type":"publish","id":2,"topic":"chat.lobby","payload":{"user":"ada","text":"hi"}}"#
            .into(),
    )
    .await;
    let mut got = [a.recv_raw().await.unwrap(), a.recv_raw().await.unwrap()];
    got.sort_by_key(|m| m.to_text().unwrap().len());
    assert_eq!(got[0].to_text().unwrap(), r#"{"type":"ack","id":2}"#);
    assert_eq!(
        got[1].to_text().unwrap(),
        r#"{"type":"message","topic":"chat.lobby","payload":{"user":"ada","text":"hi"}}"#
    );
    broker.stop().await;
}

#[tokio::test]
async fn msgpack_round_trip_keeps_bin() {
    let broker = TestBroker::start().await;
    let mut sub = broker.msgpack().await;
    let mut publisher = broker.msgpack().await;
    sub.subscribe("files.new").await;
    let payload = Payload::from_value(Value::Map(vec![
        (Value::Str("name".into()), Value::Str("a.png".into())),
        (
            Value::Str("data".into()),
            Value::Bin(vec![0, 159, 146, 150]),
        ),
    ]));
    publisher.publish_nowait("files.new", payload.clone()).await;
    let (topic, got) = sub.recv_message().await;
    assert_eq!(topic, "files.new");
    assert_eq!(got.to_value(), payload.to_value());
    broker.stop().await;
}

#[tokio::test]
async fn json_and_msgpack_clients_share_topics() {
    let broker = TestBroker::start().await;
    let mut json = broker.json().await;
    let mut msgpack = broker.msgpack().await;
    json.subscribe("mixed").await;
    msgpack.subscribe("mixed").await;

    // MessagePack publisher, bin payload: JSON subscribers see {"$bin": base64}.
    let bin = Payload::from_value(Value::Map(vec![(
        Value::Str("blob".into()),
        Value::Bin(b"hello".to_vec()),
    )]));
    msgpack.publish_nowait("mixed", bin.clone()).await;
    let (_, to_json) = json.recv_message().await;
    assert_eq!(to_json.to_json_string(), r#"{"blob":{"$bin":"aGVsbG8="}}"#);
    let (_, to_msgpack) = msgpack.recv_message().await;
    assert_eq!(to_msgpack.to_value(), bin.to_value());

    // JSON publisher: MessagePack subscribers get the same value.
    json.publish_nowait(
        "mixed",
        Payload::from_json(r#"{"n":-3,"f":0.5,"ok":true,"l":[null,"x"]}"#).unwrap(),
    )
    .await;
    let (_, from_json) = msgpack.recv_message().await;
    let s = |v: &str| Value::Str(v.into());
    assert_eq!(
        from_json.to_value(),
        Value::Map(vec![
            (s("n"), Value::Int(-3)),
            (s("f"), Value::Float(0.5)),
            (s("ok"), Value::Bool(true)),
            (s("l"), Value::Array(vec![Value::Null, s("x")])),
        ])
    );
    let (_, echo) = json.recv_message().await;
    assert_eq!(
        echo.to_json_string(),
        r#"{"n":-3,"f":0.5,"ok":true,"l":[null,"x"]}"#
    );
    broker.stop().await;
}

#[tokio::test]
async fn pattern_subscriptions_name_the_pattern() {
    let broker = TestBroker::start().await;
    let mut sub = broker.json().await;
    let mut publisher = broker.json().await;
    sub.subscribe("metrics.*.cpu").await;
    sub.subscribe("logs.>").await;
    publisher.publish("metrics.host1.cpu", "0.5").await;
    publisher.publish("metrics.host1.mem", "7").await;
    publisher.publish("logs.app.error", "\"boom\"").await;
    let first = sub.recv().await;
    assert_eq!(
        first,
        Envelope::Message {
            epoch: None,
            topic: "metrics.host1.cpu".parse().unwrap(),
            payload: Payload::from_json("0.5").unwrap(),
            offset: None,
            sub: Some(starling_protocol::Filter::new("metrics.*.cpu").unwrap()),
            from: None,
        }
    );
    let (topic, _) = sub.recv_message().await;
    assert_eq!(topic, "logs.app.error");
    broker.stop().await;
}

#[tokio::test]
async fn subscribe_twice_delivers_once_and_unsubscribe_stops_delivery() {
    let broker = TestBroker::start().await;
    let mut sub = broker.json().await;
    let mut publisher = broker.json().await;
    sub.subscribe("t").await;
    sub.subscribe("t").await;
    publisher.publish("t", "1").await;
    assert_eq!(sub.recv_message().await.1, Payload::from_json("1").unwrap());
    sub.expect_silence(std::time::Duration::from_millis(200))
        .await;

    let answer = sub
        .request(&Envelope::Unsubscribe {
            id: Some(50),
            topic: "t".parse().unwrap(),
        })
        .await;
    assert_eq!(
        answer,
        Envelope::Ack {
            epoch: None,
            id: 50,
            offset: None
        }
    );
    publisher.publish("t", "2").await;
    sub.expect_silence(std::time::Duration::from_millis(200))
        .await;
    assert_eq!(
        broker.broker().registry().len(),
        0,
        "the empty topic was removed"
    );
    broker.stop().await;
}

#[tokio::test]
async fn ping_gets_pong_with_the_same_id() {
    let broker = TestBroker::start().await;
    let mut c = broker.json().await;
    assert_eq!(
        c.request(&Envelope::Ping { id: Some(77) }).await,
        Envelope::Pong { id: Some(77) }
    );
    c.send(&Envelope::Ping { id: None }).await;
    assert_eq!(c.recv().await, Envelope::Pong { id: None });
    broker.stop().await;
}
