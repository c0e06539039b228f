//! What the client sends in the WebSocket handshake, and how it reads a refusal.

use starling_client::{Codec, ConnectOptions, Error};
use starling_tests::within;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_handshake_carries_codec_token_and_name() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await.unwrap();
        let mut request = Vec::new();
        let mut chunk = [0u8; 1024];
        while !request.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = tcp.read(&mut chunk).await.unwrap();
            assert!(n > 0, "request ended early");
            request.extend_from_slice(&chunk[..n]);
        }
        let body = r#"{"code":"unsupported_subprotocol","message":"offer starling.v1.json"}"#;
        let answer = format!(
            "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        tcp.write_all(answer.as_bytes()).await.unwrap();
        String::from_utf8(request).unwrap().to_ascii_lowercase()
    });
    let err = within(
        "refusal",
        ConnectOptions::new()
            .codec(Codec::MsgPack)
            .token("s3cret")
            .name("ingest-1")
            .connect(format!("ws://{addr}")),
    )
    .await
    .unwrap_err();
    match &err {
        Error::Refused {
            status,
            code,
            message,
        } => {
            assert_eq!(*status, 400);
            assert_eq!(code, "unsupported_subprotocol");
            assert_eq!(message, "offer starling.v1.json");
        }
        other => panic!("{other:?}"),
    }
    assert!(!err.is_retryable());
    let request = within("request", server).await.unwrap();
    // A URL without a path gets /ws.
    assert!(request.starts_with("get /ws http/1.1\r\n"), "{request}");
    for header in [
        "sec-websocket-protocol: starling.v1.msgpack\r\n",
        "authorization: bearer s3cret\r\n",
        "x-starling-client-name: ingest-1\r\n",
        "user-agent: starling-client-rust/",
    ] {
        assert!(
            request.contains(header),
            "{header:?} missing from {request}"
        );
    }
    assert!(!request.contains("token="), "{request}");
}
