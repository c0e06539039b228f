//! Topic history: offsets, `since` replay with no gap and no duplicate.

use starling_protocol::{Envelope, Filter, Payload, Topic};
use starling_tests::{TestBroker, http_post};

async fn broker(history: usize) -> TestBroker {
    TestBroker::with_config(|c| {
        c.history = history;
        c.history_prefixes = vec![("nohist.".into(), 0)];
    })
    .await
}

fn offset_of(frame: &Envelope) -> u64 {
    match frame {
        Envelope::Message {
            offset: Some(o), ..
        } => *o,
        other => panic!("expected a message with an offset, got {other:?}"),
    }
}

#[tokio::test]
async fn publishes_get_growing_offsets_in_acks_and_messages() {
    let broker = broker(10).await;
    let mut sub = broker.json().await;
    sub.subscribe("room").await;
    let mut publisher = broker.json().await;
    for expected in 1..=3u64 {
        let answer = publisher
            .request(&Envelope::Publish {
                id: Some(expected),
                topic: Topic::new("room").unwrap(),
                payload: Payload::from_json("1").unwrap(),
            })
            .await;
        assert_eq!(
            answer,
            Envelope::Ack {
                id: expected,
                offset: Some(expected)
            }
        );
        assert_eq!(offset_of(&sub.recv().await), expected);
    }
    // HTTP publishes take the next offset and answer 200 with it.
    let (status, body) = http_post(
        &format!("{}/api/publish", broker.http_url()),
        r#"{"topic":"room","payload":2}"#,
    )
    .await;
    assert_eq!((status, body.as_str()), (200, r#"{"offset":4}"#));
    assert_eq!(offset_of(&sub.recv().await), 4);
    // A topic without history gets none.
    let answer = publisher
        .request(&Envelope::Publish {
            id: Some(9),
            topic: Topic::new("nohist.x").unwrap(),
            payload: Payload::from_json("1").unwrap(),
        })
        .await;
    assert_eq!(
        answer,
        Envelope::Ack {
            id: 9,
            offset: None
        }
    );
    broker.stop().await;
}

#[tokio::test]
async fn since_replays_what_is_retained_and_reports_what_is_gone() {
    let broker = broker(3).await;
    let mut publisher = broker.json().await;
    for i in 1..=5 {
        publisher.publish("feed", &i.to_string()).await;
    }
    let mut late = broker.json().await;
    late.send(&Envelope::Subscribe {
        id: Some(1),
        topic: Filter::new("feed").unwrap(),
        since: Some(0),
    })
    .await;
    assert_eq!(
        late.recv().await,
        Envelope::Ack {
            id: 1,
            offset: None
        }
    );
    // Offsets 1 and 2 were evicted (history 3): said before the replay.
    assert_eq!(
        late.recv().await,
        Envelope::Lagged {
            topic: Filter::new("feed").unwrap(),
            missed: 2
        }
    );
    for expected in 3..=5 {
        assert_eq!(offset_of(&late.recv().await), expected);
    }
    publisher.publish("feed", "6").await;
    assert_eq!(offset_of(&late.recv().await), 6);

    // Caught up: since = the last offset seen replays nothing.
    let mut current = broker.json().await;
    current
        .send(&Envelope::Subscribe {
            id: Some(2),
            topic: Filter::new("feed").unwrap(),
            since: Some(6),
        })
        .await;
    assert_eq!(
        current.recv().await,
        Envelope::Ack {
            id: 2,
            offset: None
        }
    );
    publisher.publish("feed", "7").await;
    assert_eq!(offset_of(&current.recv().await), 7);
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_joining_mid_stream_gets_every_offset_exactly_once() {
    const MESSAGES: u64 = 2_000;
    let broker = TestBroker::with_config(|c| {
        c.history = MESSAGES as usize + 1;
        c.subscriber_buffer = 4 * MESSAGES as usize;
    })
    .await;
    let url = broker.ws_url();
    let publishing = tokio::spawn(async move {
        let mut publisher = starling_tests::Client::connect(&url, None).await;
        for i in 0..MESSAGES {
            publisher
                .publish_nowait("stream", Payload::from_json(&i.to_string()).unwrap())
                .await;
            // Paced, so that the subscriber below joins while this runs.
            if i % 50 == 0 {
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
        }
        publisher.publish("stream", "0").await;
    });
    // Join while the publisher is busy, asking for everything.
    tokio::time::sleep(std::time::Duration::from_millis(15)).await;
    let mut sub = broker.json().await;
    sub.send(&Envelope::Subscribe {
        id: Some(1),
        topic: Filter::new("stream").unwrap(),
        since: Some(0),
    })
    .await;
    assert_eq!(
        sub.recv().await,
        Envelope::Ack {
            id: 1,
            offset: None
        }
    );
    for expected in 1..=MESSAGES + 1 {
        assert_eq!(offset_of(&sub.recv().await), expected, "gap or duplicate");
    }
    publishing.await.unwrap();
    broker.stop().await;
}

#[tokio::test]
async fn histories_keep_to_their_bytes_and_a_replay_reports_what_went() {
    // 100 messages of about 1 KiB fit in 100 KiB; 300 are published.
    let broker = TestBroker::with_config(|c| {
        c.history = 1000;
        c.history_max_bytes = 100 * 1024;
    })
    .await;
    let mut publisher = broker.json().await;
    let payload = format!("\"{}\"", "x".repeat(1020));
    for _ in 0..300 {
        publisher.publish("big.room", &payload).await;
    }
    let (_, metrics) = starling_tests::http_get(&format!("{}/metrics", broker.http_url())).await;
    let bytes = starling_tests::metric(&metrics, "starling_history_bytes");
    let messages = starling_tests::metric(&metrics, "starling_history_messages");
    assert!(bytes <= 100.0 * 1024.0, "{bytes} bytes retained");
    assert!((80.0..=100.0).contains(&messages), "{messages} messages");

    let mut sub = broker.json().await;
    let answer = sub
        .request(&Envelope::Subscribe {
            id: Some(1),
            topic: Filter::new("big.room").unwrap(),
            since: Some(0),
        })
        .await;
    assert_eq!(
        answer,
        Envelope::Ack {
            id: 1,
            offset: None
        }
    );
    let lost = match sub.recv().await {
        Envelope::Lagged { missed, .. } => missed,
        other => panic!("expected lagged, got {other:?}"),
    };
    assert_eq!(lost, 300 - messages as u64);
    for expected in lost + 1..=300 {
        assert_eq!(offset_of(&sub.recv().await), expected);
    }
}
