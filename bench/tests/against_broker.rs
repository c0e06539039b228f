//! `starling-bench` run as users run it: the binary against a real broker
//! (in this process, on an ephemeral port), reading its JSON summary (one
//! flat object); over TLS and with a token too.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;
use starling_broker::RunningBroker;
use starling_tests::tokens::{self, Claims};
use starling_tests::{TestCerts, broker, broker_with};

/// Runs the bench with `args` against `broker`, and `env` set.
async fn run(broker: &RunningBroker, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_starling-bench"));
    command
        .args(args)
        .args(["--url", &broker.ws_url(), "--json"])
        .env_remove("STARLING_BENCH_TOKEN")
        .envs(env.iter().copied());
    tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .expect("starling-bench runs")
}

/// Runs the bench with `args` against `broker`; returns its JSON summary.
async fn bench(broker: &RunningBroker, args: &[&str]) -> Value {
    bench_with(broker, args, &[]).await
}

/// [`bench`] with `env` set.
async fn bench_with(broker: &RunningBroker, args: &[&str], env: &[(&str, &str)]) -> Value {
    let output = run(broker, args, env).await;
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

/// A short `saturate` run (with `extra` flags) that gets every delivery.
async fn saturate_delivers(broker: &RunningBroker, extra: &[&str], env: &[(&str, &str)]) {
    let mut args = vec![
        "saturate",
        "--subscribers",
        "20",
        "--in-flight",
        "8",
        "--warmup",
        "0.2",
        "--duration",
        "1",
    ];
    args.extend_from_slice(extra);
    let summary = bench_with(broker, &args, env).await;
    assert_clean(&summary, 20);
    let expected = u(&summary, "deliveries_expected");
    assert!(expected > 0, "{summary}");
    assert_eq!(u(&summary, "deliveries_received"), expected, "{summary}");
    assert_eq!(
        u(&summary, "acks"),
        u(&summary, "published_total"),
        "{summary}"
    );
}

/// A short `fanout` run (with `extra` flags) that delivers everything.
async fn fanout_delivers(broker: &RunningBroker, extra: &[&str], env: &[(&str, &str)]) {
    let mut args = vec![
        "fanout",
        "--subscribers",
        "50",
        "--rate",
        "200",
        "--warmup",
        "0.2",
        "--duration",
        "1",
    ];
    args.extend_from_slice(extra);
    let summary = bench_with(broker, &args, env).await;
    assert_clean(&summary, 50);
    assert!(u(&summary, "published") > 0, "{summary}");
    assert_eq!(summary["delivered_ratio"], 1.0, "{summary}");
}

/// A broker serving `wss://` with `certs`.
async fn tls_broker(certs: &TestCerts) -> RunningBroker {
    let (cert, key) = (certs.cert_path.clone(), certs.key_path.clone());
    broker_with(|c| {
        c.tls_cert = Some(cert);
        c.tls_key = Some(key);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saturate_and_fanout_over_tls() {
    let certs = TestCerts::new();
    let broker = tls_broker(&certs).await;
    assert!(broker.ws_url().starts_with("wss://"), "{}", broker.ws_url());
    let ca = certs.ca_path.to_str().unwrap();
    saturate_delivers(&broker, &["--ca-file", ca], &[]).await;
    fanout_delivers(&broker, &["--ca-file", ca, "--codec", "msgpack"], &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_certificate_fails_at_once() {
    let certs = TestCerts::new();
    let broker = tls_broker(&certs).await;
    let (output, took) = timed(run(&broker, &["saturate", "--duration", "10"], &[])).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("UnknownIssuer"), "{stderr}");
    assert!(stderr.contains("--ca-file"), "{stderr}");
    assert!(took < Duration::from_secs(5), "{took:?}: {stderr}");
}

/// A broker with HS256 auth.
async fn auth_broker() -> RunningBroker {
    broker_with(|c| c.jwt_secret = Some(tokens::SECRET.into())).await
}

/// A token for the bench's topics, signed with `secret`.
fn bench_token(secret: &str) -> String {
    Claims::new("bench")
        .subscribe(&["bench.>"])
        .publish(&["bench.>"])
        .hs256_with(secret.as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saturate_and_fanout_with_a_token() {
    let broker = auth_broker().await;
    let token = bench_token(tokens::SECRET);
    saturate_delivers(&broker, &["--token", &token], &[]).await;
    // The token can come from the environment too.
    fanout_delivers(&broker, &[], &[("STARLING_BENCH_TOKEN", &token)]).await;
}

/// Runs `fut`, timing it.
async fn timed<F: Future>(fut: F) -> (F::Output, Duration) {
    let started = Instant::now();
    let output = fut.await;
    (output, started.elapsed())
}

/// Runs a 10-second `saturate` that must fail at once; returns its stderr.
async fn fails_at_once(broker: &RunningBroker, extra: &[&str]) -> String {
    let mut args = vec!["saturate", "--subscribers", "20", "--duration", "10"];
    args.extend_from_slice(extra);
    let (output, took) = timed(run(broker, &args, &[])).await;
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!output.status.success(), "{stderr}");
    assert!(took < Duration::from_secs(5), "{took:?}: {stderr}");
    stderr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_token_fails_at_once_with_the_brokers_reason() {
    let broker = auth_broker().await;
    let wrong = bench_token("another secret of thirty-two bytes");
    let stderr = fails_at_once(&broker, &["--token", &wrong]).await;
    assert!(
        stderr.contains("refused with 1008 (unauthorized"),
        "{stderr}"
    );
    assert!(stderr.contains("does not accept --token"), "{stderr}");

    let stderr = fails_at_once(&broker, &[]).await;
    assert!(stderr.contains("refused with 1008"), "{stderr}");
    assert!(stderr.contains("wants a token"), "{stderr}");

    // A good token that may not publish to the bench's topics.
    let read_only = Claims::new("bench").subscribe(&["bench.>"]).hs256();
    let stderr = fails_at_once(&broker, &["--token", &read_only]).await;
    assert!(
        stderr.contains("publishing to bench.saturate was refused with unauthorized"),
        "{stderr}"
    );
}
