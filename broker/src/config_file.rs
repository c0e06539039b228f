//! `--config starling.toml`: every setting of the command line in a TOML
//! file, under the flag's own name (`max-message-bytes = 65536`,
//! `presence = ["chat."]`; `max_message_bytes` is the same key).
//!
//! Precedence: a flag, then its environment variable, then the file, then
//! the default. The file's settings are given to the same parser as the
//! flags, so they are checked alike; a key that names no setting is an
//! error that names it and its line.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{ArgMatches, Command as ClapCommand, CommandFactory, FromArgMatches};
use toml_edit::{Document, Item, Value};

use crate::cli::Cli;
use crate::config::Config;

/// Why a configuration file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    /// The file cannot be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not TOML.
    #[error("{path}: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The parser's message, with the line.
        message: String,
    },
    /// A key is not a setting, or its value cannot be one.
    #[error("{path}:{line}: {message}")]
    Key {
        /// The file.
        path: PathBuf,
        /// The key's line, from 1.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// A value is refused by the setting it is for.
    #[error("{path}: {message}")]
    Value {
        /// The file.
        path: PathBuf,
        /// The command line parser's message.
        message: String,
    },
}

/// The settings a file gives: `--name=value` arguments, in file order.
fn file_arguments(
    path: &Path,
    text: &str,
    command: &ClapCommand,
) -> Result<Vec<(String, Vec<OsString>)>, ConfigFileError> {
    let document = Document::parse(text).map_err(|e| ConfigFileError::Syntax {
        path: path.to_owned(),
        message: e.to_string().trim_end().to_owned(),
    })?;
    let line_of = |span: Option<std::ops::Range<usize>>| {
        span.map_or(0, |s| text[..s.start].matches('\n').count() + 1)
    };
    let mut settings = Vec::new();
    for (name, item) in document.as_table().iter() {
        let key = document
            .as_table()
            .key(name)
            .expect("iterated keys are there");
        let fail = |message: String| ConfigFileError::Key {
            path: path.to_owned(),
            line: line_of(key.span()),
            message,
        };
        let flag = name.replace('_', "-");
        let Some(arg) = command
            .get_arguments()
            .find(|arg| arg.get_long() == Some(flag.as_str()) && flag != "config")
        else {
            return Err(fail(format!("unknown key `{name}`: no such setting")));
        };
        let takes_values = arg.get_action().takes_values();
        let values: Vec<&Value> = match item {
            Item::Value(Value::Array(array)) => array.iter().collect(),
            Item::Value(value) => vec![value],
            _ => return Err(fail(format!("`{name}` must be a value, not a table"))),
        };
        let mut arguments = Vec::new();
        for value in values {
            let text = match value {
                Value::String(s) => s.value().clone(),
                Value::Integer(n) => n.value().to_string(),
                Value::Float(f) => f.value().to_string(),
                Value::Boolean(b) if !takes_values => {
                    if *b.value() {
                        arguments.push(OsString::from(format!("--{flag}")));
                    }
                    continue;
                }
                Value::Boolean(b) => b.value().to_string(),
                _ => {
                    return Err(fail(format!(
                        "`{name}` must be a string, a number or a boolean"
                    )));
                }
            };
            if !takes_values {
                return Err(fail(format!("`{name}` is a switch: true or false")));
            }
            arguments.push(OsString::from(format!("--{flag}={text}")));
        }
        settings.push((arg.get_id().to_string(), arguments));
    }
    Ok(settings)
}

/// Parses the command line `args`, with the settings of `--config FILE`
/// (or `STARLING_CONFIG`) under the flags and environment variables.
pub(crate) fn parse_from<I, T>(args: I) -> Result<Cli, ParseError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    let command = Cli::command();
    let matches = command.clone().try_get_matches_from(&args)?;
    let Some(path) = matches.get_one::<PathBuf>("config_file").cloned() else {
        return Ok(Cli::from_arg_matches(&matches)?);
    };
    let (cli, _) = with_file(&command, &args, &matches, &path)?;
    Ok(cli)
}

