//! Keepalive: the broker pings quiet peers and closes the ones that stop answering.

use std::time::Duration;

use starling_protocol::Envelope;
use starling_tests::TestBroker;
use starling_tests::tungstenite::Message;

async fn broker() -> TestBroker {
    TestBroker::with_config(|c| {
        c.ping_interval_ms = 100;
        c.idle_timeout_ms = 400;
    })
    .await
}

#[tokio::test]
async fn broker_pings_a_quiet_peer_and_it_stays_connected_by_answering() {
    let broker = broker().await;
    let mut client = broker.json().await;
    // Reading answers the broker's pings (tungstenite replies with pongs).
    let mut pings = 0;
    let until = tokio::time::Instant::now() + Duration::from_millis(1000);
    while tokio::time::Instant::now() < until {
        if let Ok(Some(message)) =
            tokio::time::timeout(Duration::from_millis(50), client.recv_raw()).await
        {
            match message {
                Message::Ping(_) => pings += 1,
                Message::Close(frame) => panic!("closed while answering pings: {frame:?}"),
                _ => {}
            }
        }
    }
    assert!(pings >= 2, "only {pings} pings in a second");
    // Still usable after more than twice the idle timeout.
    assert_eq!(
        client.request(&Envelope::Ping { id: Some(1) }).await,
        Envelope::Pong { id: Some(1) }
    );
    broker.stop().await;
}

#[tokio::test]
async fn peer_that_stops_answering_is_closed_with_4000() {
    let broker = broker().await;
    let mut client = broker.json().await;
    // Do not read (so no pongs) for longer than the idle timeout.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let (code, reason, _) = client.recv_close().await;
    assert_eq!(code, starling_protocol::CloseCode::IdleTimeout.code());
    assert!(reason.contains("idle"), "{reason}");
    broker.stop().await;
}

#[tokio::test]
async fn application_ping_keeps_a_browser_style_client_alive() {
    let broker = broker().await;
    let mut client = broker.json().await;
    for id in 0..8 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            client.request(&Envelope::Ping { id: Some(id) }).await,
            Envelope::Pong { id: Some(id) }
        );
    }
    broker.stop().await;
}
