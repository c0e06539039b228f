//! Runs this crate's `starling` binary through the shared fixture.

use tokio::process::Child;

/// Starts the binary through `sh -c`, with `prefix` run first in the same
/// shell (for example `ulimit -n 64 &&`), listening on an ephemeral port.
/// Returns the process and the address it printed.
pub(crate) async fn start(prefix: &str, args: &str) -> (Child, String) {
    starling_tests::start_binary(env!("CARGO_BIN_EXE_starling"), prefix, args).await
}

/// Runs `starling ARGS` to its end, with `env` set and none of the
/// caller's `STARLING_*` variables.
#[allow(dead_code, reason = "not every test binary runs the binary to its end")]
pub(crate) async fn run(args: &[&std::ffi::OsStr], env: &[(&str, &str)]) -> std::process::Output {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_starling"));
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("STARLING_") {
            command.env_remove(name);
        }
    }
    command
        .args(args)
        .envs(env.iter().copied())
        .kill_on_drop(true);
    tokio::time::timeout(starling_tests::BINARY_WAIT, command.output())
        .await
        .expect("starling exits in time")
        .expect("starling runs")
}
