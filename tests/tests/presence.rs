//! Presence on one node: members folded from sessions, `join` and `leave`
//! once each, the grace period, the bounds of `name` and `info`.

use std::time::{Duration, Instant};

use starling_protocol::{Envelope, ErrorCode, Filter};
use starling_tests::TestBroker;
use starling_tests::presence::{ask, count_only, enter, join_of, leave_of, presence};

const GRACE: Duration = Duration::from_millis(400);

async fn broker() -> TestBroker {
    TestBroker::with_config(|c| {
        c.presence_prefixes = vec!["chat.".into()];
        c.presence_grace_ms = GRACE.as_millis() as u64;
    })
    .await
}

#[tokio::test]
async fn sessions_of_one_name_are_one_member_that_joins_once() {
    let broker = broker().await;
    let mut watcher = broker.json().await;
    watcher.subscribe("chat.room").await;
    // The watcher itself, named by the broker, joins first.
    let (own, _) = join_of(watcher.recv().await);

    let mut tab1 = broker.json().await;
    let mut tab2 = broker.msgpack().await;
    assert!(matches!(
        enter(&mut tab1, "chat.room", Some("ada"), Some(r#"{"tab":1}"#)).await,
        Envelope::Ack { .. }
    ));
    assert_eq!(
        join_of(watcher.recv().await),
        ("ada".into(), Some(r#"{"tab":1}"#.into()))
    );
    assert!(matches!(
        enter(&mut tab2, "chat.room", Some("ada"), Some(r#"{"tab":2}"#)).await,
        Envelope::Ack { .. }
    ));
    // No second join for a second session.
    let (count, members) = presence(&mut watcher, "chat.room").await;
    assert_eq!(count, 2);
    assert_eq!(members[0].name.as_ref(), "ada");
    assert_eq!(members[0].sessions, Some(2));
    // The info of the newest session.
    assert_eq!(
        members[0].info.as_ref().unwrap().to_json_string(),
        r#"{"tab":2}"#
    );
    assert_eq!(members[1].name.as_ref(), own);
    watcher.expect_silence(Duration::from_millis(100)).await;

    // One session goes: nothing; the last goes: a leave after the grace.
    tab2.close().await;
    let (_, members) = presence(&mut watcher, "chat.room").await;
    assert_eq!(members[0].sessions, Some(1));
    assert_eq!(
        members[0].info.as_ref().unwrap().to_json_string(),
        r#"{"tab":1}"#
    );
    let gone = Instant::now();
    tab1.close().await;
    assert_eq!(leave_of(watcher.recv().await), "ada");
    assert!(
        gone.elapsed() >= GRACE - Duration::from_millis(50),
        "{:?}",
        gone.elapsed()
    );
    let (count, _) = presence(&mut watcher, "chat.room").await;
    assert_eq!(count, 1);
    watcher.expect_silence(Duration::from_millis(100)).await;
}

#[tokio::test]
async fn a_member_back_within_the_grace_period_announces_nothing() {
    let broker = broker().await;
    let mut watcher = broker.json().await;
    watcher.subscribe("chat.room").await;
    join_of(watcher.recv().await);
    let mut ada = broker.json().await;
    enter(&mut ada, "chat.room", Some("ada"), None).await;
    assert_eq!(join_of(watcher.recv().await).0, "ada");
    // A reconnect: gone, and back well within the grace period.
    ada.close().await;
    let mut ada = broker.json().await;
    enter(&mut ada, "chat.room", Some("ada"), None).await;
    watcher
        .expect_silence(GRACE + Duration::from_millis(300))
        .await;
    // Unsubscribing ends the session too.
    let id = ada.next_id();
    ada.request(&Envelope::Unsubscribe {
        id: Some(id),
        topic: Filter::new("chat.room").unwrap(),
    })
    .await;
    assert_eq!(leave_of(watcher.recv().await), "ada");
}

#[tokio::test]
async fn names_and_info_are_bounded_and_presence_is_only_under_its_prefixes() {
    let broker = broker().await;
    let mut client = broker.json().await;
    let long = "x".repeat(65);
    let big = format!(r#"{{"a":"{}"}}"#, "x".repeat(1100));
    for (name, info) in [
        (Some(""), None),
        (Some(long.as_str()), None),
        (None, Some("[1,2]")),
        (None, Some("\"text\"")),
        (None, Some(big.as_str())),
    ] {
        match enter(&mut client, "chat.room", name, info).await {
            Envelope::Error { code, .. } => assert_eq!(code, ErrorCode::BadFrame),
            other => panic!("expected bad_frame for {name:?} {info:?}, got {other:?}"),
        }
    }
    // A 64-byte name and a 1 KiB object are fine.
    let ok_info = format!(r#"{{"a":"{}"}}"#, "x".repeat(1000));
    let name = "n".repeat(64);
    assert!(matches!(
        enter(&mut client, "chat.room", Some(&name), Some(&ok_info)).await,
        Envelope::Ack { .. }
    ));

    // Outside the prefixes: no events, and no presence to ask for.
    let mut other = broker.json().await;
    other.subscribe("news.today").await;
    enter(&mut client, "news.today", Some("ada"), None).await;
    other.expect_silence(Duration::from_millis(200)).await;
    match ask(&mut other, "news.today").await {
        Envelope::Error { code, .. } => assert_eq!(code, ErrorCode::InvalidTopic),
        other => panic!("expected an error, got {other:?}"),
    }
    let (_, metrics) = starling_tests::http_get(&format!("{}/metrics", broker.http_url())).await;
    assert_eq!(
        starling_tests::metric(&metrics, "starling_presence_members"),
        1.0
    );
    assert_eq!(
        starling_tests::metric(&metrics, "starling_presence_sessions"),
        1.0
    );
}

/// `--presence-counts`: a very large room keeps a count, without a member
/// list and without events.
#[tokio::test]
async fn a_counts_only_topic_answers_a_count_and_sends_no_events() {
    let broker = TestBroker::with_config(|c| {
        c.presence_counts_prefixes = vec!["stadium.".into()];
        c.presence_grace_ms = 0;
    })
    .await;
    let mut watcher = broker.json().await;
    watcher.subscribe("stadium.final").await;
    let mut fans = Vec::new();
    for name in ["a", "b", "c"] {
        let mut fan = broker.json().await;
        enter(&mut fan, "stadium.final", Some(name), None).await;
        fans.push(fan);
    }
    assert_eq!(count_only(&mut watcher, "stadium.final").await, 4);
    drop(fans);
    watcher.expect_silence(Duration::from_millis(200)).await;
}
