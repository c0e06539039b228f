//! The `starling` command line: with no subcommand the broker serves with
//! the [`Config`] its flags give; `starling token` prints a signed token.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::Config;
use crate::token::TokenArgs;

/// What the `starling` binary was asked to do.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "starling",
    version,
    about = "Starling: a pub/sub message broker over WebSockets",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    /// The broker's settings, used when there is no subcommand.
    #[command(flatten)]
    pub config: Config,

    /// Read settings from this TOML file, keyed by their flag names
    /// (`max-message-bytes = 65536`, `presence = ["chat."]`). A flag or an
    /// environment variable overrides the file.
    #[arg(long = "config", env = "STARLING_CONFIG", value_name = "FILE")]
    pub config_file: Option<PathBuf>,

    /// A subcommand instead of serving.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// The subcommands of `starling`.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Prints a signed token (a JWT) for a broker with auth on, for
    /// development: your backend issues the tokens of a real deployment.
    ///
    /// For example `starling token --jwt-secret S --sub alice --subscribe 'chat.>'
    /// --subscribe '$sys.stats' --publish 'chat.>'`: the token, and nothing
    /// else, is printed on one line.
    Token(TokenArgs),

    /// Works with configuration files.
    #[command(subcommand)]
    Config(ConfigCommand),
}

/// `starling config ...`.
#[derive(Debug, Clone, Subcommand)]
pub enum ConfigCommand {
    /// Checks a configuration file without starting: prints the effective
    /// configuration (the file under the environment), each setting with
    /// where it came from, or the first error with its line. Exits 0 when
    /// the broker would start with it, 2 otherwise.
    Check {
        /// The TOML file.
        file: PathBuf,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_subcommand_the_flags_are_the_brokers() {
        let cli = Cli::try_parse_from([
            "starling",
            "--listen",
            "0.0.0.0:9000",
            "--jwt-secret",
            "s",
            "--history-prefix",
            "chat.=100",
        ])
        .unwrap();
        assert!(cli.command.is_none());
        assert_eq!(cli.config.listen.port(), 9000);
        assert_eq!(cli.config.jwt_secret, Some("s".into()));
        assert_eq!(cli.config.history_prefixes, vec![("chat.".to_owned(), 100)]);
        let bare = Cli::try_parse_from(["starling"]).unwrap();
        assert_eq!(bare.config.listen, Config::default().listen);
    }

    #[test]
    fn token_is_a_subcommand_of_its_own() {
        let cli = Cli::try_parse_from([
            "starling",
            "token",
            "--jwt-secret",
            "s",
            "--sub",
            "alice",
            "--subscribe",
            "chat.>",
            "--publish",
            "chat.>",
            "--ttl",
            "2h",
        ])
        .unwrap();
        let Some(Command::Token(args)) = cli.command else {
            panic!("expected the token subcommand");
        };
        assert_eq!(args.sub, "alice");
        assert_eq!(args.subscribe, ["chat.>"]);
        assert_eq!(args.publish, ["chat.>"]);
        assert_eq!(args.ttl.as_secs(), 7200);
        // The broker's flags do not go with it, nor it with them.
        let error = Cli::try_parse_from([
            "starling",
            "--listen",
            "0.0.0.0:9000",
            "token",
            "--sub",
            "a",
        ])
        .unwrap_err();
        assert!(error.to_string().contains("token"), "{error}");
        let error = Cli::try_parse_from([
            "starling",
            "token",
            "--sub",
            "a",
            "--listen",
            "0.0.0.0:9000",
        ])
        .unwrap_err();
        assert!(error.to_string().contains("--listen"), "{error}");
    }
}
