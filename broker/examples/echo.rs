//! A WebSocket echo server on the broker's own code, for conformance tests
//! of its framing (the Autobahn TestSuite; `.ci/autobahn`,
//! docs/conformance.md).
//!
//! ```text
//! cargo run --release -p starling-broker --example echo -- --listen 127.0.0.1:9001
//! ```
//!
//! Clients connect to `ws://ADDR/ws`. Every text or binary message comes
//! back as it came (same opcode, same payload; a fragmented message whole),
//! pings get pongs, and the close handshake and every violation of RFC 6455
//! are the broker's: the upgrade goes through its listener and handshake,
//! the frames through `starling_protocol::framing::FrameReader` and the
//! broker's connection loop, whose session sends messages back instead of
//! reading them as envelopes (`starling_broker::internals::echo_broker`).
//!
//! Messages may be up to 64 MiB (the broker closes with 1009 over twice
//! that); the broker's own pings and idle timeout are off and its write
//! timeout is a day, so that a slow peer gets its echoes late but whole.
//! Prints
//! `echo listening on ws://ADDR/ws` once it listens (`--listen` with port 0
//! picks a free port); stops on SIGINT or SIGTERM. Logs go to stderr, at
//! `warn` unless `RUST_LOG` says otherwise.

use std::net::SocketAddr;

use starling_broker::Config;
use tracing_subscriber::EnvFilter;

/// The largest message echoed: Autobahn's section 9 sends up to 16 MiB.
const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let listen = parse_args(std::env::args().skip(1))?;
    let config = Config {
        listen,
        max_message_bytes: MAX_MESSAGE_BYTES,
        ping_interval_ms: 0,
        idle_timeout_ms: 0,
        // The outbound bound only pauses reading while echoes wait; with a
        // write timeout of a day, a peer slow to read is not closed for it.
        write_timeout_ms: 24 * 3600 * 1000,
        ..Config::default()
    };
    config.runtime()?.block_on(run(config))
}

/// `--listen ADDR` (default `127.0.0.1:9001`).
fn parse_args(mut args: impl Iterator<Item = String>) -> Result<SocketAddr, String> {
    let mut listen = SocketAddr::from(([127, 0, 0, 1], 9001));
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--listen" => {
                let value = args.next().ok_or("--listen needs an address")?;
                listen = value
                    .parse()
                    .map_err(|error| format!("--listen {value}: {error}"))?;
            }
            "-h" | "--help" => {
                println!("usage: echo [--listen ADDR]   (default 127.0.0.1:9001)");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?}; try --help")),
        }
    }
    Ok(listen)
}

async fn run(config: Config) -> Result<(), Box<dyn std::error::Error>> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let listener = starling_broker::bind(config.listen, config.listen_backlog)?;
    let addr = listener.local_addr()?;
    let broker = starling_broker::internals::echo_broker(config)?;
    println!("echo listening on ws://{addr}/ws");
    starling_broker::serve(listener, broker, starling_broker::shutdown_signal()).await?;
    Ok(())
}
