//! Attacks on the broker's memory, measured on the `starling` binary's
//! resident memory: a connection that never reads while it asks for replays
//! of a large history, and a subscriber that never reads while a publisher
//! floods its topic. Each stays within the documented bounds (the topic's
//! ring in messages and bytes, the outbound queue plus one message, a
//! replay paged by the outbound queue), and a bystander loses nothing.

use std::net::SocketAddr;
use std::time::Duration;

use starling_protocol::{Codec, Envelope, Filter, Payload};
use starling_tests::{Client, RawWs, resident_bytes};

mod common;

const MIB: u64 = 1024 * 1024;

/// A JSON string payload of about `bytes` bytes.
fn big_payload(bytes: usize, n: usize) -> Payload {
    Payload::from_json(&format!("\"{n:08}{}\"", "x".repeat(bytes - 10))).unwrap()
}

/// A masked client frame holding `envelope` as JSON text.
fn text_frame(envelope: &Envelope) -> Vec<u8> {
    let json = Codec::Json.encode(envelope).unwrap();
    RawWs::frame(0x81, json.as_bytes(), true)
}

/// Publishes `count` messages of `bytes` on `topic` and waits until the
/// broker has handled them (an acknowledged publish after them).
async fn publish_many(publisher: &mut Client, topic: &str, count: usize, bytes: usize) {
    for n in 0..count {
        publisher.publish_nowait(topic, big_payload(bytes, n)).await;
    }
    publisher.publish("sync.marker", "0").await;
}

/// A bystander on another topic still gets every message, in time.
async fn bystander_gets_everything(addr: &str) {
    let url = format!("ws://{addr}/ws");
    let mut bystander = Client::connect(&url, None).await;
    bystander.subscribe("bystander.news").await;
    let mut publisher = Client::connect(&url, None).await;
    for n in 0..100 {
        publisher.publish("bystander.news", &n.to_string()).await;
    }
    for n in 0..100 {
        let (topic, payload) = bystander.recv_message().await;
        assert_eq!(topic, "bystander.news");
        assert_eq!(payload.to_json_string(), n.to_string());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replays_to_a_connection_that_never_reads_are_paged() {
    // 200 messages of 64 KiB retained (12.5 MiB, and an encoding of each
    // once it is sent).
    let (child, addr) = common::start("", "--history 200").await;
    let pid = child.id().unwrap();
    let url = format!("ws://{addr}/ws");
    let mut publisher = Client::connect(&url, None).await;
    publish_many(&mut publisher, "big.history", 200, 64 * 1024).await;
    // One full replay that is read: the encodings are made, as any reader
    // would make them.
    let mut reader = Client::connect(&url, None).await;
    let id = reader.next_id();
    reader
        .send(&Envelope::Subscribe {
            name: None,
            info: None,
            epoch: None,
            id: Some(id),
            topic: Filter::new("big.history").unwrap(),
            since: Some(0),
        })
        .await;
    reader.recv().await; // ack
    for _ in 0..200 {
        reader.recv_message().await;
    }
    reader.close().await;
    let before = resident_bytes(pid);

    // The attacker: 50 replays of everything, never reading a byte.
    let attacker_addr: SocketAddr = addr.parse().unwrap();
    let mut attacker = RawWs::connect(attacker_addr).await;
    let topic = Filter::new("big.history").unwrap();
    let mut frames = Vec::new();
    for _ in 0..50 {
        frames.extend(text_frame(&Envelope::Subscribe {
            name: None,
            info: None,
            epoch: None,
            id: None,
            topic: topic.clone(),
            since: Some(0),
        }));
        frames.extend(text_frame(&Envelope::Unsubscribe {
            id: None,
            topic: topic.clone(),
        }));
    }
    attacker.write_raw(&frames).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    bystander_gets_everything(&addr).await;
    let after = resident_bytes(pid);
    let grown = after.saturating_sub(before);
    eprintln!("resident: {before} -> {after} bytes");
    // The kernel's socket buffers are not the broker's memory; what the
    // broker holds for the attacker is its outbound queue (64 KiB) and one
    // message.
    assert!(
        grown < 8 * MIB,
        "resident memory grew by {} KiB ({before} -> {after} bytes)",
        grown / 1024
    );
    drop(attacker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_never_reads_holds_at_most_its_bounds() {
    let (child, addr) = common::start("", "").await;
    let pid = child.id().unwrap();
    let url = format!("ws://{addr}/ws");
    // Warm up: a first flood that is read, so that the allocator's arenas
    // exist before the measure.
    let mut warm = Client::connect(&url, None).await;
    warm.subscribe("warm.up").await;
    let mut publisher = Client::connect(&url, None).await;
    publish_many(&mut publisher, "warm.up", 64, 64 * 1024).await;
    for _ in 0..64 {
        warm.recv_message().await;
    }
    let before = resident_bytes(pid);

    // The sleeper subscribes and never reads again.
    let mut sleeper = RawWs::connect(addr.parse().unwrap()).await;
    sleeper
        .write_raw(&text_frame(&Envelope::Subscribe {
            name: None,
            info: None,
            epoch: None,
            id: Some(1),
            topic: Filter::new("flood").unwrap(),
            since: None,
        }))
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    // 96 MiB of 64 KiB messages.
    publish_many(&mut publisher, "flood", 1536, 64 * 1024).await;
    bystander_gets_everything(&addr).await;
    let after = resident_bytes(pid);
    let grown = after.saturating_sub(before);
    eprintln!("resident: {before} -> {after} bytes");
    // The ring keeps 8 MiB of messages (each with its JSON encoding once
    // made: 16 MiB), the outbound queue 64 KiB and one message.
    assert!(
        grown < 24 * MIB,
        "resident memory grew by {} KiB ({before} -> {after} bytes)",
        grown / 1024
    );
    drop(sleeper);
}
