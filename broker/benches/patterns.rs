//! One publish through the topic registry when many pattern subscriptions
//! exist and few match: `room.0.*` .. `room.N.*` subscribed, a message on
//! `room.42.msg`, which one exact subscriber and (when N > 42) the pattern
//! `room.42.*` take. With 0 patterns this is the path with no pattern at all.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use starling_broker::internals::{Delivery, Fanout};
use starling_protocol::{Filter, Payload, Topic};

fn patterns(c: &mut Criterion) {
    let topic = Topic::new("room.42.msg").unwrap();
    let payload = Payload::from_json(r#"{"text":"hi"}"#).unwrap();
    let origin: Arc<str> = "bench".into();
    let mut group = c.benchmark_group("patterns");
    for patterns in [0usize, 100, 10_000] {
        let registry = Fanout::new(16);
        let mut receivers = vec![registry.subscribe(&Filter::from(topic.clone()))];
        // Held to the end, as connections hold their subscriptions.
        let mut idle = Vec::with_capacity(patterns);
        for i in 0..patterns {
            let rx = registry.subscribe(&Filter::new(&format!("room.{i}.*")).unwrap());
            // Only the receivers that get something are read.
            if i == 42 {
                receivers.push(rx);
            } else {
                idle.push(rx);
            }
        }
        let expected = receivers.len();
        group.bench_with_input(
            BenchmarkId::new("publish_one_match", patterns),
            &patterns,
            |b, _| {
                b.iter(|| {
                    let delivery =
                        Delivery::new(topic.clone(), payload.clone(), None, origin.clone());
                    assert_eq!(registry.publish(delivery), expected);
                    for rx in &mut receivers {
                        rx.drain(1, |delivery| {
                            black_box(delivery.unwrap());
                        });
                    }
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, patterns);
criterion_main!(benches);
