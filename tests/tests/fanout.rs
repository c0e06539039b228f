//! Fan-out at scale: many subscribers, every message, in order.

use std::collections::HashMap;

use futures_util::future::join_all;
use starling_protocol::Payload;
use starling_tests::{Client, TestBroker, WAIT, raise_fd_limit};

const SUBSCRIBERS: usize = 1_000;
const PUBLISHERS: usize = 2;
const PER_PUBLISHER: u64 = 500;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_subscribers_receive_every_message_in_publish_order() {
    assert!(raise_fd_limit(4 * SUBSCRIBERS as u64 + 100) >= 2 * SUBSCRIBERS as u64 + 50);
    let broker = TestBroker::start().await;
    let url = broker.ws_url();

    let mut subscribers = Vec::with_capacity(SUBSCRIBERS);
    for chunk in 0..SUBSCRIBERS / 100 {
        let batch = join_all((0..100).map(|i| {
            let url = url.clone();
            async move {
                let codec = if (chunk * 100 + i) % 2 == 0 {
                    starling_protocol::Codec::Json
                } else {
                    starling_protocol::Codec::MsgPack
                };
                let mut c = Client::connect(&url, Some(codec)).await;
                c.subscribe("fan.out").await;
                c
            }
        }))
        .await;
        subscribers.extend(batch);
    }
    assert_eq!(
        broker
            .broker()
            .registry()
            .subscribers(&"fan.out".parse().unwrap()),
        SUBSCRIBERS
    );

    let readers: Vec<_> = subscribers
        .into_iter()
        .map(|mut c| {
            tokio::spawn(async move {
                c.set_patience(WAIT * 6);
                let mut next: HashMap<u64, u64> = HashMap::new();
                for _ in 0..PUBLISHERS as u64 * PER_PUBLISHER {
                    let (_, payload) = c.recv_message().await;
                    let [publisher, seq]: [u64; 2] = payload.decode().expect("[publisher, seq]");
                    let expected = next.entry(publisher).or_insert(0);
                    assert_eq!(seq, *expected, "publisher {publisher} out of order");
                    *expected += 1;
                }
                next
            })
        })
        .collect();

    let publishers: Vec<_> = (0..PUBLISHERS as u64)
        .map(|p| {
            let url = url.clone();
            tokio::spawn(async move {
                let mut c = Client::connect(&url, None).await;
                for seq in 0..PER_PUBLISHER {
                    let payload = Payload::from_json(&format!("[{p},{seq}]")).unwrap();
                    c.publish_nowait("fan.out", payload).await;
                }
                // A final acked publish to a side topic flushes the pipeline.
                c.publish("fan.done", "true").await;
            })
        })
        .collect();
    for p in publishers {
        p.await.expect("publisher");
    }
    for reader in readers {
        let next = tokio::time::timeout(WAIT * 12, reader)
            .await
            .expect("subscriber finished in time")
            .expect("subscriber task");
        assert_eq!(next.len(), PUBLISHERS);
        assert!(next.values().all(|n| *n == PER_PUBLISHER));
    }
    broker.stop().await;
}
