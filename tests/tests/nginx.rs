//! Starling behind a real nginx running `deploy/nginx/starling.conf`: TLS
//! ends at nginx, a WebSocket client and a Server-Sent Events client
//! through it receive a published message, and `--trusted-proxy` makes the
//! broker believe nginx's `X-Forwarded-*` headers, and only then.

use std::sync::Arc;

use starling_protocol::Codec;
use starling_tests::tungstenite::client::IntoClientRequest;
use starling_tests::tungstenite::http::HeaderValue;
use starling_tests::{Client, Nginx, TestBroker, TestCerts, WAIT, http_post};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::ServerName;

fn publish_body(topic: &str, payload: &str) -> String {
    format!(r#"{{"topic":"{topic}","payload":{payload}}}"#)
}

/// Opens `GET path` through nginx over TLS; returns the stream once the
/// answer's head has come, and the head.
async fn open_tls(
    port: u16,
    certs: &TestCerts,
    path: &str,
) -> (tokio_rustls::client::TlsStream<TcpStream>, String) {
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let connector = TlsConnector::from(certs.client_config());
    let name = ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await.expect("TLS with nginx");
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: localhost:{port}\r\nAccept: text/event-stream\r\n\r\n"
    );
    tls.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        tls.read_exact(&mut byte).await.expect("an answer");
        head.push(byte[0]);
    }
    (tls, String::from_utf8_lossy(&head).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websockets_and_event_streams_pass_through_nginx() {
    let broker = TestBroker::start().await;
    let certs = TestCerts::new();
    let nginx = Nginx::start(broker.addr(), &certs);

    let url = format!("wss://localhost:{}/ws", nginx.port);
    let mut ws = Client::connect_tls(&url, Some(Codec::Json), certs.client_config()).await;
    ws.subscribe("news.a").await;
    let (mut sse, head) = open_tls(nginx.port, &certs, "/sse?topic=news.a").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/event-stream"),
        "{head}"
    );

    let publish = format!("{}/api/publish", broker.http_url());
    let (status, _) = http_post(&publish, publish_body("news.a", r#"{"n":7}"#)).await;
    assert_eq!(status, 202);

    let (topic, payload) = ws.recv_message().await;
    assert_eq!(topic, "news.a");
    assert_eq!(payload.to_json_string(), r#"{"n":7}"#);
    // The event comes through at once: nginx does not buffer the stream.
    let mut seen = String::new();
    let mut chunk = vec![0u8; 4096];
    let found = tokio::time::timeout(WAIT, async {
        while !seen.contains(r#""payload":{"n":7}"#) {
            let n = sse.read(&mut chunk).await.expect("the stream stays open");
            assert!(n > 0, "the stream ended: {seen}");
            seen.push_str(&String::from_utf8_lossy(&chunk[..n]));
        }
    })
    .await;
    assert!(
        found.is_ok(),
        "no event through nginx: {seen:?} {}",
        nginx.errors()
    );
    assert!(seen.contains("event: message"), "{seen}");
}

/// A WebSocket through nginx from a page at `origin`, with the headers a
/// client may add: the status of the handshake (101 when accepted).
async fn upgrade_status(port: u16, certs: &TestCerts, origin: &str, forwarded: &str) -> u16 {
    let mut request = format!("wss://localhost:{port}/ws")
        .into_client_request()
        .unwrap();
    let headers = request.headers_mut();
    headers.insert("origin", HeaderValue::from_str(origin).unwrap());
    headers.insert("x-forwarded-for", HeaderValue::from_str(forwarded).unwrap());
    let connector = tokio_tungstenite::Connector::Rustls(Arc::clone(&certs.client_config()));
    match tokio_tungstenite::connect_async_tls_with_config(request, None, false, Some(connector))
        .await
    {
        Ok((_ws, response)) => response.status().as_u16(),
        Err(starling_tests::tungstenite::Error::Http(response)) => response.status().as_u16(),
        Err(error) => panic!("handshake through nginx: {error}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_headers_count_only_from_a_trusted_proxy() {
    let certs = TestCerts::new();
    // The page is served over https by nginx; the broker sees plain http.
    for (trusted, expected) in [(false, 403), (true, 101)] {
        let broker = TestBroker::with_config(|c| {
            if trusted {
                c.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
            }
        })
        .await;
        let nginx = Nginx::start(broker.addr(), &certs);
        let origin = format!("https://localhost:{}", nginx.port);
        let status = upgrade_status(nginx.port, &certs, &origin, "203.0.113.7").await;
        assert_eq!(status, expected, "trusted proxy: {trusted}");
    }
}
