//! `web-demo/starling.js` under Node's test runner (`tests/js/*.test.mjs`),
//! against real brokers started here: one with auth on
//! (`auth.test.mjs`), and one that keeps history for `hist.` topics and
//! that the tests may restart (`history.test.mjs`), and one that keeps
//! presence on `room.` topics (`presence.test.mjs`).

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::process::Command;
use tokio::sync::oneshot;

use starling_broker::{Config, RunningBroker};
use starling_tests::tokens::SECRET;
use starling_tests::{TestBroker, broker_on_with, broker_with, within};

const INSTALL: &str =
    "install Node.js 20 (Debian package nodejs) and run `npm ci --prefix tests/js`";

/// Runs `tests/js/<file>` under `node --test` with `env`, and checks that
/// its `tests` tests all passed. Returns the report.
async fn node_test(file: &str, env: &[(&str, String)], tests: usize) -> String {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("js");
    assert!(
        dir.join("node_modules/ws").exists(),
        "tests/js/node_modules is missing: {INSTALL}"
    );
    let mut command = Command::new("node");
    command
        .arg("--test")
        .arg("--test-reporter=spec")
        .arg(dir.join(file))
        .envs(env.iter().map(|(k, v)| (*k, v)));
    command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = command
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run node ({e}): {INSTALL}"));
    let output = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("node --test finishes within a minute")
        .expect("node's output");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "node --test failed:\n{report}");
    assert!(report.contains(&format!("pass {tests}")), "{report}");
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starling_js_passes_its_node_tests_against_a_real_broker() {
    let broker = TestBroker::with_config(|c| {
        c.jwt_secret = Some(SECRET.into());
        c.jwt_leeway_s = 0;
    })
    .await;
    let env = [
        ("STARLING_WS_URL", broker.ws_url()),
        ("STARLING_JWT_SECRET", SECRET.to_owned()),
    ];
    node_test("auth.test.mjs", &env, 3).await;
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starling_js_follows_presence_against_a_real_broker() {
    let broker = TestBroker::with_config(|c| {
        c.presence_prefixes = vec!["room.".into()];
        c.presence_grace_ms = 100;
    })
    .await;
    node_test(
        "presence.test.mjs",
        &[("STARLING_WS_URL", broker.ws_url())],
        1,
    )
    .await;
    broker.stop().await;
}

/// History for `hist.` topics, in memory: a restart starts a new epoch.
fn with_history(config: &mut Config) {
    config.history_prefixes = vec![("hist.".into(), 100)];
}

/// Answers the JS tests' `POST /restart` on `listener`: stops `broker` and
/// starts another on its address (node `test-node-2`), then answers 200.
/// Returns the broker running when `done` fires.
async fn restarts(
    listener: TcpListener,
    mut broker: RunningBroker,
    mut done: oneshot::Receiver<()>,
) -> RunningBroker {
    loop {
        let mut socket = tokio::select! {
            _ = &mut done => return broker,
            accepted = listener.accept() => accepted.expect("accept a control request").0,
        };
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = within("a control request", socket.read(&mut buf))
                .await
                .expect("read a control request");
            assert!(n > 0, "a control request ends before its head");
            head.extend_from_slice(&buf[..n]);
        }
        let status = if head.starts_with(b"POST /restart ") {
            let addr = broker.addr;
            starling_tests::stop(broker).await;
            broker = broker_on_with(addr, with_history).await;
            "200 OK"
        } else {
            "404 Not Found"
        };
        let answer = format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        socket
            .write_all(answer.as_bytes())
            .await
            .expect("answer a control request");
        let _ = socket.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starling_js_resumes_history_with_epochs_against_a_real_broker() {
    let broker = broker_with(with_history).await;
    let ws_url = broker.ws_url();
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the control port");
    let control = format!("http://{}", listener.local_addr().expect("control address"));
    let (done, stop) = oneshot::channel();
    let restarter = tokio::spawn(restarts(listener, broker, stop));
    let env = [
        ("STARLING_WS_URL", ws_url),
        ("STARLING_CONTROL_URL", control),
    ];
    node_test("history.test.mjs", &env, 4).await;
    let _ = done.send(());
    let broker = restarter.await.expect("the control task");
    starling_tests::stop(broker).await;
}
