//! Runs the `starling` binary for the binary's own tests.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::time::timeout;

/// How long these tests wait for the binary.
// Each test binary compiles this module; not all of them use everything.
#[allow(dead_code)]
pub(crate) const WAIT: Duration = Duration::from_secs(10);

/// Starts the binary through `sh -c`, with `prefix` run first in the same
/// shell (for example `ulimit -n 64 &&`), listening on an ephemeral port.
/// Returns the process and the address it printed.
pub(crate) async fn start(prefix: &str, args: &str) -> (Child, String) {
    let script = format!(
        "{prefix} exec {} --listen 127.0.0.1:0 {args}",
        env!("CARGO_BIN_EXE_starling")
    );
    let mut child = Command::new("sh")
        .args(["-c", &script])
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start the starling binary");
    let mut lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
    let line = timeout(WAIT, lines.next_line())
        .await
        .expect("address line in time")
        .expect("readable stdout")
        .expect("a line");
    let addr = line
        .strip_prefix("starling listening on ")
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("unexpected first line: {line}"))
        .to_owned();
    (child, addr)
}
