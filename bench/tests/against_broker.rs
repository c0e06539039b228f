//! `starling-bench` run as users run it: the binary against a real broker
//! (in this process, on an ephemeral port), reading its JSON summary (one
//! flat object).

use std::process::Command;

use serde_json::Value;
use starling_broker::RunningBroker;
use starling_tests::broker;

/// Runs the bench with `args` against `broker`; returns its JSON summary.
async fn bench(broker: &RunningBroker, args: &[&str]) -> Value {
    let mut command = Command::new(env!("CARGO_BIN_EXE_starling-bench"));
    command
        .args(args)
        .args(["--url", &broker.ws_url(), "--json"]);
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .expect("starling-bench runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "starling-bench failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let last = stdout.lines().last().expect("a summary line");
    serde_json::from_str(last).unwrap_or_else(|e| panic!("{e}: {last}"))
}

fn u(v: &Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or_else(|| panic!("{key} in {v}"))
}

/// Every subscriber connected, nothing went wrong, every connection closed
/// with 1000 at the end.
fn assert_clean(summary: &Value, connections: u64) {
    assert_eq!(u(summary, "connected"), connections, "{summary}");
    assert_eq!(u(summary, "closed_cleanly"), connections, "{summary}");
    for key in ["errors", "close_codes", "disconnects", "connect_failures"] {
        assert_eq!(summary[key], serde_json::json!({}), "{key}: {summary}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saturate_gets_every_delivery_end_to_end_in_both_codecs() {
    let broker = broker().await;
    for codec in ["json", "msgpack"] {
        let summary = bench(
            &broker,
            &[
                "saturate",
                "--subscribers",
                "50",
                "--in-flight",
                "8",
                "--warmup",
                "0.2",
                "--duration",
                "1",
                "--codec",
                codec,
            ],
        )
        .await;
        assert_clean(&summary, 50);
        let expected = u(&summary, "deliveries_expected");
        assert!(expected > 0, "{summary}");
        assert_eq!(u(&summary, "deliveries_received"), expected, "{summary}");
        assert_eq!(u(&summary, "lagged_frames"), 0, "{summary}");
        assert_eq!(summary["in_flight_until"], "delivered", "{summary}");
        assert!(summary["latency_us"]["p99"].as_f64().is_some(), "{summary}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saturate_until_acked_accounts_for_every_message() {
    let broker = broker().await;
    let summary = bench(
        &broker,
        &[
            "saturate",
            "--subscribers",
            "20",
            "--in-flight",
            "16",
            "--until",
            "acked",
            "--warmup",
            "0.2",
            "--duration",
            "1",
        ],
    )
    .await;
    assert_clean(&summary, 20);
    assert_eq!(summary["in_flight_until"], "acked", "{summary}");
    // What a subscriber did not get, it was told it missed.
    let expected = u(&summary, "deliveries_expected");
    assert!(expected > 0, "{summary}");
    assert!(
        u(&summary, "deliveries_received") + u(&summary, "missed") >= expected,
        "{summary}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_at_a_rate_delivers_everything() {
    let broker = broker().await;
    let summary = bench(
        &broker,
        &[
            "fanout",
            "--subscribers",
            "100",
            "--rate",
            "200",
            "--warmup",
            "0.2",
            "--duration",
            "1",
            "--codec",
            "msgpack",
        ],
    )
    .await;
    assert_clean(&summary, 100);
    assert_eq!(summary["delivered_ratio"], 1.0, "{summary}");
    assert_eq!(
        u(&summary, "deliveries_expected"),
        100 * u(&summary, "published"),
        "{summary}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_holds_its_connections_and_closes_them_cleanly() {
    let broker = broker().await;
    let summary = bench(
        &broker,
        &[
            "idle",
            "--connections",
            "300",
            "--distinct-topics",
            "--hold",
            "0.5",
        ],
    )
    .await;
    assert_clean(&summary, 300);
    assert_eq!(u(&summary, "subscriptions"), 300, "{summary}");
}
