//! Measures publish throughput to one subscriber: N messages from one client
//! to a subscriber on another client (another WebSocket), end to end.
//!
//! ```text
//! cargo run --release -p starling-client --example throughput              # in-process broker
//! cargo run --release -p starling-client --example throughput -- --url ws://127.0.0.1:7070/ws
//! ```
//!
//! The publisher keeps at most `--window` messages in flight (published, not
//! yet received), below the broker's default per-subscriber buffer of 1024,
//! so the figure is a sustained rate with nothing dropped.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use anyhow::{Context as _, bail};
use clap::{Parser, ValueEnum};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use starling_client::{Codec, ConnectOptions, Event};
use tokio::sync::Notify;

#[derive(Clone, Copy, ValueEnum)]
enum CodecArg {
    Json,
    Msgpack,
}

#[derive(Parser)]
#[command(about = "Publish throughput to one subscriber over loopback")]
struct Args {
    /// A broker to use; by default one is started in this process.
    #[arg(long)]
    url: Option<String>,
    /// How many messages.
    #[arg(long, default_value_t = 200_000)]
    messages: u64,
    /// Bytes of filler text in each payload.
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Messages in flight at most (published and not yet received).
    #[arg(long, default_value_t = 1000)]
    window: u64,
    /// The codec of both clients.
    #[arg(long, value_enum, default_value_t = CodecArg::Json)]
    codec: CodecArg,
}

#[derive(Serialize, Deserialize)]
struct Tick {
    seq: u64,
    data: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let codec = match args.codec {
        CodecArg::Json => Codec::Json,
        CodecArg::Msgpack => Codec::MsgPack,
    };
    let (url, broker) = match args.url {
        Some(url) => (url, None),
        None => {
            let running = starling_broker::start(starling_broker::Config::ephemeral())
                .await
                .context("starting a broker")?;
            (running.ws_url(), Some(running))
        }
    };
    let options = ConnectOptions::new().codec(codec);
    let publisher = options.clone().name("bench-pub").connect(&url).await?;
    let subscriber = options.name("bench-sub").connect(&url).await?;
    let mut sub = subscriber.subscribe("bench.throughput").await?;
    let mut events = subscriber.events();

    let n = args.messages;
    let received = Arc::new(AtomicU64::new(0));
    let progress = Arc::new(Notify::new());
    let receiver = {
        let received = received.clone();
        let progress = progress.clone();
        tokio::spawn(async move {
            let mut expected = 0u64;
            while expected < n {
                let Some(message) = sub.next().await else {
                    break;
                };
                let tick: Tick = message.decode()?;
                if tick.seq != expected {
                    bail!("message {} arrived when {expected} was expected", tick.seq);
                }
                expected += 1;
                received.store(expected, Ordering::Release);
                progress.notify_one();
            }
            Ok(Instant::now())
        })
    };

    let data = "x".repeat(args.size);
    let started = Instant::now();
    for seq in 0..n {
        while seq - received.load(Ordering::Acquire) >= args.window {
            progress.notified().await;
        }
        publisher
            .publish(
                "bench.throughput",
                &Tick {
                    seq,
                    data: data.clone(),
                },
            )
            .await?;
    }
    let published = started.elapsed();
    let finished = receiver.await??;
    let elapsed = finished - started;
    let got = received.load(Ordering::Acquire);
    let mut dropped = 0;
    while let Ok(Some(event)) =
        tokio::time::timeout(std::time::Duration::from_millis(10), events.next()).await
    {
        if let Event::Lagged { missed, .. } = event {
            dropped += missed;
        }
    }
    println!(
        "{got} of {n} messages ({}-byte filler, {:?}) in {:.3} s: {:.0} msgs/s end to end \
         (publishing took {:.3} s); dropped: {dropped}",
        args.size,
        codec,
        elapsed.as_secs_f64(),
        got as f64 / elapsed.as_secs_f64(),
        published.as_secs_f64(),
    );
    publisher.close().await?;
    subscriber.close().await?;
    if let Some(running) = broker {
        running.shutdown().await?;
    }
    Ok(())
}
