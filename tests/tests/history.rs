//! Topic history: offsets, `since` replay with no gap and no duplicate.

use starling_protocol::http::HistoryPage;
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
    // An empty topic: offset 0, and the epoch its messages will carry.
    let (latest, epoch) = sub.subscribe("room").await.expect("a history position");
    assert_eq!(latest, 0);
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
                offset: Some(expected),
                epoch: Some(epoch.clone()),
            }
        );
        let message = sub.recv().await;
        assert_eq!(offset_of(&message), expected);
        assert!(
            matches!(&message, Envelope::Message { epoch: Some(e), .. } if *e == epoch),
            "{message:?}"
        );
    }
    // HTTP publishes take the next offset and answer 200 with it.
    let (status, body) = http_post(
        &format!("{}/api/publish", broker.http_url()),
        r#"{"topic":"room","payload":2}"#,
    )
    .await;
    assert_eq!(
        (status, body),
        (200, format!(r#"{{"offset":4,"epoch":"{epoch}"}}"#))
    );
    assert_eq!(offset_of(&sub.recv().await), 4);
    // A later subscribe is told the latest offset.
    assert_eq!(
        broker.json().await.subscribe("room").await,
        Some((4, epoch.clone()))
    );
    // Patterns and topics without history have no position.
    assert_eq!(broker.json().await.subscribe("room.*").await, None);
    assert_eq!(broker.json().await.subscribe("nohist.x").await, None);
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
            offset: None,
            epoch: None,
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
    let (latest, epoch) = late.subscribe_from("feed", Some(0), None).await.unwrap();
    assert_eq!(latest, 5);
    // Offsets 1 and 2 were evicted (history 3): said before the replay.
    assert_eq!(
        late.recv().await,
        Envelope::Lagged {
            topic: Filter::new("feed").unwrap(),
            missed: Some(2),
            reset: false,
        }
    );
    for expected in 3..=5 {
        assert_eq!(offset_of(&late.recv().await), expected);
    }
    publisher.publish("feed", "6").await;
    assert_eq!(offset_of(&late.recv().await), 6);

    // Caught up: since = the last offset seen replays nothing.
    let mut current = broker.json().await;
    let position = current.subscribe_from("feed", Some(6), Some(&epoch)).await;
    assert_eq!(position, Some((6, epoch)));
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
    sub.subscribe_from("stream", Some(0), None).await.unwrap();
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
    let position = sub.subscribe_from("big.room", Some(0), None).await;
    assert_eq!(position.unwrap().0, 300);
    let lost = match sub.recv().await {
        Envelope::Lagged { missed, .. } => missed,
        other => panic!("expected lagged, got {other:?}"),
    };
    assert_eq!(lost, Some(300 - messages as u64));
    for expected in lost.unwrap() + 1..=300 {
        assert_eq!(offset_of(&sub.recv().await), expected);
    }
}

/// The scenario of a restart: 50 messages, a restart (history in memory),
/// 5 more. A client resuming with the old epoch, whatever its offset, is
/// told its position is void and gets the 5 new messages; it never skips
/// them silently.
#[tokio::test]
async fn a_restart_starts_a_new_epoch_and_resuming_clients_are_reset() {
    let first = broker(100).await;
    let mut publisher = first.json().await;
    for i in 0..50 {
        publisher.publish("chat.room", &i.to_string()).await;
    }
    let (latest, old_epoch) = first.json().await.subscribe("chat.room").await.unwrap();
    assert_eq!(latest, 50);
    first.stop().await;

    let second = broker(100).await;
    let mut publisher = second.json().await;
    for i in 50..55 {
        publisher.publish("chat.room", &i.to_string()).await;
    }
    for since in [41, 3, 0] {
        let mut client = second.json().await;
        let (latest, epoch) = client
            .subscribe_from("chat.room", Some(since), Some(&old_epoch))
            .await
            .unwrap();
        assert_eq!(latest, 5);
        assert_ne!(epoch, old_epoch, "a new epoch after the restart");
        client.expect_reset("chat.room").await;
        for offset in 1..=5 {
            let message = client.recv().await;
            assert_eq!(offset_of(&message), offset);
            assert!(matches!(&message, Envelope::Message { epoch: Some(e), .. } if *e == epoch));
        }
    }
    // An offset beyond the latest is void even without an epoch.
    let mut client = second.json().await;
    client.subscribe_from("chat.room", Some(41), None).await;
    assert!(matches!(
        client.recv().await,
        Envelope::Lagged { reset: true, .. }
    ));
    assert_eq!(offset_of(&client.recv().await), 1);
    // The current epoch and an offset it gave: no reset, only what follows.
    let (_, epoch) = second.json().await.subscribe("chat.room").await.unwrap();
    let mut client = second.json().await;
    client
        .subscribe_from("chat.room", Some(3), Some(&epoch))
        .await;
    assert_eq!(offset_of(&client.recv().await), 4);
    assert_eq!(offset_of(&client.recv().await), 5);
    let (_, metrics) = starling_tests::http_get(&format!("{}/metrics", second.http_url())).await;
    assert_eq!(
        starling_tests::metric(&metrics, "starling_history_resets_total"),
        4.0
    );
    second.stop().await;
}

/// `--history-ttl`: a topic idle for longer loses its history, and comes
/// back in a new epoch.
#[tokio::test]
async fn an_idle_history_expires_after_its_ttl() {
    let broker = TestBroker::with_config(|c| {
        c.history = 10;
        c.history_ttl = 1;
    })
    .await;
    let mut publisher = broker.json().await;
    publisher.publish("quiet.room", "1").await;
    let (_, epoch) = broker.json().await.subscribe("quiet.room").await.unwrap();
    // Swept every second; older than 1 s after at most about 3 s.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (_, metrics) =
            starling_tests::http_get(&format!("{}/metrics", broker.http_url())).await;
        if starling_tests::metric(&metrics, "starling_history_expired_total") == 1.0 {
            assert_eq!(
                starling_tests::metric(&metrics, "starling_history_messages"),
                0.0
            );
            break;
        }
        assert!(std::time::Instant::now() < deadline, "not expired in 10 s");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let mut client = broker.json().await;
    client
        .subscribe_from("quiet.room", Some(1), Some(&epoch))
        .await;
    assert!(matches!(
        client.recv().await,
        Envelope::Lagged { reset: true, .. }
    ));
    publisher.publish("quiet.room", "2").await;
    let message = client.recv().await;
    assert_eq!(offset_of(&message), 1, "offsets start again");
    assert!(matches!(&message, Envelope::Message { epoch: Some(e), .. } if *e != epoch));
    broker.stop().await;
}

/// `GET /api/history`: what a chat backend loads without a WebSocket.
#[tokio::test]
async fn the_history_api_pages_through_what_is_retained() {
    let broker = TestBroker::with_config(|c| {
        c.history = 3;
        c.history_prefixes = vec![("nohist.".into(), 0)];
        c.api_key = Some("backend-key".into());
    })
    .await;
    let base = format!("{}/api/history", broker.http_url());
    let get = |query: &str| {
        let url = format!("{base}?{query}");
        async move {
            let answer = starling_tests::http_request_with(
                "GET",
                &url,
                &[("authorization", "Bearer backend-key")],
                None,
            )
            .await;
            (answer.status, answer.body)
        }
    };
    let page = |body: &str| -> HistoryPage {
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
    };
    let offsets = |page: &HistoryPage| page.messages.iter().map(|m| m.offset).collect::<Vec<_>>();

    // No message yet: offset 0 and the epoch the first message will get.
    let (status, body) = get("topic=chat.room").await;
    assert_eq!(status, 200, "{body}");
    let empty = page(&body);
    assert_eq!((empty.offset, empty.messages.len()), (0, 0));

    let mut publisher = broker.json().await;
    for i in 1..=5 {
        publisher
            .publish("chat.room", &format!("{{\"n\":{i}}}"))
            .await;
    }
    // The latest `limit` messages, oldest first.
    let latest = page(&get("topic=chat.room&limit=2").await.1);
    assert_eq!((latest.offset, offsets(&latest)), (5, vec![4, 5]));
    assert_eq!(latest.epoch, empty.epoch);
    assert_eq!(latest.messages[1].payload.to_json_string(), r#"{"n":5}"#);
    // After a position: 1 and 2 are gone (history 3), said as `missed`.
    let after = page(&get("topic=chat.room&since=0").await.1);
    assert_eq!((after.missed, offsets(&after)), (Some(2), vec![3, 4, 5]));
    let epoch = &latest.epoch;
    let next = page(
        &get(&format!("topic=chat.room&since=3&epoch={epoch}&limit=1"))
            .await
            .1,
    );
    assert_eq!(
        (next.missed, next.reset, offsets(&next)),
        (None, false, vec![4])
    );
    // Another epoch, or an offset never given: reset, from the oldest.
    for query in ["since=3&epoch=other", "since=9"] {
        let reset = page(&get(&format!("topic=chat.room&{query}")).await.1);
        assert!(reset.reset, "{query}");
        assert_eq!(offsets(&reset), vec![3, 4, 5], "{query}");
    }

    // Errors: clear codes and JSON bodies.
    let code = |body: &str| starling_tests::json_str(body, "code");
    let (status, body) = get("topic=nohist.x").await;
    assert_eq!((status, code(&body).as_str()), (404, "not_found"), "{body}");
    let (status, body) = get("topic=chat.*").await;
    assert_eq!(
        (status, code(&body).as_str()),
        (400, "invalid_topic"),
        "{body}"
    );
    let (status, body) = get("topic=chat.room&limit=5000").await;
    assert_eq!((status, code(&body).as_str()), (400, "bad_frame"), "{body}");
    let answer =
        starling_tests::http_request("GET", &format!("{base}?topic=chat.room"), None).await;
    assert_eq!(
        answer.status, 401,
        "the API key is required: {}",
        answer.body
    );
    broker.stop().await;
}

#[tokio::test]
async fn history_api_pages_are_bounded_in_bytes() {
    let broker = broker(10).await;
    starling_tests::assert_history_pages_are_bounded_in_bytes(&broker, "big").await;
}
