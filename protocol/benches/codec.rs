//! Codec hot paths: decoding what clients send, encoding what subscribers get,
//! and topic validation.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use starling_protocol::{Codec, Envelope, Filter, Payload, Topic};

fn publish_frame(codec: Codec) -> Vec<u8> {
    let env = Envelope::Publish {
        id: Some(42),
        topic: Topic::new("metrics.cpu.host1").unwrap(),
        payload: Payload::from_json(
            r#"{"t":1732590000000000000,"p":"xxxxxxxxxxxxxxxxxxxxxxxxxx"}"#,
        )
        .unwrap(),
    };
    codec.encode(&env).unwrap().as_bytes().to_vec()
}

fn message(payload: Payload) -> Envelope {
    Envelope::Message {
        epoch: None,
        topic: Topic::new("metrics.cpu.host1").unwrap(),
        payload,
        offset: None,
        sub: None,
        from: None,
    }
}

fn codecs(c: &mut Criterion) {
    let mut group = c.benchmark_group("decode_publish");
    group.throughput(Throughput::Elements(1));
    for codec in Codec::ALL {
        let bytes = publish_frame(codec);
        group.bench_function(format!("{codec:?}"), |b| {
            b.iter(|| codec.decode_client(black_box(&bytes)).unwrap())
        });
    }
    group.finish();

    let json = Payload::from_json(r#"{"t":1732590000000000000,"p":"xxxxxxxxxxxxxxxxxxxxxxxxxx"}"#)
        .unwrap();
    let tree = Payload::from_value(json.to_value());
    let mut group = c.benchmark_group("encode_message");
    group.throughput(Throughput::Elements(1));
    for (name, codec, payload) in [
        ("json_from_json", Codec::Json, json.clone()),
        ("msgpack_from_json", Codec::MsgPack, json),
        ("json_from_msgpack", Codec::Json, tree.clone()),
        ("msgpack_from_msgpack", Codec::MsgPack, tree),
    ] {
        let env = message(payload);
        group.bench_function(name, |b| b.iter(|| codec.encode(black_box(&env)).unwrap()));
    }
    group.finish();
}

fn topics(c: &mut Criterion) {
    let mut group = c.benchmark_group("topics");
    group.throughput(Throughput::Elements(1));
    group.bench_function("validate", |b| {
        b.iter(|| Topic::new(black_box("metrics.cpu.host-1:eu")).unwrap())
    });
    let pattern = Filter::new("metrics.*.>").unwrap();
    group.bench_function("match_pattern", |b| {
        b.iter(|| pattern.matches(black_box("metrics.cpu.host1")))
    });
    group.finish();
}

criterion_group!(benches, codecs, topics);
criterion_main!(benches);
