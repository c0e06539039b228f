//! Authentication and permissions (PROTOCOL.md, "Authentication and
//! permissions"), against a real broker over real sockets: tokens at the
//! handshake, permissions per frame, `from`, expiry and refresh, origins,
//! the API key and the publish API's content type. Each group also checks
//! that an authorised subscriber on the same broker loses nothing meanwhile.

use std::time::Duration;

use serde_json::json;
use starling_broker::Config;
use starling_protocol::{Codec, Envelope, ErrorCode, Filter, Payload, Topic};
use starling_tests::tokens::{self, Claims, now_plus};
use starling_tests::{Client, RawWs, TestBroker, http_request_with};

/// A broker with HS256 auth (and `adjust` applied).
async fn hs256_broker(adjust: impl FnOnce(&mut Config)) -> TestBroker {
    TestBroker::with_config(|c| {
        c.jwt_secret = Some(tokens::SECRET.into());
        adjust(c);
    })
    .await
}

/// A broker that verifies RS256 or ES256 tokens with the public key `key`.
async fn public_key_broker(key: &str) -> TestBroker {
    TestBroker::with_config(|c| c.jwt_public_key = Some(tokens::key_path(key))).await
}

/// A client connected with `token` in the query.
async fn connect(broker: &TestBroker, token: &str, codec: Option<Codec>) -> Client {
    Client::connect(&format!("{}?token={token}", broker.ws_url()), codec).await
}

/// A token that may do anything on `chat.>`.
fn chatter(sub: &str) -> Claims {
    Claims::new(sub).publish(&["chat.>"]).subscribe(&["chat.>"])
}

/// The close a handshake with `token` (none: no token at all) ends with:
/// the upgrade completes, no `welcome` comes, the close frame is the first.
async fn refused(broker: &TestBroker, token: Option<&str>) -> (u16, String) {
    let path = match token {
        Some(token) => format!("/ws?token={token}"),
        None => "/ws".to_owned(),
    };
    let (answer, mut raw) =
        RawWs::request(broker.addr(), "GET", &path, &RawWs::UPGRADE_HEADERS).await;
    assert_eq!(answer.status, 101, "{answer:?}");
    let (code, reason, before) = raw.recv_close().await;
    assert!(before.is_empty(), "frames before the close: {before:?}");
    (code, reason)
}

/// An authorised subscriber of `chat.witness`, and a way to check that it
/// got every message published there meanwhile.
struct Witness {
    subscriber: Client,
    publisher: Client,
    sent: u64,
}

impl Witness {
    async fn join(broker: &TestBroker) -> Witness {
        let token = chatter("witness").hs256();
        let mut subscriber = connect(broker, &token, None).await;
        subscriber.subscribe("chat.witness").await;
        let publisher = connect(broker, &token, Some(Codec::MsgPack)).await;
        Witness {
            subscriber,
            publisher,
            sent: 0,
        }
    }

    async fn publish(&mut self) {
        self.sent += 1;
        self.publisher
            .publish("chat.witness", &self.sent.to_string())
            .await;
    }

