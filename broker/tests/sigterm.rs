//! The `starling` binary: it prints its address, and on SIGTERM closes every
//! client with 1001 and exits 0.

use futures_util::{SinkExt, StreamExt};
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;

mod common;
use starling_tests::BINARY_WAIT as WAIT;

#[tokio::test]
async fn sigterm_closes_clients_with_1001_and_exits_0_on_one_worker() {
    // One worker: the current-thread scheduler.
    sigterm_closes_clients("--worker-threads 1").await;
}

#[tokio::test]
async fn sigterm_closes_clients_with_1001_and_exits_0_on_two_workers() {
    // Several workers: the work-stealing scheduler.
    sigterm_closes_clients("--worker-threads 2").await;
}

/// Connects three clients, has each round-trip a message, sends SIGTERM,
/// and checks that every client gets 1001 and the process exits 0.
async fn sigterm_closes_clients(args: &str) {
    let (mut child, addr) = common::start("", &format!("--node-id sig {args}")).await;

    let mut clients = Vec::new();
    for _ in 0..3 {
        let (mut ws, _) = timeout(
            WAIT,
            tokio_tungstenite::connect_async(format!("ws://{addr}/ws")),
        )
        .await
        .unwrap()
        .expect("connect");
        let welcome = timeout(WAIT, ws.next()).await.unwrap().unwrap().unwrap();
        assert!(welcome.to_text().unwrap().contains("\"welcome\""));
        clients.push(ws);
    }

    // The broker works on this runtime: a message goes from one client to another.
    let send = |text: &str| Message::text(text.to_owned());
    clients[0]
        .send(send(r#"{"type":"subscribe","id":1,"topic":"sig.t"}"#))
        .await
        .unwrap();
    next_text(&mut clients[0], "\"ack\"").await;
    clients[1]
        .send(send(
            r#"{"type":"publish","id":2,"topic":"sig.t","payload":7}"#,
        ))
        .await
        .unwrap();
    let message = next_text(&mut clients[0], "\"message\"").await;
    assert!(message.contains(r#""payload":7"#), "{message}");

    let pid = child.id().expect("running").to_string();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("run kill");
    assert!(status.success());

    for mut ws in clients {
        let close = loop {
            match timeout(WAIT, ws.next()).await.expect("close in time") {
                Some(Ok(Message::Close(frame))) => break frame.expect("close frame with a code"),
                Some(Ok(_)) => continue,
                other => panic!("expected a close frame, got {other:?}"),
            }
        };
        assert_eq!(u16::from(close.code), 1001);
        // Answer the close so the broker can finish quickly.
        drop(ws);
    }
    let status = timeout(WAIT, child.wait())
        .await
        .expect("exit in time")
        .unwrap();
    assert!(status.success(), "exit status {status:?}");
}

/// The next text frame that contains `needle`, skipping others.
async fn next_text<S>(ws: &mut S, needle: &str) -> String
where
    S: StreamExt<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        let frame = timeout(WAIT, ws.next()).await.expect("a frame in time");
        let text = frame.expect("open").expect("a frame").into_text().unwrap();
        if text.contains(needle) {
            return text.to_string();
        }
    }
}
