//! Presence in a cluster when a node is killed with SIGKILL: the `starling`
//! binary as the node that dies, an in-process broker as the survivor, a
//! real `redis-server` between them.

use std::time::{Duration, Instant};

use starling_tests::presence::{enter, join_of, leave_of, members, watcher};
use starling_tests::redis::RedisServer;
use starling_tests::{Client, TestBroker};

mod common;

const GRACE: Duration = Duration::from_millis(500);
/// How long after its last heartbeat a node is taken for dead (the alive
/// key's TTL, 3 s), plus one heartbeat for a survivor to notice.
const DEAD_AFTER: Duration = Duration::from_secs(4);

/// A node killed with SIGKILL says no goodbye: the survivor announces the
/// leave of each of its members once, within the grace period plus the
/// heartbeat timeout; a member that also has a session on the survivor
/// stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_members_of_a_killed_node_leave_once_on_the_survivor() {
    let redis = RedisServer::start();
    let args = format!(
        "--redis-url {} --node-id doomed --presence chat. --presence-grace-ms {}",
        redis.url(),
        GRACE.as_millis()
    );
    let (mut doomed, addr) = common::start("", &args).await;
    let survivor = TestBroker::node_with("survivor", &redis.url(), |c| {
        c.presence_prefixes = vec!["chat.".into()];
        c.presence_grace_ms = GRACE.as_millis() as u64;
    })
    .await;
    let mut watcher = watcher(&survivor, "chat.room", "watcher").await;
    redis.wait_numsub("starling:t:chat.room", 1).await;

    let url = format!("ws://{addr}/ws");
    let mut on_doomed = Vec::new();
    for name in ["ada", "bob", "cy"] {
        let mut client = Client::connect(&url, None).await;
        enter(&mut client, "chat.room", Some(name), None).await;
        assert_eq!(join_of(watcher.recv().await).0, name);
        on_doomed.push(client);
    }
    // Bob also has a session on the survivor.
    let mut bob = survivor.json().await;
    enter(&mut bob, "chat.room", Some("bob"), None).await;
    assert_eq!(members(&mut watcher, "chat.room").await.0, 4);

    doomed.start_kill().unwrap();
    doomed.wait().await.unwrap();
    let killed = Instant::now();
    let mut left = Vec::new();
    watcher.set_patience(GRACE + DEAD_AFTER + Duration::from_secs(2));
    for _ in 0..2 {
        left.push(leave_of(watcher.recv().await));
    }
    let took = killed.elapsed();
    left.sort();
    assert_eq!(left, ["ada", "cy"]);
    assert!(
        took <= GRACE + DEAD_AFTER + Duration::from_secs(1),
        "{took:?}"
    );
    watcher.expect_silence(Duration::from_secs(2)).await;
    assert_eq!(
        members(&mut watcher, "chat.room").await,
        (2, vec![("bob".into(), 1), ("watcher".into(), 1)])
    );
    drop(on_doomed);
}
