//! Runs this crate's `starling` binary through the shared fixture.

use tokio::process::Child;

/// Starts the binary through `sh -c`, with `prefix` run first in the same
/// shell (for example `ulimit -n 64 &&`), listening on an ephemeral port.
/// Returns the process and the address it printed.
pub(crate) async fn start(prefix: &str, args: &str) -> (Child, String) {
    starling_tests::start_binary(env!("CARGO_BIN_EXE_starling"), prefix, args).await
}
