//! `starling-bench soak` run as users run it, for a few seconds against a
//! real broker in this process with small bounds: the bystander loses
//! nothing, every role of the crowd did its part, and the broker's resident
//! memory stays within what its documented bounds allow.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use starling_broker::Config;
use starling_tests::broker_with;

const MIB: u64 = 1024 * 1024;

/// Messages each topic keeps.
const HISTORY: usize = 50;
/// Bytes of messages a topic's ring keeps for its slowest subscriber.
const RING_BYTES: usize = MIB as usize;
/// A connection whose socket takes nothing this long is closed with 4008:
/// short, so that stalled readers and replayers are dropped within the run.
const WRITE_TIMEOUT_MS: u64 = 1_000;
/// The flood's and the history's payloads.
const PAYLOAD: u64 = 64 * 1024;

/// The roles, on a small scale.
const CHURNERS: u64 = 4;
const SLOW_READERS: u64 = 3;
const STALLED_READERS: u64 = 3;
const FLOODERS: u64 = 1;
const REPLAYERS: u64 = 2;

fn u(v: &Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or_else(|| panic!("{key} in {v}"))
}

/// A role's count of `key`.
fn role(v: &Value, role: &str, key: &str) -> u64 {
    v[role][key]
        .as_u64()
        .unwrap_or_else(|| panic!("{role}.{key} in {v}"))
}

/// The sum of a tally (`{"4008": 3, ...}`).
fn tally(v: &Value) -> u64 {
    v.as_object()
        .unwrap_or_else(|| panic!("a tally, not {v}"))
        .values()
        .map(|n| n.as_u64().unwrap())
        .sum()
}

/// How much the broker may hold at once under this soak, from the bounds in
/// docs/architecture.md ("Bounds in bytes") for `config`:
///
/// - each connection the bench holds at once (every task's one, the
///   bystander's two, the history publisher and the probe): its outbound
///   queue plus one message, and a read buffer that holds at most one
///   frame while it arrives (a flooder's 64 KiB publish);
/// - each topic's ring: `--subscriber-buffer-bytes` of messages for the
///   flood and history topics, the small topics (eight churn topics, the
///   bystander's) far less at `--subscriber-buffer` messages of a few
///   hundred bytes; each kept message with up to two cached encodings (x3);
/// - each topic's history: `--history` messages, x3 for the encodings
///   likewise: large on the flood and history topics, small elsewhere;
/// - 64 MiB of slack for the runtime, the test harness in this process and
///   the allocator's arenas and fragmentation.
fn memory_bound(config: &Config) -> u64 {
    let message = PAYLOAD + 256;
    let small = 256;
    let connections = CHURNERS + SLOW_READERS + STALLED_READERS + FLOODERS + REPLAYERS + 4;
    let per_connection = config.outbound_queue_bytes as u64
        + message
        + (config.read_buffer_bytes as u64).max(message);
    let large_rings = 2 * config.subscriber_buffer_bytes as u64 * 3;
    let small_ring =
        (config.subscriber_buffer as u64 * small).min(config.subscriber_buffer_bytes as u64);
    let small_rings = 9 * small_ring * 3;
    let histories = 2 * config.history as u64 * message * 3 + 9 * config.history as u64 * small * 3;
    connections * per_connection + large_rings + small_rings + histories + 64 * MIB
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_leaves_the_bystander_whole_and_the_broker_within_its_bounds() {
    let broker = broker_with(|c| {
        c.history = HISTORY;
        c.subscriber_buffer_bytes = RING_BYTES;
        c.write_timeout_ms = WRITE_TIMEOUT_MS;
    })
    .await;
    let bound = memory_bound(broker.broker.config());
    let pid = std::process::id().to_string();
    let args = [
        "soak",
        "--url",
        &broker.ws_url(),
        "--duration",
        "8",
        "--sample-interval",
        "1",
        "--churners",
        &CHURNERS.to_string(),
        "--slow-readers",
        &SLOW_READERS.to_string(),
        "--stalled-readers",
        &STALLED_READERS.to_string(),
        "--flooders",
        &FLOODERS.to_string(),
        "--replayers",
        &REPLAYERS.to_string(),
        "--payload-bytes",
        &PAYLOAD.to_string(),
        "--broker-pid",
        &pid,
        "--json",
    ]
    .map(str::to_owned);
    let started = Instant::now();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_starling-bench"))
            .args(args)
            .env_remove("STARLING_BENCH_TOKEN")
            .output()
    })
    .await
    .unwrap()
    .expect("starling-bench runs");
    let took = started.elapsed();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "soak failed: {stdout}\n{stderr}");
    eprintln!("{stdout}");
    let v: Value = {
        let last = stdout.lines().last().expect("a summary line");
        serde_json::from_str(last).unwrap_or_else(|e| panic!("{e}: {last}"))
    };
    // 8 s of load, closes and 2 s of settle: well within duration + 15 s.
    assert!(took < Duration::from_secs(20), "took {took:?}");

    // The headline: the bystander lost nothing.
    let published = u(&v, "bystander_published");
    assert!(published >= 100, "{v}");
    assert_eq!(u(&v, "bystander_lost"), 0, "{v}");
    assert_eq!(u(&v, "bystander_received"), published, "{v}");
    assert_eq!(u(&v, "bystander_acked"), published, "{v}");

    // Every role did its part.
    for name in [
        "churners",
        "slow_readers",
        "stalled_readers",
        "flooders",
        "replayers",
        "history_publisher",
    ] {
        assert!(role(&v, name, "connections") > 0, "{name}: {v}");
    }
    assert!(role(&v, "churners", "connections") > CHURNERS, "{v}");
    assert!(role(&v, "churners", "published") > 0, "{v}");
    assert!(
        role(&v, "churners", "closed_cleanly") > 0 && role(&v, "churners", "dropped") > 0,
        "{v}"
    );
    assert!(role(&v, "flooders", "acks") > 0, "{v}");
    assert!(role(&v, "slow_readers", "messages") > 0, "{v}");
    // The ring (1 MiB) is sixteen messages: slow readers fall behind.
    assert!(role(&v, "slow_readers", "lagged_frames") > 0, "{v}");
    assert!(role(&v, "slow_readers", "missed") > 0, "{v}");
    // Stalled readers take nothing for longer than the write timeout: the
    // broker drops them.
    let stalled_dropped =
        tally(&v["stalled_readers"]["close_codes"]) + tally(&v["stalled_readers"]["disconnects"]);
    assert!(stalled_dropped > 0, "{v}");
    assert!(
        role(&v, "stalled_readers", "connections") > STALLED_READERS,
        "{v}"
    );
    assert!(role(&v, "replayers", "replay_requests") > 0, "{v}");
    assert_eq!(v["history_kept"], true, "{v}");

    // The broker held no more than its bounds allow.
    let broker_figures = &v["broker"];
    let start = u(broker_figures, "rss_start_bytes");
    let peak = u(broker_figures, "rss_peak_bytes");
    let series = broker_figures["rss_series_bytes"].as_array().unwrap();
    assert!(series.len() >= 8, "{v}");
    eprintln!(
        "broker RSS: start {} MiB, peak {} MiB, bound on growth {} MiB",
        start / MIB,
        peak / MIB,
        bound / MIB
    );
    assert!(
        peak.saturating_sub(start) < bound,
        "resident memory grew by {} MiB, over the bound of {} MiB: {v}",
        (peak - start) / MIB,
        bound / MIB
    );
}
