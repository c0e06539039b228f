//! The `starling` binary serving TLS: on SIGHUP it reads its certificate
//! and key again, new handshakes get the renewed certificate, established
//! connections carry on, and files that cannot be used keep the old one.

use std::time::Duration;

use starling_protocol::Codec;
use starling_tests::{Client, TestCerts};

mod common;

/// The certificate the broker at `addr` presents to a new handshake.
async fn presented(certs: &TestCerts, addr: std::net::SocketAddr) -> Vec<u8> {
    let tls = certs.connect(addr).await.expect("TLS handshake");
    let (_, session) = tls.get_ref();
    session
        .peer_certificates()
        .and_then(|chain| chain.first())
        .expect("a server certificate")
        .to_vec()
}

/// Polls until a new handshake presents `expected` (the reload happens on
/// the broker's own time after the signal).
async fn wait_presented(certs: &TestCerts, addr: std::net::SocketAddr, expected: &[u8]) {
    let deadline = tokio::time::Instant::now() + starling_tests::BINARY_WAIT;
    while presented(certs, addr).await != expected {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the renewed certificate is not presented"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn hangup(child: &tokio::process::Child) {
    let pid = child.id().expect("a running broker");
    let status = std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());
}

#[tokio::test]
async fn sighup_reloads_the_certificate_and_keeps_connections() {
    let certs = TestCerts::new();
    let args = format!(
        "--tls-cert {} --tls-key {}",
        certs.cert_path.display(),
        certs.key_path.display()
    );
    let (child, addr) = common::start("", &args).await;
    let addr: std::net::SocketAddr = addr.parse().unwrap();
    let url = format!("wss://{addr}/ws");
    assert_eq!(presented(&certs, addr).await, certs.server_der.to_vec());

    let mut subscriber = Client::connect_tls(&url, Some(Codec::Json), certs.client_config()).await;
    subscriber.subscribe("certs.renewed").await;

    // A renewal: new files, then SIGHUP.
    let renewed = certs.reissue();
    assert_ne!(renewed, certs.server_der);
    hangup(&child);
    wait_presented(&certs, addr, &renewed).await;

    // The connection made before the reload still works both ways.
    let mut publisher =
        Client::connect_tls(&url, Some(Codec::MsgPack), certs.client_config()).await;
    publisher.publish("certs.renewed", r#"{"ok":true}"#).await;
    let (topic, payload) = subscriber.recv_message().await;
    assert_eq!(topic, "certs.renewed");
    assert_eq!(payload.to_json_string(), r#"{"ok":true}"#);

    // Files that cannot be used (a key that is not PEM) keep the renewed
    // certificate, and the broker keeps running.
    std::fs::write(&certs.key_path, "not a key").unwrap();
    hangup(&child);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(presented(&certs, addr).await, renewed.to_vec());
    publisher.publish("certs.renewed", r#"{"ok":2}"#).await;
    let (_, payload) = subscriber.recv_message().await;
    assert_eq!(payload.to_json_string(), r#"{"ok":2}"#);
}
