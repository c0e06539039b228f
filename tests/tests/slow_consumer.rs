//! A subscriber that stops reading must not slow down anyone else: it lags
//! (and is told how much it missed), or it is closed with 4008, by policy.
//!
//! The publisher is paced by the fast subscriber (it stays at most `WINDOW`
//! messages ahead of what the fast one has received), so the fast one can
//! never fall behind its ring of `BUFFER` messages however slow the machine
//! is, while the slow one, which reads nothing, fills its socket buffers and
//! falls behind.

use std::sync::Arc;

use starling_broker::{Config, SlowConsumerPolicy};
use starling_protocol::{Envelope, Payload};
use starling_tests::tungstenite::Message;
use starling_tests::{Client, TestBroker, metric, within};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

/// Each subscriber's ring, in messages.
const BUFFER: usize = 16;
/// How far the publisher may run ahead of the fast subscriber.
const WINDOW: usize = BUFFER / 2;
const TOPIC: &str = "flood";

fn small_buffers(c: &mut Config) {
    c.subscriber_buffer = BUFFER;
    c.outbound_queue_bytes = 4096;
}

/// A JSON payload of about 1 KiB carrying `n`.
fn payload_json(n: u64) -> String {
    format!(r#"{{"n":{n},"pad":"{}"}}"#, "x".repeat(1000))
}

/// The `n` of a payload made by [`payload_json`].
fn number(payload: &Payload) -> u64 {
    let json = payload.to_json_string();
    json.strip_prefix(r#"{"n":"#)
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not a numbered payload: {json:.40}"))
}

/// Reads `expected` messages on [`TOPIC`] in order (1, 2, ...), each within
/// WAIT, giving the publisher one more permit per message.
fn fast_reader(mut fast: Client, window: Arc<Semaphore>, expected: u64) -> JoinHandle<Client> {
    tokio::spawn(async move {
        for n in 1..=expected {
            let (topic, payload) = fast.recv_message().await;
            assert_eq!(topic, TOPIC);
            assert_eq!(number(&payload), n, "the fast subscriber lost or reordered");
            window.add_permits(1);
        }
        fast
    })
}

/// Publishes message `n` once the fast subscriber has room for it.
async fn publish_paced(publisher: &mut Client, window: &Semaphore, n: u64) {
    within("the fast subscriber to catch up", window.acquire())
        .await
        .expect("semaphore open")
        .forget();
    publisher
        .publish_nowait(TOPIC, Payload::from_json(&payload_json(n)).unwrap())
        .await;
}

/// Waits until the fast reader has received everything published (all the
/// window's permits are back), then stops it.
async fn fast_got_everything(reader: JoinHandle<Client>, window: &Semaphore) {
    within(
        "the fast subscriber to receive every message",
        window.acquire_many(WINDOW as u32),
    )
    .await
    .expect("semaphore open")
    .forget();
    reader.abort();
    match reader.await {
        Err(e) if e.is_cancelled() => {}
        Err(e) => panic!("the fast subscriber failed: {e}"),
        Ok(_) => unreachable!("it expects more than was published"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_subscriber_gets_lagged_while_a_fast_one_gets_every_message_in_order() {
    // A bound on the test, not an expectation: a few MB of socket buffers fill much sooner.
    const MAX: u64 = 60_000;
    let broker = TestBroker::with_config(|c| {
        small_buffers(c);
        // Only the lagged path here, not the write timeout (tested below).
        c.write_timeout_ms = 60_000;
    })
    .await;
    let mut slow = broker.json().await;
    slow.subscribe(TOPIC).await;
    let mut fast = broker.json().await;
    fast.subscribe(TOPIC).await;
    let mut publisher = broker.json().await;

    // The fast reader expects MAX messages; it is stopped once it has all
    // that was published.
    let window = Arc::new(Semaphore::new(WINDOW));
    let reader = fast_reader(fast, window.clone(), MAX);
    // Publish until the slow one has surely fallen more than its ring behind:
    // what it took is what was delivered minus what the fast one received
    // (give or take a few frames in flight on either side).
    let mut published = 0;
    loop {
        for _ in 0..64 {
            published += 1;
            publish_paced(&mut publisher, &window, published).await;
        }
        let fast_received = published + window.available_permits() as u64 - WINDOW as u64;
        let delivered = metric(
            &broker.broker().metrics().encode(),
            "starling_messages_delivered_total",
        ) as u64;
        let slow_took = delivered.saturating_sub(fast_received);
        if published > slow_took + 4 * BUFFER as u64 + 64 {
            break;
        }
        assert!(published < MAX, "the slow subscriber never fell behind");
    }
    within("the fast subscriber to catch up", window.acquire())
        .await
        .unwrap()
        .forget();
    published += 1;
    publisher.publish(TOPIC, &payload_json(published)).await;
    // The fast one got every message, in order, each within WAIT.
    fast_got_everything(reader, &window).await;

    // The slow one resumes: what it received plus what it was told it
    // missed is exactly what was published, in order, with no overlap.
    let (mut received, mut missed, mut lagged_frames) = (0u64, 0u64, 0u64);
    let mut next = 1;
    while next <= published {
        match slow.recv().await {
            Envelope::Message { topic, payload, .. } => {
                assert_eq!(topic.as_str(), TOPIC);
                assert_eq!(number(&payload), next, "after {missed} missed");
                received += 1;
                next += 1;
            }
            Envelope::Lagged {
                topic,
                missed: Some(m),
                reset: false,
            } => {
                assert_eq!(topic.as_str(), TOPIC);
                assert!(m > 0, "lagged with nothing missed");
                lagged_frames += 1;
                missed += m;
                next += m;
            }
            other => panic!("unexpected frame for the slow subscriber: {other:?}"),
        }
    }
    assert!(lagged_frames > 0, "the slow subscriber never lagged");
    assert_eq!(received + missed, published);
    let text = broker.broker().metrics().encode();
    assert_eq!(
        metric(&text, "starling_lagged_messages_total"),
        missed as f64
    );
    assert_eq!(
        metric(&text, "starling_lagged_events_total"),
        lagged_frames as f64
    );
    eprintln!(
        "slow subscriber: received {received}, missed {missed} in {lagged_frames} lag(s), of {published}"
    );
    // It is still connected and subscribed.
    publisher.publish(TOPIC, &payload_json(published + 1)).await;
    assert_eq!(number(&slow.recv_message().await.1), published + 1);
    slow.close().await;
    publisher.close().await;
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_subscriber_is_closed_with_4008_under_the_disconnect_policy() {
    // A bound on the test, not an expectation: the close comes much sooner.
    const MAX: u64 = 60_000;
    let broker = TestBroker::with_config(|c| {
        small_buffers(c);
        c.slow_consumer = SlowConsumerPolicy::Disconnect;
        c.write_timeout_ms = 300;
    })
    .await;
    let mut slow = broker.json().await;
    slow.subscribe(TOPIC).await;
    let mut fast = broker.json().await;
    fast.subscribe(TOPIC).await;
    let mut publisher = broker.json().await;
    let closes = || {
        metric(
            &broker.broker().metrics().encode(),
            r#"starling_closes_total{code="4008"}"#,
        )
    };

    // Publish until the broker gives up on the slow one. The fast reader
    // expects MAX messages; it is stopped once it has what was published.
    let window = Arc::new(Semaphore::new(WINDOW));
    let reader = fast_reader(fast, window.clone(), MAX);
    let mut published = 0;
    while closes() == 0.0 {
        for _ in 0..64 {
            published += 1;
            publish_paced(&mut publisher, &window, published).await;
        }
        assert!(published < MAX, "the slow subscriber was never closed");
    }
    // The slow one reads again: its close frame comes after what it had
    // taken before falling behind, a gapless prefix of what was published.
    let (code, reason, before) = slow.recv_close().await;
    assert_eq!(code, 4008, "{reason}");
    for (i, frame) in before.iter().enumerate() {
        let Message::Text(text) = frame else {
            panic!("unexpected frame before the close: {frame:?}")
        };
        let prefix = format!(
            r#"{{"type":"message","topic":"{TOPIC}","payload":{{"n":{},"#,
            i + 1
        );
        assert!(
            text.starts_with(&prefix),
            "frame {i}: {:.60}",
            text.as_str()
        );
    }
    assert!((before.len() as u64) < published, "it was not behind");
    eprintln!(
        "slow subscriber: {} messages before 4008, of {published}",
        before.len()
    );

    // The fast one got every message, in order, and was not closed.
    fast_got_everything(reader, &window).await;
    assert_eq!(closes(), 1.0, "only the slow subscriber was closed");
    slow.close().await;
    publisher.close().await;
    broker.stop().await;
}
