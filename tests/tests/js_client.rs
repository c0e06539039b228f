//! `web-demo/starling.js` under Node's test runner (`tests/js/*.test.mjs`),
//! against a real broker started here with auth on.

use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

use starling_tests::TestBroker;
use starling_tests::tokens::SECRET;

const INSTALL: &str =
    "install Node.js 20 (Debian package nodejs) and run `npm ci --prefix tests/js`";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starling_js_passes_its_node_tests_against_a_real_broker() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("js");
    assert!(
        dir.join("node_modules/ws").exists(),
        "tests/js/node_modules is missing: {INSTALL}"
    );
    let broker = TestBroker::with_config(|c| {
        c.jwt_secret = Some(SECRET.into());
        c.jwt_leeway_s = 0;
    })
    .await;
    let mut command = Command::new("node");
    command
        .arg("--test")
        .arg("--test-reporter=spec")
        .arg(dir.join("auth.test.mjs"))
        .env("STARLING_WS_URL", broker.ws_url())
        .env("STARLING_JWT_SECRET", SECRET);
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
    assert!(report.contains("pass 3"), "{report}");
    broker.stop().await;
}
