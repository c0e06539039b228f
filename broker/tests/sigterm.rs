//! The `starling` binary: it prints its address, and on SIGTERM closes every
//! client with 1001 and exits 0.

use futures_util::StreamExt;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;

mod common;
use common::WAIT;

#[tokio::test]
async fn sigterm_closes_clients_with_1001_and_exits_0() {
    let (mut child, addr) = common::start("", "--node-id sig").await;

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
