//! A terminal chat client: type a line to say it in the room, and see what
//! the others say.
//!
//! ```text
//! cargo run -p starling-broker --bin starling &
//! cargo run -p starling-client --example chat -- --nick ada --room lobby
//! cargo run -p starling-client --example chat -- --nick grace --room lobby
//! ```
//!
//! Every line is published to `chat.<room>` as `{"nick": ..., "text": ...}`,
//! the same shape the browser demo uses. `/quit` or end of input leaves.

use anyhow::Context as _;
use clap::Parser;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use starling_client::{Codec, ConnectOptions, Event};
use tokio::io::AsyncBufReadExt;

#[derive(Parser)]
#[command(about = "Terminal chat over a Starling broker")]
struct Args {
    /// The broker's WebSocket URL.
    #[arg(long, env = "STARLING_URL", default_value = "ws://127.0.0.1:7070/ws")]
    url: String,
    /// Your nickname.
    #[arg(long)]
    nick: String,
    /// The room: messages go to topic `chat.<room>`.
    #[arg(long, default_value = "lobby")]
    room: String,
    /// Speak MessagePack instead of JSON (the others need not).
    #[arg(long)]
    msgpack: bool,
}

#[derive(Serialize, Deserialize)]
struct Chat {
    nick: String,
    text: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let topic = format!("chat.{}", args.room);
    let client = ConnectOptions::new()
        .codec(if args.msgpack {
            Codec::MsgPack
        } else {
            Codec::Json
        })
        .name(format!("chat-{}", args.nick))
        .connect(&args.url)
        .await
        .with_context(|| format!("connecting to {}", args.url))?;
    let mut room = client
        .subscribe(&topic)
        .await
        .with_context(|| format!("joining {topic}"))?;
    eprintln!("* joined {topic} as {} (/quit to leave)", args.nick);

    // Connection state goes to stderr, so that stdout is only the chat.
    let mut events = client.events();
    tokio::spawn(async move {
        while let Some(event) = events.next().await {
            match event {
                Event::Disconnected { reason, .. } => {
                    eprintln!("* connection lost ({reason}); reconnecting...")
                }
                Event::Reconnected => eprintln!("* reconnected"),
                Event::Lagged { missed, .. } => eprintln!("* missed {missed} messages"),
                Event::Closed { reason } => eprintln!("* closed: {reason}"),
                _ => {}
            }
        }
    });

    let me = args.nick.clone();
    let printer = tokio::spawn(async move {
        while let Some(message) = room.next().await {
            match message.decode::<Chat>() {
                Ok(chat) if chat.nick != me => println!("<{}> {}", chat.nick, chat.text),
                Ok(_) => {}
                Err(_) => println!("<?> {}", message.payload().to_json_string()),
            }
        }
    });

    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        let text = line.trim();
        if text == "/quit" {
            break;
        }
        if text.is_empty() {
            continue;
        }
        let chat = Chat {
            nick: args.nick.clone(),
            text: text.to_owned(),
        };
        if let Err(error) = client.publish(&topic, &chat).await {
            eprintln!("* not sent: {error}");
        }
    }
    client.close().await?;
    printer.abort();
    Ok(())
}
