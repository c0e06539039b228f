//! The `starling` binary: parse the configuration, set up logging, serve;
//! or, as `starling token`, print a signed token.

use std::path::Path;

use starling_broker::{Broker, Cli, Command, Config, ConfigCommand, LogFormat, TokenArgs};
use tracing_subscriber::EnvFilter;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cli = Cli::load().unwrap_or_else(|error| error.exit());
    match cli.command {
        Some(Command::Token(args)) => token(&args),
        Some(Command::Config(ConfigCommand::Check { file })) => check(&file),
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

/// Prints the effective configuration of `file`, after checking that the
/// broker would start with it (files it names, keys, rules); exits 2 when
/// it would not.
fn check(file: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let (config, effective) = Cli::check_file(file).unwrap_or_else(|error| error.exit());
    let runtime = tokio::runtime::Builder::new_current_thread().build()?;
    if let Err(error) = runtime.block_on(async { Broker::new(config).map(drop) }) {
        eprintln!("error: {}: {error}", file.display());
        std::process::exit(2);
    }
    print!("{effective}");
    eprintln!("{}: ok", file.display());
    Ok(())
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