    async fn check(mut self) {
        for n in 1..=self.sent {
            let (topic, payload) = self.subscriber.recv_message().await;
            assert_eq!(topic, "chat.witness");
            assert_eq!(payload.decode::<u64>().unwrap(), n);
        }
        self.subscriber
            .expect_silence(Duration::from_millis(50))
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_close_the_connection_with_1008_before_welcome() {
    let broker = hs256_broker(|_| {}).await;
    let mut witness = Witness::join(&broker).await;
    let valid = chatter("ada");
    let cases: Vec<(&str, Option<String>, &str)> = vec![
        ("missing", None, "no token"),
        ("garbage", Some("not.a.jwt".into()), "malformed"),
        (
            "wrong secret",
            Some(valid.hs256_with(b"another secret entirely")),
            "bad signature",
        ),
        (
            "expired",
            Some(valid.clone().set("exp", json!(now_plus(-60))).hs256()),
            "expired",
        ),
        (
            "not yet valid",
            Some(valid.clone().set("nbf", json!(now_plus(600))).hs256()),
            "not yet valid",
        ),
        // No Starling key type names `none`: the header does not parse.
        ("alg none", Some(valid.unsigned()), "malformed"),
        (
            "no sub",
            Some(valid.clone().set("sub", json!(null)).hs256()),
            "without a subject",
        ),
        (
            "empty sub",
            Some(valid.clone().set("sub", json!("")).hs256()),
            "without a subject",
        ),
        (
            "a sub over 1 KiB",
            Some(valid.clone().set("sub", json!("a".repeat(1025))).hs256()),
            "sub is over 1024 bytes",
        ),
        (
            "RS256 on an HS256 broker",
            Some(valid.rs256("rsa-private.pem")),
            "bad signature",
        ),
        (
            "a permission that is not a filter",
            Some(valid.clone().publish(&["chat..x"]).hs256()),
            "permission filter",
        ),
    ];
    for (case, token, why) in cases {
        let (code, reason) = refused(&broker, token.as_deref()).await;
        assert_eq!(code, 1008, "{case}: {reason}");
        assert!(reason.starts_with("unauthorized"), "{case}: {reason}");
        assert!(reason.contains(why), "{case}: {reason}");
        witness.publish().await;
    }
    witness.check().await;
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_keys_accept_their_own_algorithm_only() {
    let valid = chatter("ada");
    let rsa = public_key_broker("rsa-public.pem").await;
    connect(&rsa, &valid.rs256("rsa-private.pem"), None).await;
    for (case, token) in [
        ("another RSA key", valid.rs256("other-rsa-private.pem")),
        ("HMAC with the public key", valid.hs256_with_public_key()),
        ("a key of the other kind", valid.es256()),
        ("alg none", valid.unsigned()),
    ] {
        let (code, reason) = refused(&rsa, Some(&token)).await;
        assert_eq!(code, 1008, "{case}: {reason}");
        assert!(reason.starts_with("unauthorized"), "{case}: {reason}");
    }
    rsa.stop().await;

    let ec = public_key_broker("ec-public.pem").await;
    connect(&ec, &valid.es256(), Some(Codec::MsgPack)).await;
    let (code, _) = refused(&ec, Some(&valid.rs256("rsa-private.pem"))).await;
    assert_eq!(code, 1008);
    ec.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_may_come_in_an_authorization_header() {
    let broker = hs256_broker(|_| {}).await;
    let bearer = format!("Bearer {}", chatter("ada").hs256());
    let mut headers = RawWs::UPGRADE_HEADERS.to_vec();
    headers.push(("Authorization", &bearer));
    let (answer, mut raw) = RawWs::request(broker.addr(), "GET", "/ws", &headers).await;
    assert_eq!(answer.status, 101, "{answer:?}");
    let welcome = raw.read_frame().await.expect("welcome");
    let text = String::from_utf8(welcome.payload).unwrap();
    assert!(text.contains(r#""type":"welcome""#), "{text}");

    // Another scheme is no token.
    let basic = format!("Basic {}", chatter("ada").hs256());
    let mut headers = RawWs::UPGRADE_HEADERS.to_vec();
    headers.push(("Authorization", &basic));
    let (answer, mut raw) = RawWs::request(broker.addr(), "GET", "/ws", &headers).await;
    assert_eq!(answer.status, 101);
    let (code, reason, _) = raw.recv_close().await;
    assert_eq!((code, reason.as_str()), (1008, "unauthorized: no token"));
    broker.stop().await;
}

fn subscribe(id: u64, topic: &str) -> Envelope {
    Envelope::Subscribe {
        name: None,
        info: None,
        epoch: None,
        id: Some(id),
        topic: Filter::new(topic).unwrap(),
        since: None,
    }
}

fn publish(id: u64, topic: &str, json: &str) -> Envelope {
    Envelope::Publish {
        id: Some(id),
        topic: Topic::new(topic).unwrap(),
        payload: Payload::from_json(json).unwrap(),
    }
}

fn is_unauthorized(answer: &Envelope) -> bool {
    matches!(
        answer,
        Envelope::Error {
            code: ErrorCode::Unauthorized,
            ..
        }
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permissions_decide_every_subscribe_and_publish() {
    let broker = hs256_broker(|_| {}).await;
    let mut witness = Witness::join(&broker).await;
    let token = Claims::new("ada")
        .publish(&["chat.*", "$sys.stats"])
        .subscribe(&["chat.>", "rooms.*.messages", "$sys.stats"])
        .hs256();
    let mut ada = connect(&broker, &token, None).await;
    let cases = [
        ("chat.lobby", true),
        ("chat.*", true),
        ("chat.>", true),
        ("chat.lobby.typing", true),
        ("rooms.42.messages", true),
        ("rooms.*.messages", true),
        ("$sys.stats", true),
        ("news", false),
        (">", false),
        ("*.lobby", false),
        ("rooms.42.>", false),
        ("rooms.*.typing", false),
        ("$sys.*", false),
    ];
    for (n, (topic, allowed)) in cases.into_iter().enumerate() {
        let answer = ada.request(&subscribe(n as u64 + 1, topic)).await;
        assert_eq!(
            !is_unauthorized(&answer),
            allowed,
            "subscribe {topic}: {answer:?}"
        );
        witness.publish().await;
    }
    for (n, (topic, allowed)) in [
        ("chat.lobby", true),
        ("chat.lobby.typing", false),
        ("news", false),
        // `$` topics stay unpublishable whatever the token says.
        ("$sys.stats", false),
    ]
    .into_iter()
    .enumerate()
    {
        let answer = ada.request(&publish(100 + n as u64, topic, "1")).await;
        assert_eq!(
            !is_unauthorized(&answer),
            allowed,
            "publish {topic}: {answer:?}"
        );
    }
    // The connection is still open.
    let pong = ada.request(&Envelope::Ping { id: Some(999) }).await;
    assert_eq!(pong, Envelope::Pong { id: Some(999) });

    // A token without permissions may do nothing.
    let mut nobody = connect(&broker, &Claims::new("nobody").hs256(), None).await;
    assert!(is_unauthorized(
        &nobody.request(&subscribe(1, "chat.lobby")).await
    ));
    assert!(is_unauthorized(
        &nobody.request(&publish(2, "chat.lobby", "1")).await
    ));
    witness.check().await;
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_carry_the_publishers_identity_and_none_from_http() {
    let broker = hs256_broker(|c| c.api_key = Some("backend-key".into())).await;
    let mut json = connect(&broker, &chatter("bob").hs256(), None).await;
    let mut msgpack = connect(&broker, &chatter("carol").hs256(), Some(Codec::MsgPack)).await;
    json.subscribe("chat.lobby").await;
    msgpack.subscribe("chat.*").await;
    let mut ada = connect(&broker, &chatter("ada").hs256(), None).await;
    ada.publish("chat.lobby", r#"{"text":"hi"}"#).await;
    for client in [&mut json, &mut msgpack] {
        match client.recv().await {
            Envelope::Message { topic, from, .. } => {
                assert_eq!(topic.as_str(), "chat.lobby");
                assert_eq!(from.as_deref(), Some("ada"));
            }
            other => panic!("expected a message, got {other:?}"),
        }
    }
    let answer = http_request_with(
        "POST",
        &format!("{}/api/publish", broker.http_url()),
        &[
            ("content-type", "application/json"),
            ("authorization", "Bearer backend-key"),
        ],
        Some(br#"{"topic":"chat.lobby","payload":"from the backend"}"#.to_vec()),
    )
    .await;
    assert_eq!(answer.status, 202, "{answer:?}");
    match json.recv().await {
        Envelope::Message { from, payload, .. } => {
            assert_eq!(from, None);
            assert_eq!(payload.to_json_string(), r#""from the backend""#);
        }
        other => panic!("expected a message, got {other:?}"),
    }
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_closes_the_connection_unless_refreshed() {
    let broker = hs256_broker(|c| c.jwt_leeway_s = 0).await;
    let mut witness = Witness::join(&broker).await;
    let short = chatter("ada").set("exp", json!(now_plus(2)));
    let mut lapsing = connect(&broker, &short.hs256(), None).await;
    let mut refreshed = connect(&broker, &short.hs256(), None).await;
    refreshed.subscribe("chat.lobby").await;
    let renewed = chatter("ada").set("exp", json!(now_plus(3600))).hs256();
    let answer = refreshed
        .request(&Envelope::Refresh {
            id: Some(7),
            token: renewed,
        })
        .await;
    assert_eq!(
        answer,
        Envelope::Ack {
            epoch: None,
            id: 7,
            offset: None
        }
    );
    witness.publish().await;

    lapsing.set_patience(Duration::from_secs(6));
    let (code, reason, _) = lapsing.recv_close().await;
    assert_eq!(
        (code, reason.as_str()),
        (1008, "unauthorized: token expired")
    );

    // Past the first token's expiry, the refreshed connection still works.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut publisher = connect(&broker, &chatter("bob").hs256(), None).await;
    publisher.publish("chat.lobby", "1").await;
    let (topic, _) = refreshed.recv_message().await;
    assert_eq!(topic, "chat.lobby");
    witness.publish().await;
    witness.check().await;
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_narrows_permissions_and_ends_what_they_no_longer_allow() {
    let broker = hs256_broker(|_| {}).await;
    let wide = Claims::new("ada")
        .publish(&["chat.>"])
        .subscribe(&["chat.>", "news.>"]);
    let mut ada = connect(&broker, &wide.hs256(), None).await;
    ada.subscribe("chat.lobby").await;
    ada.subscribe("news.world").await;

    // A bad token or another subject is refused, and the old token stays.
    // Attempts come at most once a second: the one right after is refused
    // before its token is even verified.
    for token in [
        "garbage".to_owned(),
        Claims::new("eve").subscribe(&[">"]).hs256(),
    ] {
        let answer = ada.request(&Envelope::Refresh { id: Some(1), token }).await;
        assert!(is_unauthorized(&answer), "{answer:?}");
        let again = ada
            .request(&Envelope::Refresh {
                id: Some(5),
                token: wide.hs256(),
            })
            .await;
        assert!(
            matches!(
                again,
                Envelope::Error {
                    code: ErrorCode::RateLimited,
                    ..
                }
            ),
            "{again:?}"
        );
        tokio::time::sleep(Duration::from_millis(1050)).await;
    }

    let narrow = Claims::new("ada")
        .publish(&["chat.>"])
        .subscribe(&["chat.>"])
        .hs256();
    let answer = ada
        .request(&Envelope::Refresh {
            id: Some(2),
            token: narrow,
        })
        .await;
    assert_eq!(
        answer,
        Envelope::Ack {
            epoch: None,
            id: 2,
            offset: None
        }
    );
    // The ended subscription is named in an error (it came before the ack).
    match ada.recv().await {
        Envelope::Error { id, code, message } => {
            assert_eq!((id, code), (None, ErrorCode::Unauthorized));
            assert!(message.contains("news.world"), "{message}");
        }
        other => panic!("expected an error, got {other:?}"),
    }
    let mut publisher = connect(&broker, &Claims::new("bob").publish(&[">"]).hs256(), None).await;
    publisher
        .publish_nowait("news.world", Payload::from_json("1").unwrap())
        .await;
    publisher
        .publish_nowait("chat.lobby", Payload::from_json("2").unwrap())
        .await;
    let (topic, payload) = ada.recv_message().await;
    assert_eq!(
        (topic.as_str(), payload.to_json_string()),
        ("chat.lobby", "2".into())
    );
    ada.expect_silence(Duration::from_millis(100)).await;
    // New subscriptions follow the new permissions.
    assert!(is_unauthorized(
        &ada.request(&subscribe(3, "news.world")).await
    ));
    broker.stop().await;
}

/// The answer to a WebSocket handshake from a page of `origin`.
async fn handshake_from(broker: &TestBroker, origin: Option<&str>, host: &str) -> u16 {
    let mut raw = RawWs::open(broker.addr()).await;
    let mut head = format!("GET /ws HTTP/1.1\r\nHost: {host}\r\n");
    for (name, value) in RawWs::UPGRADE_HEADERS {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if let Some(origin) = origin {
        head.push_str(&format!("Origin: {origin}\r\n"));
    }
    head.push_str("\r\n");
    raw.write_raw(head.as_bytes()).await;
    let answer = raw.read_answer().await;
    if answer.status == 403 {
        assert_eq!(answer.header("content-type"), Some("application/json"));
        assert!(
            answer.body.contains(r#""code":"forbidden_origin""#),
            "{answer:?}"
        );
    }
    answer.status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_of_other_origins_are_refused_unless_allowed() {
    let broker = TestBroker::start().await;
    let host = broker.addr().to_string();
    let own = format!("http://{host}");
    let cases = [
        // No Origin: not a browser, not affected.
        (None, 101),
        (Some(own.as_str()), 101),
        (Some("http://evil.example"), 403),
        (Some("null"), 403),
        (Some("https://127.0.0.1"), 403),
    ];
    for (origin, status) in cases {
        assert_eq!(
            handshake_from(&broker, origin, &host).await,
            status,
            "{origin:?}"
        );
    }
    // The same origin under another port or scheme is another origin.
    let port = broker.addr().port();
    let other_port = format!("http://127.0.0.1:{}", port.wrapping_add(1));
    assert_eq!(handshake_from(&broker, Some(&other_port), &host).await, 403);
    broker.stop().await;

    let broker = TestBroker::with_config(|c| {
        c.allowed_origins = vec![
            "https://app.example.com".into(),
            "https://*.example.org".into(),
        ];
    })
    .await;
    let mut witness = broker.json().await;
    witness.subscribe("chat.witness").await;
    let mut publisher = broker.json().await;
    let host = broker.addr().to_string();
    let cases = [
        ("https://app.example.com", 101),
        ("https://app.example.com:443", 101),
        ("http://app.example.com", 403),
        ("https://app.example.com.evil.net", 403),
        ("https://chat.example.org", 101),
        ("https://a.b.example.org", 101),
        ("https://example.org", 403),
        ("https://evilexample.org", 403),
        ("https://example.org.evil.net", 403),
        ("null", 403),
    ];
    for (n, (origin, status)) in cases.into_iter().enumerate() {
        assert_eq!(
            handshake_from(&broker, Some(origin), &host).await,
            status,
            "{origin}"
        );
        publisher.publish("chat.witness", &n.to_string()).await;
    }
    for n in 0..cases.len() {
        let (_, payload) = witness.recv_message().await;
        assert_eq!(payload.decode::<usize>().unwrap(), n);
    }
    broker.stop().await;

    let any = TestBroker::with_config(|c| c.allowed_origins = vec!["*".into()]).await;
    let host = any.addr().to_string();
    assert_eq!(handshake_from(&any, Some("null"), &host).await, 101);
    assert_eq!(
        handshake_from(&any, Some("https://anything.example"), &host).await,
        101
    );
    any.stop().await;
}

/// `POST /api/publish` with these headers and a valid JSON body.
async fn api_publish(broker: &TestBroker, headers: &[(&str, &str)]) -> (u16, String) {
    let answer = http_request_with(
        "POST",
        &format!("{}/api/publish", broker.http_url()),
        headers,
        Some(br#"{"topic":"chat.witness","payload":"via http"}"#.to_vec()),
    )
    .await;
    (answer.status, answer.body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_api_takes_the_api_key_and_json_only() {
    let broker = TestBroker::with_config(|c| c.api_key = Some("s3cret-key".into())).await;
    let mut witness = broker.json().await;
    witness.subscribe("chat.witness").await;
    let json = ("content-type", "application/json");
    for (case, headers) in [
        ("no key", vec![json]),
        (
            "another scheme",
            vec![json, ("authorization", "Basic s3cret-key")],
        ),
        (
            "a wrong key",
            vec![json, ("authorization", "Bearer s3cret-kez")],
        ),
        (
            "a prefix of the key",
            vec![json, ("authorization", "Bearer s3cret")],
        ),
    ] {
        let (status, body) = api_publish(&broker, &headers).await;
        assert_eq!(status, 401, "{case}: {body}");
        assert!(body.contains(r#""code":"unauthorized""#), "{case}: {body}");
    }
    let key = ("authorization", "Bearer s3cret-key");
    for (case, content_type, status) in [
        ("JSON", Some("application/json"), 202),
        (
            "JSON with a charset",
            Some("application/json; charset=utf-8"),
            202,
        ),
        ("plain text", Some("text/plain"), 415),
        ("a form", Some("application/x-www-form-urlencoded"), 415),
        ("no type", None, 415),
    ] {
        let mut headers = vec![key];
        if let Some(content_type) = content_type {
            headers.push(("content-type", content_type));
        }
        let (got, body) = api_publish(&broker, &headers).await;
        assert_eq!(got, status, "{case}: {body}");
        if status == 415 {
            assert!(
                body.contains(r#""code":"unsupported_media_type""#),
                "{case}: {body}"
            );
        }
    }
    // Exactly the two accepted publishes arrived.
    for _ in 0..2 {
        let (_, payload) = witness.recv_message().await;
        assert_eq!(payload.to_json_string(), r#""via http""#);
    }
    witness.expect_silence(Duration::from_millis(100)).await;
    broker.stop().await;

    // Without --api-key the API is open, but JSON only all the same.
    let open = TestBroker::start().await;
    assert_eq!(api_publish(&open, &[json]).await.0, 202);
    assert_eq!(
        api_publish(&open, &[("content-type", "text/plain")])
            .await
            .0,
        415
    );
    open.stop().await;

    // With JWT auth on and no API key, the API answers 401 to everything.
    let closed = hs256_broker(|_| {}).await;
    let (status, body) = api_publish(&closed, &[json, key]).await;
    assert_eq!(status, 401, "{body}");
    closed.stop().await;
}
