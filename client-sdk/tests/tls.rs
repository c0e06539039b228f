//! `wss://` against a broker serving TLS with a certificate of the test's
//! own authority: trusted through `add_root_certificates` or a whole
//! `tls_config`, refused when not trusted, and kept across a reconnect.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::StreamExt;
use starling_broker::{Config, RunningBroker};
use starling_client::{Client, Codec, ConnectOptions, Error};
use starling_tests::{TestCerts, WAIT, stop, within};

/// A broker serving TLS with `certs`, on `addr` (retrying while a broker
/// that just stopped still holds the port).
async fn tls_broker(certs: &TestCerts, addr: SocketAddr) -> RunningBroker {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let mut config = Config::ephemeral();
        config.listen = addr;
        config.tls_cert = Some(certs.cert_path.clone());
        config.tls_key = Some(certs.key_path.clone());
        match starling_broker::start(config).await {
            Ok(running) => return running,
            Err(error) if tokio::time::Instant::now() < deadline => {
                eprintln!("binding {addr}: {error}; retrying");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(error) => panic!("cannot bind {addr}: {error}"),
        }
    }
}

async fn round_trip(publisher: &Client, subscriber: &Client, topic: &str, n: u32) {
    let mut sub = within("subscribe", subscriber.subscribe(topic))
        .await
        .unwrap();
    within("publish", publisher.publish_with_ack(topic, &n))
        .await
        .unwrap();
    let message = within("message", sub.next()).await.expect("a message");
    assert_eq!(message.decode::<u32>().unwrap(), n);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_with_an_added_root_in_both_codecs() {
    let certs = TestCerts::new();
    let running = tls_broker(&certs, "127.0.0.1:0".parse().unwrap()).await;
    let url = running.ws_url();
    assert!(url.starts_with("wss://"), "{url}");
    for (n, codec) in Codec::ALL.into_iter().enumerate() {
        let options = ConnectOptions::new()
            .codec(codec)
            .add_root_certificates(&certs.ca_path);
        let publisher = within("connect", options.clone().connect(&url))
            .await
            .expect("connects over wss");
        let subscriber = within("connect", options.connect(&url)).await.unwrap();
        round_trip(&publisher, &subscriber, "secure.room", n as u32).await;
    }
    stop(running).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_with_a_whole_tls_config() {
    let certs = TestCerts::new();
    let running = tls_broker(&certs, "127.0.0.1:0".parse().unwrap()).await;
    let client = within(
        "connect",
        ConnectOptions::new()
            .tls_config(certs.client_config())
            .connect(&running.ws_url()),
    )
    .await
    .expect("connects with the given configuration");
    round_trip(&client, &client, "secure.self", 9).await;
    stop(running).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_certificate_or_an_unreadable_root_file_fails_clearly() {
    let certs = TestCerts::new();
    let running = tls_broker(&certs, "127.0.0.1:0".parse().unwrap()).await;
    let url = running.ws_url();

    // The system's roots do not know the test's authority.
    let error = within(
        "connect",
        ConnectOptions::new()
            .reconnect(starling_client::ReconnectPolicy::never())
            .connect(&url),
    )
    .await
    .expect_err("an unknown authority is refused");
    assert!(matches!(error, Error::Connect { .. }), "{error:?}");
    let text = format!("{error} {:?}", std::error::Error::source(&error));
    assert!(text.contains("UnknownIssuer"), "{text}");

    // Another authority's certificate is no better.
    let stranger = TestCerts::new();
    let error = within(
        "connect",
        ConnectOptions::new()
            .add_root_certificates(&stranger.ca_path)
            .connect(&url),
    )
    .await
    .expect_err("another authority is refused");
    assert!(matches!(error, Error::Connect { .. }), "{error:?}");

    // A root file that is missing, or holds no certificate.
    let missing = certs.dir().join("missing.pem");
    let error = ConnectOptions::new()
        .add_root_certificates(&missing)
        .connect(&url)
        .await
        .expect_err("a missing root file");
    assert!(matches!(error, Error::Tls(_)), "{error:?}");
    assert!(
        error.to_string().contains(&missing.display().to_string()),
        "{error}"
    );
    let error = ConnectOptions::new()
        .add_root_certificates(&certs.key_path)
        .connect(&url)
        .await
        .expect_err("a key is not a root certificate");
    assert!(matches!(error, Error::Tls(_)), "{error:?}");
    assert!(error.to_string().contains("no PEM certificate"), "{error}");
    stop(running).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wss_client_reconnects_and_resubscribes() {
    let certs = TestCerts::new();
    let running = tls_broker(&certs, "127.0.0.1:0".parse().unwrap()).await;
    let addr = running.addr;
    let url = running.ws_url();
    let options = ConnectOptions::new().add_root_certificates(&certs.ca_path);
    let subscriber = within("connect", options.clone().connect(&url))
        .await
        .unwrap();
    let mut sub = within("subscribe", subscriber.subscribe("secure.again"))
        .await
        .unwrap();

    stop(running).await;
    let running = tls_broker(&certs, addr).await;

    // Once the subscriber is back, a publish reaches it.
    let publisher = within("connect", options.connect(&url)).await.unwrap();
    let message = within("message after reconnect", async {
        loop {
            publisher.publish("secure.again", &1u32).await.unwrap();
            if let Ok(Some(message)) =
                tokio::time::timeout(Duration::from_millis(100), sub.next()).await
            {
                return message;
            }
        }
    })
    .await;
    assert_eq!(message.decode::<u32>().unwrap(), 1);
    stop(running).await;
}
