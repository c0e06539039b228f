//! The accept loop survives running out of file descriptors: it backs off and
//! keeps serving once descriptors are free again.

use std::time::Duration;

use futures_util::StreamExt;
use tokio::time::timeout;

mod common;

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
    // The shell lowers the limit, then becomes the broker.
    let (mut child, addr) = common::start("ulimit -n 64 &&", "").await;

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
