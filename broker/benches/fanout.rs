//! In-process fan-out: one publish reaching N subscribers through the topic
//! registry, each subscriber taking the shared encoded frame as a connection
//! does (no sockets).

use std::hint::black_box;
use std::sync::Arc;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use starling_broker::internals::{Delivery, Fanout};
use starling_protocol::{Codec, Filter, Payload, Topic};

fn fanout(c: &mut Criterion) {
    let topic = Topic::new("fan.out").unwrap();
    let filter = Filter::from(topic.clone());
    let payload =
        Payload::from_json(r#"{"t":1732590000000000000,"p":"xxxxxxxxxxxxxxxxxxxxxxxxxx"}"#)
            .unwrap();
    let origin: Arc<str> = "bench".into();
    let mut group = c.benchmark_group("fanout");
    for subscribers in [1usize, 100, 10_000] {
        let registry = Fanout::new(16);
        let mut receivers: Vec<_> = (0..subscribers)
            .map(|_| registry.subscribe(&filter))
            .collect();
        let mut out = Vec::with_capacity(subscribers);
        group.throughput(Throughput::Elements(subscribers as u64));
        group.bench_with_input(
            BenchmarkId::new("mixed_codecs", subscribers),
            &subscribers,
            |b, _| {
                b.iter(|| {
                    let delivery =
                        Delivery::new(topic.clone(), payload.clone(), None, origin.clone());
                    registry.publish(delivery);
                    for (i, rx) in receivers.iter_mut().enumerate() {
                        // Half the subscribers speak each codec: encoded once per codec.
                        let codec = if i % 2 == 0 {
                            Codec::Json
                        } else {
                            Codec::MsgPack
                        };
                        rx.drain(1, |delivery| {
                            // What a connection does: copy the shared frame bytes
                            // into its outbound buffer.
                            out.extend_from_slice(delivery.unwrap().wire(codec).unwrap());
                        });
                    }
                    black_box(&out);
                    out.clear();
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, fanout);
criterion_main!(benches);
