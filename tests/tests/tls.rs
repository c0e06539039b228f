//! TLS served by the broker itself (`--tls-cert`, `--tls-key`): `wss://`
//! and `https://` with a certificate the test makes, the same-origin rule
//! with the `https` scheme, plain clients refused, and start-up errors that
//! name the file at fault.

use std::path::PathBuf;
use std::time::Duration;

use starling_broker::{Config, StartError};
use starling_protocol::Codec;
use starling_tests::{Client, TestBroker, TestCerts, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn tls_broker(certs: &TestCerts) -> TestBroker {
    let (cert, key) = (certs.cert_path.clone(), certs.key_path.clone());
    TestBroker::with_config(|c| {
        c.tls_cert = Some(cert);
        c.tls_key = Some(key);
    })
    .await
}

async fn connect(broker: &TestBroker, certs: &TestCerts, codec: Codec) -> Client {
    Client::connect_tls(&broker.ws_url(), Some(codec), certs.client_config()).await
}

/// Reads an HTTP answer's head from `stream`: the status code and the head.
async fn read_head(stream: &mut (impl AsyncReadExt + Unpin)) -> (u16, String) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = within("answer head", stream.read(&mut byte))
            .await
            .expect("read the head");
        assert_eq!(n, 1, "connection closed inside the head: {head:?}");
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).expect("a text head");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head}"));
    (status, head)
}

fn upgrade_head(host: &str, origin: Option<&str>) -> String {
    let origin = origin
        .map(|o| format!("Origin: {o}\r\n"))
        .unwrap_or_default();
    format!(
        "GET /ws HTTP/1.1\r\nHost: {host}\r\n{origin}Upgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n"
    )
}

