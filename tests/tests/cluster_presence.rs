//! Presence across a cluster, kept in Redis: every node answers the same
//! members, each join and leave is announced once whichever node holds the
//! sessions, and the members of a node killed without a goodbye leave once,
//! within the grace period plus the heartbeat timeout.

use std::time::{Duration, Instant};

use starling_protocol::Envelope;
use starling_tests::presence::{
    Listing, ask, count_only, enter, join_of, leave_of, members, names, presence, watcher,
};
use starling_tests::redis::RedisServer;
use starling_tests::{Client, TestBroker};

const GRACE: Duration = Duration::from_millis(500);

async fn node(name: &str, redis: &RedisServer) -> TestBroker {
    TestBroker::node_with(name, &redis.url(), |c| {
        c.presence_prefixes = vec!["chat.".into()];
        c.presence_counts_prefixes = vec!["stadium.".into()];
        c.presence_grace_ms = GRACE.as_millis() as u64;
    })
    .await
}

/// Two nodes, a watcher `wb` on B, and Ada, in on A, whose join B saw.
struct Ada {
    redis: RedisServer,
    a: TestBroker,
    b: TestBroker,
    on_b: Client,
    ada: Client,
}

async fn ada_on_a() -> Ada {
    let redis = RedisServer::start();
    let a = node("a", &redis).await;
    let b = node("b", &redis).await;
    let mut on_b = watcher(&b, "chat.room", "wb").await;
    let mut ada = a.json().await;
    enter(&mut ada, "chat.room", Some("ada"), None).await;
    assert_eq!(join_of(on_b.recv().await).0, "ada");
    Ada {
        redis,
        a,
        b,
        on_b,
        ada,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_agree_and_a_member_on_both_joins_and_leaves_once() {
    let redis = RedisServer::start();
    let a = node("a", &redis).await;
    let b = node("b", &redis).await;
    let mut on_a = watcher(&a, "chat.room", "wa").await;
    let mut on_b = watcher(&b, "chat.room", "wb").await;
    // Each watcher sees the other's join, once.
    assert_eq!(join_of(on_a.recv().await).0, "wb");

    // Ada opens a tab on each node: one member, one join, on both nodes.
    let mut tab_a = a.json().await;
    enter(&mut tab_a, "chat.room", Some("ada"), Some(r#"{"tab":"a"}"#)).await;
    for watcher in [&mut on_a, &mut on_b] {
        assert_eq!(
            join_of(watcher.recv().await),
            ("ada".into(), Some(r#"{"tab":"a"}"#.into()))
        );
    }
    let mut tab_b = b.msgpack().await;
    enter(&mut tab_b, "chat.room", Some("ada"), Some(r#"{"tab":"b"}"#)).await;
    let expected = (
        3,
        vec![("ada".into(), 2), ("wa".into(), 1), ("wb".into(), 1)],
    );
    assert_eq!(members(&mut on_a, "chat.room").await, expected);
    assert_eq!(members(&mut on_b, "chat.room").await, expected);
    let (_, listed) = presence(&mut on_a, "chat.room").await;
    assert_eq!(
        listed[0].info.as_ref().unwrap().to_json_string(),
        r#"{"tab":"b"}"#
    );

    // Her tab on A goes: nothing. Her tab on B goes: one leave, after the
    // grace period, on both nodes.
    tab_a.close().await;
    on_b.expect_silence(GRACE + Duration::from_millis(200))
        .await;
    assert_eq!(
        members(&mut on_a, "chat.room").await.1[0],
        ("ada".into(), 1)
    );
    let gone = Instant::now();
    tab_b.close().await;
    for watcher in [&mut on_a, &mut on_b] {
        assert_eq!(leave_of(watcher.recv().await), "ada");
    }
    assert!(gone.elapsed() >= GRACE - Duration::from_millis(50));
    on_a.expect_silence(Duration::from_millis(300)).await;
    on_b.expect_silence(Duration::from_millis(10)).await;
    assert_eq!(members(&mut on_b, "chat.room").await.0, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_moving_to_another_node_within_the_grace_period_announces_nothing() {
    let Ada {
        redis: _redis,
        a,
        b,
        mut on_b,
        ada,
    } = ada_on_a().await;
    // A reconnect that lands on the other node.
    ada.close().await;
    let mut ada = b.json().await;
    enter(&mut ada, "chat.room", Some("ada"), None).await;
    on_b.expect_silence(GRACE + Duration::from_millis(500))
        .await;
    assert_eq!(
        members(&mut on_b, "chat.room").await,
        (2, vec![("ada".into(), 1), ("wb".into(), 1)])
    );

    // Counts only: the count spans the nodes, and no events.
    let mut fans = Vec::new();
    for (name, node) in [("x", &a), ("y", &b), ("x", &b)] {
        let mut fan = node.json().await;
        enter(&mut fan, "stadium.final", Some(name), None).await;
        fans.push(fan);
    }
    assert_eq!(count_only(&mut on_b, "stadium.final").await, 2);
}

/// A node that stops gracefully says goodbye: the others time its members'
/// grace periods at once, without waiting for the heartbeat timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_stops_says_goodbye() {
    let Ada {
        redis: _redis,
        a,
        b: _b,
        mut on_b,
        ada,
    } = ada_on_a().await;
    let stopped = Instant::now();
    a.stop().await;
    drop(ada);
    assert_eq!(leave_of(on_b.recv().await), "ada");
    // Its own grace timer is gone with it: the survivor's runs from the
    // goodbye, noticed within a heartbeat.
    assert!(
        stopped.elapsed() < GRACE * 2 + Duration::from_millis(1500),
        "{:?}",
        stopped.elapsed()
    );
}

/// Redis restarted without persistence: each node writes its sessions
/// anew, nothing is announced, and the members are the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_redis_restart_presence_is_written_anew_silently() {
    let Ada {
        mut redis,
        a: _a,
        b,
        mut on_b,
        ada: _ada,
    } = ada_on_a().await;
    redis.restart();
    b.wait_cluster(true).await;
    // Until the nodes have written their sessions anew.
    let expected: Listing = (2, vec![("ada".into(), 1), ("wb".into(), 1)]);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Envelope::Presence {
            count: Some(count),
            members: Some(listed),
            ..
        } = ask(&mut on_b, "chat.room").await
            && (count, names(listed)) == expected
        {
            break;
        }
        assert!(Instant::now() < deadline, "presence not back in time");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    on_b.expect_silence(GRACE + Duration::from_millis(300))
        .await;
}
