//! `starling-bench`: a load generator for a Starling broker, to run against
//! your own deployment (like `nats bench`).
//!
//! The subscriber connections are all read by one epoll loop on one OS
//! thread, the publishers run on another, and the main thread steers the
//! phases and samples the broker's /proc entries; `soak` runs its crowd as
//! tokio tasks instead. See `bench/README.md`.

mod cli;
mod frame;
mod handover;
mod procfs;
mod publisher;
mod reader;
mod report;
mod scan;
mod scenarios;
mod soak;
mod socket;
mod stats;
mod subscribers;
mod tls;
mod wire;
mod ws;

use clap::Parser;

fn main() -> anyhow::Result<()> {
    let cli = cli::Cli::parse();
    let json = match &cli.scenario {
        cli::Scenario::Fanout(a) => a.common.json,
        cli::Scenario::Saturate(a) => a.common.json,
        cli::Scenario::Topics(a) => a.common.json,
        cli::Scenario::Idle(a) => a.common.json,
        cli::Scenario::Soak(a) => a.common.json,
    };
    let (table, summary) = match &cli.scenario {
        cli::Scenario::Soak(a) => {
            let summary = soak::run(a)?;
            (summary.table(), summary.json())
        }
        other => {
            let summary = scenarios::run(other)?;
            (summary.table(), summary.json())
        }
    };
    print!("{table}");
    if json {
        println!("{summary}");
    }
    Ok(())
}
