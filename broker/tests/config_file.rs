//! `--config starling.toml` and `starling config check`: the binary reads
//! its settings from the file, under its environment variables and flags,
//! and checks a file without starting.

use std::path::{Path, PathBuf};
use std::process::Output;

use starling_protocol::Envelope;
use starling_tests::Client;

mod common;

/// A configuration file with `text`, in a directory of this test's own.
fn file(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("starling-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// Runs `starling config check FILE` with `env` set.
async fn check(path: &Path, env: &[(&str, &str)]) -> Output {
    let args = ["config".as_ref(), "check".as_ref(), path.as_os_str()];
    common::run(&args, env).await
}

#[tokio::test]
async fn check_shows_the_effective_settings_and_the_environment_overrides_the_file() {
    let path = file(
        "precedence.toml",
        "max-message-bytes = 1000\nmax-connections = 50\npresence = [\"chat.\"]\n",
    );
    let out = check(&path, &[("STARLING_MAX_MESSAGE_BYTES", "2000")]).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("max-message-bytes = 2000  # environment\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains("max-connections = 50  # file\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains("presence = [\"chat.\"]  # file\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains("max-subscriptions = 1024  # default\n"),
        "{stdout}"
    );
    assert!(String::from_utf8_lossy(&out.stderr).ends_with(": ok\n"));
}

#[tokio::test]
async fn check_refuses_unknown_keys_and_settings_the_broker_would_refuse() {
    let path = file("unknown.toml", "listen = \"127.0.0.1:0\"\nlisen = \"x\"\n");
    let out = check(&path, &[]).await;
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("unknown.toml:2: unknown key `lisen`"),
        "{stderr}"
    );

    // Well-formed, but the broker would not start: no such certificate.
    let path = file(
        "tls.toml",
        "tls-cert = \"/nonexistent/cert.pem\"\ntls-key = \"/nonexistent/key.pem\"\n",
    );
    let out = check(&path, &[]).await;
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("/nonexistent/cert.pem"), "{stderr}");
    assert!(out.stdout.is_empty());
}

#[tokio::test]
async fn the_broker_serves_with_the_files_settings_under_its_flags() {
    let path = file(
        "serve.toml",
        "max-message-bytes = 4096\nmax-subscriptions = 7\nnode-id = \"from-file\"\n",
    );
    let args = format!("--config {} --max-subscriptions 9", path.display());
    let (_child, addr) = common::start("", &args).await;
    let client = Client::connect(&format!("ws://{addr}/ws"), None).await;
    match client.welcome() {
        Envelope::Welcome { node, limits, .. } => {
            assert_eq!(node.as_ref(), "from-file");
            assert_eq!(limits.max_message_bytes, 4096);
            assert_eq!(limits.max_subscriptions, 9);
        }
        other => panic!("expected welcome, got {other:?}"),
    }
}

/// The example in `deploy/` is a file the broker takes.
#[tokio::test]
async fn the_deployment_example_checks() {
    let path = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/starling.toml"
    ));
    let out = check(&path, &[]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
