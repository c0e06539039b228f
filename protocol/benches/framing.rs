//! WebSocket framing hot paths: a server parsing a batch of masked client
//! frames (every inbound publish), and writing one data frame (every
//! outbound delivery is encoded as one).

use std::hint::black_box;
use std::ops::ControlFlow;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use starling_protocol::framing::{self, Event, FIN, FrameReader, Kind, Role, opcode};

/// Frames in the parsed batch.
const FRAMES: usize = 64;
/// Bytes of payload per frame.
const PAYLOAD: usize = 100;

fn framing(c: &mut Criterion) {
    let payload: Vec<u8> = (0..PAYLOAD as u8).map(|i| b'a' + i % 26).collect();
    let mut wire = Vec::new();
    for i in 0..FRAMES as u32 {
        let mask = (i.wrapping_mul(0x9e37_79b9) | 1).to_le_bytes();
        framing::write_masked(&mut wire, FIN | opcode::TEXT, &payload, mask);
    }

    let mut group = c.benchmark_group("framing");
    group.throughput(Throughput::Elements(FRAMES as u64));
    let mut reader = FrameReader::new(Role::Server);
    group.bench_function("parse_64x100_masked_text", |b| {
        b.iter(|| {
            // As the broker does: read into the buffer, parse it all (which
            // frees the emptied buffer).
            reader.buffer().extend_from_slice(black_box(&wire));
            let mut bytes = 0;
            let flow = reader.parse(1 << 20, |event| {
                if let Event::Message(_, data) = event {
                    bytes += data.len();
                }
                ControlFlow::<()>::Continue(())
            });
            assert!(flow.is_ok());
            bytes
        })
    });

    group.throughput(Throughput::Elements(1));
    let mut out = Vec::with_capacity(4096);
    group.bench_function("write_message_100", |b| {
        b.iter(|| {
            out.clear();
            framing::write_message(&mut out, Kind::Text, black_box(&payload));
            black_box(out.len())
        })
    });
    group.finish();
}

criterion_group!(benches, framing);
criterion_main!(benches);
