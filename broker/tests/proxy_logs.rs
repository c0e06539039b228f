//! `--trusted-proxy` in the logs: behind a real nginx, the binary logs
//! each client's address from `X-Forwarded-For` when nginx is trusted, and
//! nginx's own address when it is not.

use std::process::Stdio;
use std::sync::Arc;

use starling_tests::tungstenite::client::IntoClientRequest;
use starling_tests::tungstenite::http::HeaderValue;
use starling_tests::{BINARY_WAIT, Nginx, TestCerts};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio::time::timeout;

/// The binary with JSON connection logs on stdout: the process, its
/// address, and its log lines as they come.
async fn logging_broker(args: &[&str]) -> (Child, String, mpsc::UnboundedReceiver<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_starling"))
        .args(["--listen", "127.0.0.1:0", "--log-format", "json"])
        .args(args)
        .env("RUST_LOG", "starling_broker::connection=info")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start the starling binary");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let addr = timeout(BINARY_WAIT, async {
        loop {
            let line = lines.next_line().await.unwrap().expect("a line");
            if let Some(rest) = line.strip_prefix("starling listening on ") {
                break rest.split_whitespace().next().unwrap().to_owned();
            }
        }
    })
    .await
    .expect("the address in time");
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            let _ = tx.send(line);
        }
    });
    (child, addr, rx)
}

/// The `client` of the next `connected` log line.
async fn connected_client(logs: &mut mpsc::UnboundedReceiver<String>) -> String {
    timeout(BINARY_WAIT, async {
        loop {
            let line = logs.recv().await.expect("the broker logs");
            if !line.contains(r#""message":"connected""#) {
                continue;
            }
            let start = line.find(r#""client":""#).expect("a client field") + 10;
            let end = start + line[start..].find('"').unwrap();
            return line[start..end].to_owned();
        }
    })
    .await
    .expect("a connected line in time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_address_comes_from_x_forwarded_for_only_through_a_trusted_proxy() {
    let certs = TestCerts::new();
    for (args, expected) in [
        (&["--trusted-proxy", "127.0.0.1"][..], "203.0.113.7"),
        (&[][..], "127.0.0.1"),
    ] {
        let (_broker, addr, mut logs) = logging_broker(args).await;
        let nginx = Nginx::start(addr.parse().unwrap(), &certs);
        let mut request = format!("wss://localhost:{}/ws", nginx.port)
            .into_client_request()
            .unwrap();
        request
            .headers_mut()
            .insert("x-forwarded-for", HeaderValue::from_static("203.0.113.7"));
        let connector = tokio_tungstenite::Connector::Rustls(Arc::clone(&certs.client_config()));
        let (_ws, _) =
            tokio_tungstenite::connect_async_tls_with_config(request, None, false, Some(connector))
                .await
                .expect("a WebSocket through nginx");
        assert_eq!(connected_client(&mut logs).await, expected, "{args:?}");
    }
}
