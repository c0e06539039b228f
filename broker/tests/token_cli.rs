//! `starling token`: the binary prints a token that the binary, serving
//! with the matching key, accepts, with the identity and the permissions
//! asked for; a wrong command line gets a non-zero exit and a reason.

use std::net::SocketAddr;
use std::process::Output;

use starling_protocol::{Envelope, ErrorCode, Filter, Payload, Topic};
use starling_tests::tokens::key_path;
use starling_tests::{Client, RawWs};

mod common;

const SECRET: &str = "a-development-secret-for-the-token-tests";

/// Runs `starling ARGS` to its end, with `env` set.
async fn starling(args: &[&str], env: &[(&str, &str)]) -> Output {
    let args: Vec<&std::ffi::OsStr> = args.iter().map(std::ffi::OsStr::new).collect();
    common::run(&args, env).await
}

/// `starling token ARGS`: the token it printed, checked to be alone on its
/// line with nothing on stderr.
async fn mint(args: &[&str], env: &[(&str, &str)]) -> String {
    let mut argv = vec!["token"];
    argv.extend_from_slice(args);
    let output = starling(&argv, env).await;
    let stdout = String::from_utf8(output.stdout).expect("UTF-8 stdout");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{argv:?}: {stderr}");
    assert!(stderr.is_empty(), "{argv:?} wrote to stderr: {stderr}");
    let token = stdout
        .strip_suffix('\n')
        .unwrap_or_else(|| panic!("{stdout:?} is not one line"));
    assert!(!token.contains('\n'), "{stdout:?} is not one line");
    assert_eq!(token.split('.').count(), 3, "{token:?} is not a JWT");
    token.to_owned()
}

/// `starling token ARGS`, expected to fail: its exit code and stderr.
async fn mint_fails(args: &[&str]) -> (i32, String) {
    let mut argv = vec!["token"];
    argv.extend_from_slice(args);
    let output = starling(&argv, &[]).await;
    assert!(
        output.stdout.is_empty(),
        "{argv:?} printed {:?}",
        output.stdout
    );
    let code = output.status.code().expect("an exit code");
    assert_ne!(code, 0, "{argv:?} succeeded");
    (code, String::from_utf8_lossy(&output.stderr).into_owned())
}

async fn connect(addr: &str, token: &str) -> Client {
    Client::connect(&format!("ws://{addr}/ws?token={token}"), None).await
}

