//! The `starling` binary: parse the configuration, set up logging, serve;
//! or, as `starling token`, print a signed token.

use clap::Parser;
use starling_broker::{Broker, Cli, Command, Config, LogFormat, TokenArgs};
use tracing_subscriber::EnvFilter;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Token(args)) => token(&args),
        None => {
            let config = cli.config;
            config.runtime()?.block_on(run(config))
        }
    }
}

/// Prints the token on stdout, alone on its line; or the reason there is
/// none on stderr, and exits with 2 (a wrong command line) or 1.
fn token(args: &TokenArgs) -> Result<(), Box<dyn std::error::Error>> {
    match args.sign() {
        Ok(token) => {
            println!("{token}");
            Ok(())
        }
        Err(error) => {
            eprintln!("error: {error}");
            std::process::exit(if error.is_usage() { 2 } else { 1 });
        }
    }
}

async fn run(config: Config) -> Result<(), Box<dyn std::error::Error>> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt().with_env_filter(filter);
    match config.log_format {
        LogFormat::Pretty => logs.init(),
        LogFormat::Json => logs.json().init(),
    }

    let listener = starling_broker::bind(config.listen, config.listen_backlog)?;
    let addr = listener.local_addr()?;
    let broker = Broker::new(config)?;
    // The one line scripts and people look for.
    let (ws, http) = if broker.serves_tls() {
        ("wss", "https")
    } else {
        ("ws", "http")
    };
    println!("starling listening on {addr} ({ws}://{addr}/ws, {http}://{addr}/)");
    starling_broker::serve(listener, broker, starling_broker::shutdown_signal()).await?;
    Ok(())
}