/// The command line `args` with the settings of `path` added where neither
/// a flag nor an environment variable gave one; and the matches of the
/// whole.
fn with_file(
    command: &ClapCommand,
    args: &[OsString],
    matches: &ArgMatches,
    path: &Path,
) -> Result<(Cli, ArgMatches), ParseError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigFileError::Read {
        path: path.to_owned(),
        source,
    })?;
    let settings = file_arguments(path, &text, command)?;
    let mut all = args.to_vec();
    for (id, arguments) in settings {
        let given = matches!(
            matches.value_source(&id),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        );
        if !given {
            all.extend(arguments);
        }
    }
    let matches =
        command
            .clone()
            .try_get_matches_from(&all)
            .map_err(|e| ConfigFileError::Value {
                path: path.to_owned(),
                message: e.kind().as_str().map_or_else(
                    || e.to_string(),
                    |kind| format!("{kind}: {}", first_line(&e.to_string())),
                ),
            })?;
    let cli = Cli::from_arg_matches(&matches)?;
    Ok((cli, matches))
}

fn first_line(text: &str) -> &str {
    text.lines()
        .next()
        .unwrap_or_default()
        .trim_start_matches("error: ")
}

/// Reads `path` as `starling config check` does: the settings it gives,
/// under the environment, as the broker would run with them. Returns the
/// effective configuration as TOML, each setting with where it came from;
/// secrets are not shown.
pub(crate) fn check(path: &Path) -> Result<(Cli, String), ParseError> {
    let command = Cli::command();
    let args = [OsString::from("starling")];
    let matches = command.clone().try_get_matches_from(args.clone())?;
    let (cli, matches) = with_file(&command, &args, &matches, path)?;
    let mut out = String::new();
    for arg in command.get_arguments() {
        let (Some(long), id) = (arg.get_long(), arg.get_id().as_str()) else {
            continue;
        };
        if matches!(long, "config" | "help" | "version") {
            continue;
        }
        let source = match matches.value_source(id) {
            Some(ValueSource::CommandLine) => "file",
            Some(ValueSource::EnvVariable) => "environment",
            Some(ValueSource::DefaultValue) => "default",
            _ => "unset",
        };
        let raw: Vec<String> = matches
            .get_raw(id)
            .map(|values| values.map(|v| v.to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        let secret = matches!(long, "jwt-secret" | "api-key");
        let value = if raw.is_empty() {
            if arg.get_action().takes_values() {
                let _ = writeln!(out, "# {long} is not set");
                continue;
            }
            "false".to_owned()
        } else if secret {
            "\"(hidden)\"".to_owned()
        } else if arg.get_num_args().is_some_and(|n| n.max_values() > 1)
            || matches!(arg.get_action(), clap::ArgAction::Append)
        {
            let items: Vec<String> = raw.iter().map(|v| toml_value(v)).collect();
            format!("[{}]", items.join(", "))
        } else {
            toml_value(&raw[raw.len() - 1])
        };
        let _ = writeln!(out, "{long} = {value}  # {source}");
    }
    Ok((cli, out))
}

/// A command line value written as TOML: numbers and booleans bare,
/// anything else a string.
fn toml_value(raw: &str) -> String {
    let bare = raw.parse::<i64>().is_ok()
        || raw.parse::<f64>().is_ok_and(f64::is_finite)
        || raw == "true"
        || raw == "false";
    if bare {
        raw.to_owned()
    } else {
        Value::from(raw).to_string().trim().to_owned()
    }
}

impl Cli {
    /// Parses the process's command line, with the settings of `--config`.
    pub fn load() -> Result<Cli, ParseError> {
        parse_from(std::env::args_os())
    }

    /// Parses `args` (the program's name first), with the settings of
    /// `--config`.
    pub fn load_from<I, T>(args: I) -> Result<Cli, ParseError>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        parse_from(args)
    }

    /// `starling config check FILE`: the configuration `file` gives, and
    /// its effective settings as TOML.
    pub fn check_file(file: &Path) -> Result<(Config, String), ParseError> {
        check(file).map(|(cli, text)| (cli.config, text))
    }
}

/// Why the command line (with its file) cannot be parsed.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    /// The command line itself (or `--help`, `--version`).
    #[error(transparent)]
    Cli(#[from] clap::Error),
    /// The configuration file.
    #[error(transparent)]
    File(#[from] ConfigFileError),
}

impl ParseError {
    /// Prints the error (or the help) and exits as clap does: 0 for help
    /// and version, 2 otherwise.
    pub fn exit(self) -> ! {
        match self {
            ParseError::Cli(error) => error.exit(),
            ParseError::File(error) => {
                eprintln!("error: {error}");
                std::process::exit(2)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file with `text` in the system's temporary directory, removed
    /// when dropped.
    struct TempFile(PathBuf);

    impl TempFile {
        fn new(name: &str, text: &str) -> Self {
            let path = std::env::temp_dir().join(format!("starling-{}-{name}", std::process::id()));
            std::fs::write(&path, text).unwrap();
            TempFile(path)
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn load(file: &TempFile, flags: &[&str]) -> Result<Cli, ParseError> {
        let mut args = vec!["starling", "--config", file.0.to_str().unwrap()];
        args.extend_from_slice(flags);
        parse_from(args)
    }

    #[test]
    fn the_file_gives_settings_under_their_flag_names_and_flags_win() {
        let file = TempFile::new(
            "settings.toml",
            r#"
# A deployment's settings.
listen = "0.0.0.0:9000"
max-message-bytes = 65536
max_subscriptions = 10
presence = ["chat.", "room."]
redis-url = "redis://127.0.0.1:6379"
redis-sharded = true
history-prefix = ["chat.=100"]
"#,
        );
        let config = load(&file, &[]).unwrap().config;
        assert_eq!(config.listen.port(), 9000);
        assert_eq!(config.max_message_bytes, 65536);
        assert_eq!(config.max_subscriptions, 10);
        assert_eq!(config.presence_prefixes, ["chat.", "room."]);
        assert!(config.redis_sharded);
        assert_eq!(config.history_prefixes, vec![("chat.".to_owned(), 100)]);
        // A flag overrides the file, a list included; the rest stays.
        let config = load(&file, &["--max-message-bytes", "1000", "--presence", "x."])
            .unwrap()
            .config;
        assert_eq!(config.max_message_bytes, 1000);
        assert_eq!(config.presence_prefixes, ["x."]);
        assert_eq!(config.max_subscriptions, 10);
        // What the file leaves out keeps its default.
        assert_eq!(config.max_patterns, Config::default().max_patterns);
    }

    #[test]
    fn unknown_keys_and_wrong_values_are_errors_naming_the_key_and_line() {
        let file = TempFile::new(
            "unknown.toml",
            "listen = \"127.0.0.1:0\"\n\nmax-mesage-bytes = 5\n",
        );
        let error = load(&file, &[]).unwrap_err().to_string();
        assert!(
            error.ends_with(":3: unknown key `max-mesage-bytes`: no such setting"),
            "{error}"
        );

        let file = TempFile::new("table.toml", "[presence]\nprefix = \"chat.\"\n");
        let error = load(&file, &[]).unwrap_err().to_string();
        assert!(
            error.contains(":1: `presence` must be a value, not a table"),
            "{error}"
        );

        let file = TempFile::new("value.toml", "max-message-bytes = \"lots\"\n");
        let error = load(&file, &[]).unwrap_err().to_string();
        assert!(
            error.contains("lots") && error.contains("max-message-bytes"),
            "{error}"
        );

        let file = TempFile::new("syntax.toml", "listen = \n");
        let error = load(&file, &[]).unwrap_err().to_string();
        assert!(error.contains("line 1"), "{error}");

        let missing = parse_from(["starling", "--config", "/nonexistent/starling.toml"]);
        assert!(
            missing
                .unwrap_err()
                .to_string()
                .contains("/nonexistent/starling.toml")
        );
    }

    #[test]
    fn check_prints_the_effective_configuration_without_secrets() {
        let file = TempFile::new(
            "check.toml",
            "jwt-secret = \"hunter2\"\npresence = [\"chat.\"]\nmax-connections = 500\n",
        );
        let (cli, text) = check(&file.0).unwrap();
        assert_eq!(cli.config.max_connections, 500);
        assert!(text.contains("max-connections = 500  # file\n"), "{text}");
        assert!(text.contains("presence = [\"chat.\"]  # file\n"), "{text}");
        assert!(
            text.contains("jwt-secret = \"(hidden)\"  # file\n"),
            "{text}"
        );
        assert!(!text.contains("hunter2"));
        assert!(
            text.contains("listen = \"127.0.0.1:7070\"  # default\n"),
            "{text}"
        );
        assert!(text.contains("# redis-url is not set\n"), "{text}");
    }
}
