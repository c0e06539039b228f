//! The `starling` binary started as a child process, for tests of the
//! binary itself (signals, resource limits).

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::time::timeout;

/// How long tests of the binary wait for it: a process that starts, shuts
/// down or answers takes longer than a broker in the test's own process.
pub const BINARY_WAIT: Duration = Duration::from_secs(10);

/// Starts the `starling` binary at `binary` (in the broker's own tests,
/// `env!("CARGO_BIN_EXE_starling")`) through `sh -c`, with `prefix` run
/// first in the same shell (for example `ulimit -n 64 &&`), listening on an
/// ephemeral port with `args` added. Returns the process (killed when
/// dropped) and the address it printed.
pub async fn start_binary(binary: &str, prefix: &str, args: &str) -> (Child, String) {
    // The path is the script's `$0`: no quoting needed, whatever it holds.
    let script = format!("{prefix} exec \"$0\" --listen 127.0.0.1:0 {args}");
    let mut child = Command::new("sh")
        .args(["-c", &script, binary])
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start the starling binary");
    let mut lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
    let line = timeout(BINARY_WAIT, lines.next_line())
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

/// The resident memory of process `pid`, in bytes (Linux: `VmRSS` in
/// `/proc/PID/status`).
pub fn resident_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("reading /proc/{pid}/status: {e}"));
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().strip_suffix("kB"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in /proc/{pid}/status"));
    kib * 1024
}