#[tokio::test]
async fn wss_clients_of_both_codecs_exchange_messages() {
    let certs = TestCerts::new();
    let broker = tls_broker(&certs).await;
    assert!(broker.ws_url().starts_with("wss://"), "{}", broker.ws_url());

    let mut json = connect(&broker, &certs, Codec::Json).await;
    let mut msgpack = connect(&broker, &certs, Codec::MsgPack).await;
    json.subscribe("room.tls").await;
    msgpack.subscribe("room.tls").await;

    json.publish("room.tls", r#"{"n":1}"#).await;
    msgpack.publish("room.tls", r#"{"n":2}"#).await;
    for client in [&mut json, &mut msgpack] {
        for n in 1..=2 {
            let (topic, payload) = client.recv_message().await;
            assert_eq!(topic, "room.tls");
            assert_eq!(
                payload.decode::<serde_json::Value>().unwrap(),
                serde_json::json!({ "n": n })
            );
        }
    }

    // A message larger than one TLS record (16 KiB) arrives whole.
    let big = "x".repeat(100_000);
    json.publish("room.tls", &format!("{{\"big\":\"{big}\"}}"))
        .await;
    for client in [&mut json, &mut msgpack] {
        let (_, payload) = client.recv_message().await;
        assert_eq!(
            payload.decode::<serde_json::Value>().unwrap()["big"].as_str(),
            Some(&big[..])
        );
    }
    broker.stop().await;
}

#[tokio::test]
async fn https_serves_the_http_api_and_publishes_to_wss_subscribers() {
    let certs = TestCerts::new();
    let broker = tls_broker(&certs).await;
    let addr = broker.addr();
    let mut subscriber = connect(&broker, &certs, Codec::Json).await;
    subscriber.subscribe("dash.cpu").await;

    let answer = certs
        .https(
            addr,
            "GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
            b"",
        )
        .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    let body = br#"{"topic":"dash.cpu","payload":{"load":0.5}}"#;
    let head = format!(
        "POST /api/publish HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let answer = certs.https(addr, &head, body).await;
    assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");

    let (topic, payload) = subscriber.recv_message().await;
    assert_eq!(topic, "dash.cpu");
    assert_eq!(
        payload.decode::<serde_json::Value>().unwrap(),
        serde_json::json!({ "load": 0.5 })
    );

    // The demo page, over HTTPS.
    let answer = certs
        .https(
            addr,
            "GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
            b"",
        )
        .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("<html"), "{answer}");
    broker.stop().await;
}

#[tokio::test]
async fn plain_text_clients_get_no_http_answer_and_cost_nothing() {
    let certs = TestCerts::new();
    let broker = tls_broker(&certs).await;
    let mut subscriber = connect(&broker, &certs, Codec::Json).await;
    subscriber.subscribe("room.a").await;

    // A plain HTTP request is not a TLS ClientHello: the broker closes the
    // connection without answering in plain text.
    let mut plain = TcpStream::connect(broker.addr()).await.unwrap();
    plain
        .write_all(upgrade_head(&broker.addr().to_string(), None).as_bytes())
        .await
        .unwrap();
    let mut answer = Vec::new();
    within("plain connection closed", plain.read_to_end(&mut answer))
        .await
        .ok();
    assert!(
        !answer.starts_with(b"HTTP/"),
        "a plain-text answer: {:?}",
        String::from_utf8_lossy(&answer)
    );

    // A client that does not trust the broker's authority cannot connect.
    let stranger = TestCerts::new();
    let refused = stranger.connect(broker.addr()).await;
    assert!(
        refused.is_err(),
        "a handshake with an untrusted certificate"
    );

    // Meanwhile the trusted subscriber loses nothing.
    let mut publisher = connect(&broker, &certs, Codec::MsgPack).await;
    publisher.publish("room.a", "1").await;
    let (topic, _) = subscriber.recv_message().await;
    assert_eq!(topic, "room.a");
    broker.stop().await;
}

#[tokio::test]
async fn the_same_origin_default_is_the_https_origin() {
    let certs = TestCerts::new();
    let broker = tls_broker(&certs).await;
    let host = format!("localhost:{}", broker.addr().port());
    let cases = [
        (Some(format!("https://{host}")), 101),
        (Some(format!("http://{host}")), 403),
        (Some("https://evil.example".to_owned()), 403),
        (None, 101),
    ];
    for (origin, expected) in cases {
        let mut tls = certs.connect(broker.addr()).await.expect("TLS handshake");
        tls.write_all(upgrade_head(&host, origin.as_deref()).as_bytes())
            .await
            .unwrap();
        let (status, head) = read_head(&mut tls).await;
        assert_eq!(status, expected, "origin {origin:?}: {head}");
    }
    broker.stop().await;
}

#[tokio::test]
async fn a_slow_tls_handshake_is_cut_at_the_header_timeout() {
    let certs = TestCerts::new();
    let broker = tls_broker(&certs).await;
    // A TCP connection that never sends its ClientHello is closed.
    let mut idle = TcpStream::connect(broker.addr()).await.unwrap();
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(30), idle.read(&mut byte))
        .await
        .expect("the broker closes a silent TLS connection");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    broker.stop().await;
}

fn config_with(cert: PathBuf, key: PathBuf) -> Config {
    let mut config = Config::ephemeral();
    config.tls_cert = Some(cert);
    config.tls_key = Some(key);
    config
}

#[tokio::test]
async fn start_up_errors_name_the_file_at_fault() {
    let certs = TestCerts::new();
    let missing = certs.dir().join("missing.pem");

    let error = starling_broker::Broker::new(config_with(missing.clone(), certs.key_path.clone()))
        .expect_err("a missing certificate is an error");
    assert!(matches!(error, StartError::Tls(_)), "{error:?}");
    assert!(
        error.to_string().contains(&missing.display().to_string()),
        "{error}"
    );

    // A file that holds no certificate.
    let error =
        starling_broker::Broker::new(config_with(certs.key_path.clone(), certs.key_path.clone()))
            .expect_err("a key is not a certificate");
    assert!(
        error
            .to_string()
            .contains(&certs.key_path.display().to_string()),
        "{error}"
    );

    // A key that is not the certificate's.
    let other = TestCerts::new();
    let error =
        starling_broker::Broker::new(config_with(certs.cert_path.clone(), other.key_path.clone()))
            .expect_err("a key of another certificate is an error");
    let text = error.to_string();
    assert!(
        text.contains(&certs.cert_path.display().to_string())
            && text.contains(&other.key_path.display().to_string()),
        "{text}"
    );

    // Only one of the two.
    let mut config = Config::ephemeral();
    config.tls_cert = Some(certs.cert_path.clone());
    let error = starling_broker::Broker::new(config)
        .expect_err("a certificate without its key is an error");
    assert!(error.to_string().contains("--tls-key"), "{error}");
}
