//! Publishes this machine's live metrics every second, for a dashboard.
//!
//! ```text
//! cargo run -p starling-client --example ticker -- --url ws://127.0.0.1:7070/ws
//! ```
//!
//! Each message goes to `metrics.<host>` (override with `--topic`) as
//! `{"host": ..., "cpu": <1-minute load average>, "mem_used_mb": ..., "ts": <unix ms>}`,
//! read from `/proc/loadavg` and `/proc/meminfo` (fields are `null` where
//! those do not exist). Subscribe to `metrics.>` to watch every host.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use clap::Parser;
use serde::Serialize;
use starling_client::{ConnectOptions, Event};

#[derive(Parser)]
#[command(about = "Publish live host metrics to a Starling broker")]
struct Args {
    /// The broker's WebSocket URL.
    #[arg(long, env = "STARLING_URL", default_value = "ws://127.0.0.1:7070/ws")]
    url: String,
    /// The topic (default: `metrics.<host>`).
    #[arg(long)]
    topic: Option<String>,
    /// Milliseconds between two samples.
    #[arg(long, default_value_t = 1000)]
    interval_ms: u64,
    /// Stop after this many samples (default: run until Ctrl-C).
    #[arg(long)]
    count: Option<u64>,
}

#[derive(Serialize)]
struct Sample {
    host: String,
    cpu: Option<f64>,
    mem_used_mb: Option<u64>,
    ts: u64,
}

/// The host name, made into a valid topic token.
fn host_name() -> String {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .unwrap_or_else(|_| "localhost".into());
    let token: String = raw
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    if token.is_empty() {
        "localhost".into()
    } else {
        token
    }
}

/// The 1-minute load average.
fn load_average() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    text.split_whitespace().next()?.parse().ok()
}

/// Memory in use (total minus available), in MiB.
fn memory_used_mb() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = text.lines().find(|l| l.starts_with(name))?;
        line.split_whitespace().nth(1)?.parse().ok()
    };
    let total_kb = field("MemTotal:")?;
    let available_kb = field("MemAvailable:")?;
    Some(total_kb.saturating_sub(available_kb) / 1024)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let host = host_name();
    let topic = args.topic.unwrap_or_else(|| format!("metrics.{host}"));
    let client = ConnectOptions::new()
        .name(format!("ticker-{host}"))
        .connect(&args.url)
        .await
        .with_context(|| format!("connecting to {}", args.url))?;
    let mut events = client.events();
    tokio::spawn(async move {
        while let Some(event) = events.recv().await {
            if matches!(
                event,
                Event::Disconnected { .. } | Event::Reconnected | Event::ServerError { .. }
            ) {
                eprintln!("* {event:?}");
            }
        }
    });
    eprintln!("publishing to {topic} every {} ms", args.interval_ms);

    let mut tick = tokio::time::interval(Duration::from_millis(args.interval_ms.max(1)));
    let mut sent = 0u64;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = tokio::signal::ctrl_c() => break,
        }
        let sample = Sample {
            host: host.clone(),
            cpu: load_average(),
            mem_used_mb: memory_used_mb(),
            ts: now_ms(),
        };
        // Fire-and-forget: while the broker is away, samples wait in the
        // client's queue and go out after the reconnect.
        client.publish(&topic, &sample).await?;
        println!(
            "{topic}: cpu {:?} mem_used_mb {:?}",
            sample.cpu, sample.mem_used_mb
        );
        sent += 1;
        if args.count.is_some_and(|n| sent >= n) {
            break;
        }
    }
    client.close().await?;
    Ok(())
}