/// Subscribes to `chat.x`, publishes there, and gets the message back with
/// the token's `sub` in `from`; `other.x` is refused both ways.
async fn chat_as(addr: &str, token: &str, sub: &str) {
    let mut client = connect(addr, token).await;
    client.subscribe("chat.x").await;
    client.publish("chat.x", r#"{"text":"hi"}"#).await;
    match client.recv().await {
        Envelope::Message {
            topic,
            from,
            payload,
            ..
        } => {
            assert_eq!(topic.as_str(), "chat.x");
            assert_eq!(from.as_deref(), Some(sub));
            assert_eq!(payload.to_json_string(), r#"{"text":"hi"}"#);
        }
        other => panic!("expected a message, got {other:?}"),
    }
    let refused = |answer: &Envelope| {
        matches!(
            answer,
            Envelope::Error {
                code: ErrorCode::Unauthorized,
                ..
            }
        )
    };
    let answer = client
        .request(&Envelope::Subscribe {
            name: None,
            info: None,
            epoch: None,
            id: Some(100),
            topic: Filter::new("other.x").unwrap(),
            since: None,
        })
        .await;
    assert!(refused(&answer), "subscribe other.x: {answer:?}");
    let answer = client
        .request(&Envelope::Publish {
            id: Some(101),
            topic: Topic::new("other.x").unwrap(),
            payload: Payload::from_json("1").unwrap(),
        })
        .await;
    assert!(refused(&answer), "publish other.x: {answer:?}");
    client.close().await;
}

#[tokio::test]
async fn a_token_from_the_secret_is_accepted_with_its_permissions_and_identity() {
    let (_broker, addr) = common::start("", &format!("--jwt-secret {SECRET}")).await;
    let chat = ["--subscribe", "chat.>", "--publish", "chat.>"];
    let mut args = vec!["--jwt-secret", SECRET, "--sub", "alice"];
    args.extend_from_slice(&chat);
    let alice = mint(&args, &[]).await;
    chat_as(&addr, &alice, "alice").await;

    // The secret from the environment, as the broker takes it; `--ttl`.
    let mut args = vec!["--sub", "bob", "--ttl", "90m"];
    args.extend_from_slice(&chat);
    let bob = mint(&args, &[("STARLING_JWT_SECRET", SECRET)]).await;
    chat_as(&addr, &bob, "bob").await;

    // What alice publishes reaches bob with alice's name on it.
    let mut bob = connect(&addr, &bob).await;
    bob.subscribe("chat.>").await;
    let mut alice = connect(&addr, &alice).await;
    alice.publish("chat.room", "7").await;
    match bob.recv().await {
        Envelope::Message { topic, from, .. } => {
            assert_eq!(topic.as_str(), "chat.room");
            assert_eq!(from.as_deref(), Some("alice"));
        }
        other => panic!("expected a message, got {other:?}"),
    }

    // Another secret's token is refused at the handshake.
    let stranger = mint(&["--jwt-secret", "another secret", "--sub", "mallory"], &[]).await;
    assert_refused(&addr, &stranger).await;
}

#[tokio::test]
async fn a_token_from_a_private_key_is_accepted_with_the_public_key() {
    for (private, public) in [
        ("rsa-private.pem", "rsa-public.pem"),
        ("ec-private.pem", "ec-public.pem"),
    ] {
        let public = key_path(public);
        let (_broker, addr) =
            common::start("", &format!("--jwt-public-key '{}'", public.display())).await;
        let private = key_path(private);
        let token = mint(
            &[
                "--jwt-private-key",
                private.to_str().expect("a UTF-8 path"),
                "--sub",
                "alice",
                "--subscribe",
                "chat.>",
                "--publish",
                "chat.>",
            ],
            &[],
        )
        .await;
        chat_as(&addr, &token, "alice").await;
    }

    // A key the broker does not trust.
    let public = key_path("rsa-public.pem");
    let (_broker, addr) =
        common::start("", &format!("--jwt-public-key '{}'", public.display())).await;
    let other = key_path("other-rsa-private.pem");
    let token = mint(
        &[
            "--jwt-private-key",
            other.to_str().expect("a UTF-8 path"),
            "--sub",
            "mallory",
        ],
        &[],
    )
    .await;
    assert_refused(&addr, &token).await;
}

/// The handshake with `token` ends in a 1008 close, before any `welcome`.
async fn assert_refused(addr: &str, token: &str) {
    let addr: SocketAddr = addr.parse().expect("a socket address");
    let path = format!("/ws?token={token}");
    let (answer, mut raw) = RawWs::request(addr, "GET", &path, &RawWs::UPGRADE_HEADERS).await;
    assert_eq!(answer.status, 101, "{answer:?}");
    let (code, reason, before) = raw.recv_close().await;
    assert!(before.is_empty(), "frames before the close: {before:?}");
    assert_eq!(code, 1008, "{reason}");
    assert!(reason.starts_with("unauthorized"), "{reason}");
}

#[tokio::test]
async fn a_wrong_command_line_is_refused_with_the_reason() {
    // No `--sub`: clap's usage error.
    let (code, stderr) = mint_fails(&["--jwt-secret", SECRET]).await;
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--sub"), "{stderr}");

    // No key, or two.
    let (code, stderr) = mint_fails(&["--sub", "alice"]).await;
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("no key to sign with"), "{stderr}");
    assert!(
        stderr.contains("--jwt-secret") && stderr.contains("--jwt-private-key"),
        "{stderr}"
    );
    let rsa = key_path("rsa-private.pem");
    let rsa = rsa.to_str().expect("a UTF-8 path");
    let (code, stderr) = mint_fails(&[
        "--jwt-secret",
        SECRET,
        "--jwt-private-key",
        rsa,
        "--sub",
        "alice",
    ])
    .await;
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("two keys"), "{stderr}");

    // A key that is not one, or no file at all.
    let readme = key_path("README.md");
    let (code, stderr) = mint_fails(&[
        "--jwt-private-key",
        readme.to_str().expect("a UTF-8 path"),
        "--sub",
        "alice",
    ])
    .await;
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("not an RSA or EC"), "{stderr}");
    let (code, stderr) = mint_fails(&[
        "--jwt-private-key",
        "/nonexistent/key.pem",
        "--sub",
        "alice",
    ])
    .await;
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("cannot read the JWT private key"),
        "{stderr}"
    );

    // Claims the broker would refuse are refused here first.
    for (args, why) in [
        (vec!["--sub", ""], "the subject is empty"),
        (vec!["--sub", "a", "--subscribe", "chat..x"], "--subscribe"),
        (vec!["--sub", "a", "--publish", "a.>.b"], "--publish"),
        (vec!["--sub", "a", "--ttl", "0"], "at least one second"),
        (vec!["--sub", "a", "--ttl", "1w"], "unknown unit"),
    ] {
        let mut argv = vec!["--jwt-secret", SECRET];
        argv.extend(args);
        let (code, stderr) = mint_fails(&argv).await;
        assert_eq!(code, 2, "{argv:?}: {stderr}");
        assert!(stderr.contains(why), "{argv:?}: {stderr}");
    }
}
