//! The accept loop survives running out of file descriptors: it backs off and
//! keeps serving once descriptors are free again.

use std::process::Stdio;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(10);

async fn connect(
    addr: &str,
) -> Option<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
> {
    let (mut ws, _) = timeout(
        Duration::from_secs(2),
        tokio_tungstenite::connect_async(format!("ws://{addr}/ws")),
    )
    .await
    .ok()?
    .ok()?;
    // The welcome frame proves the broker serves this connection.
    timeout(Duration::from_secs(2), ws.next())
        .await
        .ok()??
        .ok()?;
    Some(ws)
}

#[tokio::test]
async fn broker_keeps_serving_after_running_out_of_file_descriptors() {
    // A shell lowers the limit, then becomes the broker.
    let mut child = Command::new("sh")
        .args([
            "-c",
            &format!(
                "ulimit -n 64 && exec {} --listen 127.0.0.1:0",
                env!("CARGO_BIN_EXE_starling")
            ),
        ])
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start the starling binary");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = timeout(WAIT, lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .expect("a line");
    let addr = line
        .strip_prefix("starling listening on ")
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("unexpected first line: {line}"))
        .to_owned();

    // Open connections until the broker cannot take one more.
    let mut open = Vec::new();
    loop {
        match connect(&addr).await {
            Some(ws) => open.push(ws),
            None => break,
        }
        assert!(open.len() < 64, "the descriptor limit was not reached");
    }
    assert!(
        open.len() > 10,
        "only {} connections before exhaustion",
        open.len()
    );
    assert!(child.try_wait().unwrap().is_none(), "the broker exited");

    // Free descriptors: the broker serves new clients again.
    open.truncate(open.len() / 2);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut recovered = false;
    for _ in 0..10 {
        if connect(&addr).await.is_some() {
            recovered = true;
            break;
        }
    }
    assert!(
        recovered,
        "the broker did not serve again after descriptors were freed"
    );
    assert!(child.try_wait().unwrap().is_none(), "the broker exited");
    child.kill().await.unwrap();
}
