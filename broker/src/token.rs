//! `starling token`: a signed token for development, so that the demo page
//! or a test client can talk to a broker that runs with auth on. In
//! production your backend issues tokens; this signs the same [`Claims`]
//! the broker reads, with the same keys it is given.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Args;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use starling_protocol::Filter;

use crate::auth::{Claims, MAX_SUB_BYTES, PermissionsClaim};
use crate::config::Secret;

/// The arguments of `starling token`: the claims, the lifetime and the key.
#[derive(Debug, Clone, Args)]
pub struct TokenArgs {
    /// The token's `sub`: the client's identity (1 to 1024 bytes), which
    /// the broker puts in `from` on the client's messages.
    #[arg(long, value_name = "ID", value_parser = parse_sub)]
    pub sub: String,

    /// A topic filter the client may subscribe to: `chat.>`, `chat.*`,
    /// `$sys.stats` (repeat the flag for more). None: no subscriptions.
    #[arg(long = "subscribe", value_name = "FILTER", value_parser = parse_filter)]
    pub subscribe: Vec<String>,

    /// A topic filter the client may publish to: `chat.>`, `chat.lobby`
    /// (repeat the flag for more). None: no publishing.
    #[arg(long = "publish", value_name = "FILTER", value_parser = parse_filter)]
    pub publish: Vec<String>,

    /// How long the token is valid (its `exp`): seconds, such as `3600`, or
    /// a number with the unit `s`, `m`, `h` or `d`, such as `90m` or `7d`.
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = parse_ttl)]
    pub ttl: Duration,

    /// Signs with HS256 and this secret: the broker's `--jwt-secret`.
    #[arg(
        long,
        env = "STARLING_JWT_SECRET",
        hide_env_values = true,
        value_name = "SECRET"
    )]
    pub jwt_secret: Option<Secret>,

    /// Signs with RS256 or ES256 and this PEM private key (RSA, or EC
    /// P-256), whose public key the broker has (`--jwt-public-key`).
    #[arg(long, env = "STARLING_JWT_PRIVATE_KEY", value_name = "PEM_FILE")]
    pub jwt_private_key: Option<PathBuf>,
}

/// Why no token could be made.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// Neither a secret nor a private key was given.
    #[error(
        "no key to sign with: give --jwt-secret SECRET (or STARLING_JWT_SECRET) for HS256, \
         or --jwt-private-key PEM_FILE for RS256/ES256"
    )]
    NoKey,
    /// Both a secret and a private key were given.
    #[error(
        "two keys to sign with: --jwt-secret (or STARLING_JWT_SECRET) and --jwt-private-key \
         are both given; a token is signed with one of them"
    )]
    TwoKeys,
    /// The secret is empty.
    #[error("the JWT secret is empty")]
    EmptySecret,
    /// The private key file cannot be read.
    #[error("cannot read the JWT private key {path}: {source}")]
    KeyFile {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The private key is neither an RSA nor an EC private key in PEM.
    #[error("the JWT private key {0} is not an RSA or EC (P-256) private key in PEM")]
    KeyKind(String),
    /// `exp` would not fit in a token.
    #[error("a lifetime of {0:?} ends too far in the future")]
    TtlTooLong(Duration),
    /// The signing itself failed (for example an EC key of another curve
    /// than P-256).
    #[error("cannot sign the token: {0}")]
    Sign(#[source] jsonwebtoken::errors::Error),
}

impl TokenError {
    /// Whether the command line was wrong (no key, two keys), rather than
    /// the key given.
    pub fn is_usage(&self) -> bool {
        matches!(self, TokenError::NoKey | TokenError::TwoKeys)
    }
}

impl TokenArgs {
    /// The token's claims at `now`: `sub`, `iat` (`now`), `exp` (`now` plus
    /// `--ttl`) and `permissions`.
    pub fn claims(&self, now: SystemTime) -> Result<Claims, TokenError> {
        let now = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        let exp = now
            .checked_add(self.ttl.as_secs())
            .ok_or(TokenError::TtlTooLong(self.ttl))?;
        Ok(Claims {
            sub: Some(self.sub.clone()),
            exp: Some(exp),
            iat: Some(now),
            permissions: Some(PermissionsClaim {
                publish: self.publish.clone(),
                subscribe: self.subscribe.clone(),
            }),
        })
    }

    /// The signed token (a JWT), valid from now for `--ttl`.
    pub fn sign(&self) -> Result<String, TokenError> {
        let (key, algorithm) = self.key()?;
        let claims = self.claims(SystemTime::now())?;
        jsonwebtoken::encode(&Header::new(algorithm), &claims, &key).map_err(TokenError::Sign)
    }

    /// The key and the algorithm it signs with: HS256 for a secret, RS256
    /// or ES256 as the private key's kind says.
    fn key(&self) -> Result<(EncodingKey, Algorithm), TokenError> {
        match (&self.jwt_secret, &self.jwt_private_key) {
            (None, None) => Err(TokenError::NoKey),
            (Some(_), Some(_)) => Err(TokenError::TwoKeys),
            (Some(secret), None) => {
                let key = EncodingKey::from_secret(secret.expose().as_bytes())
                    .map_err(|_| TokenError::EmptySecret)?;
                Ok((key, Algorithm::HS256))
            }
            (None, Some(path)) => {
                let shown = path.display().to_string();
                let pem = std::fs::read(path).map_err(|source| TokenError::KeyFile {
                    path: shown.clone(),
                    source,
                })?;
                if let Ok(key) = EncodingKey::from_rsa_pem(&pem) {
                    Ok((key, Algorithm::RS256))
                } else if let Ok(key) = EncodingKey::from_ec_pem(&pem) {
                    Ok((key, Algorithm::ES256))
                } else {
                    Err(TokenError::KeyKind(shown))
                }
            }
        }
    }
}

/// A `sub` the broker accepts: not empty, at most 1 KiB.
fn parse_sub(sub: &str) -> Result<String, String> {
    if sub.is_empty() {
        return Err("the subject is empty".into());
    }
    if sub.len() > MAX_SUB_BYTES {
        return Err(format!("the subject is over {MAX_SUB_BYTES} bytes"));
    }
    Ok(sub.to_owned())
}

/// A topic filter, checked as the broker checks the `permissions` claim.
fn parse_filter(filter: &str) -> Result<String, String> {
    Filter::new(filter)
        .map(|_| filter.to_owned())
        .map_err(|error| error.to_string())
}

/// `3600`, `3600s`, `90m`, `1h`, `7d`: a positive number of seconds.
fn parse_ttl(ttl: &str) -> Result<Duration, String> {
    let ttl = ttl.trim();
    let digits = ttl.find(|c: char| !c.is_ascii_digit()).unwrap_or(ttl.len());
    let (number, unit) = ttl.split_at(digits);
    let unit_secs: u64 = match unit.trim() {
        "" | "s" => 1,
        "m" => 60,
        "h" => 60 * 60,
        "d" => 24 * 60 * 60,
        other => {
            return Err(format!(
                "unknown unit {other:?}: give seconds (3600) or a number with s, m, h or d (90m, 1h)"
            ));
        }
    };
    let number: u64 = number.parse().map_err(|_| {
        format!("expected a number of seconds or a number with a unit (1h), got {ttl:?}")
    })?;
    let secs = number
        .checked_mul(unit_secs)
        .ok_or_else(|| format!("{ttl:?} is too long"))?;
    if secs == 0 {
        return Err("the lifetime must be at least one second".into());
    }
    Ok(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{Auth, Verifier};
    use crate::config::Config;
    use clap::Parser;
    use starling_protocol::Topic;

    /// `starling token ARGS`, parsed as the binary parses it.
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: TokenArgs,
    }

    fn args(argv: &[&str]) -> Result<TokenArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("token").chain(argv.iter().copied())).map(|c| c.args)
    }

    #[test]
    fn lifetimes_are_seconds_or_a_number_with_a_unit() {
        let secs = |s: &str| parse_ttl(s).map(|d| d.as_secs());
        assert_eq!(secs("3600"), Ok(3600));
        assert_eq!(secs("45s"), Ok(45));
        assert_eq!(secs("90m"), Ok(5400));
        assert_eq!(secs("1h"), Ok(3600));
        assert_eq!(secs("7d"), Ok(7 * 86_400));
        for bad in [
            "",
            "0",
            "0h",
            "h",
            "1.5h",
            "-1",
            "1w",
            "1 hour",
            "99999999999999999999d",
        ] {
            assert!(parse_ttl(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn claims_are_the_documented_json() {
        let args = args(&[
            "--jwt-secret",
            "s",
            "--sub",
            "alice",
            "--subscribe",
            "chat.>",
            "--subscribe",
            "$sys.stats",
            "--publish",
            "chat.>",
            "--ttl",
            "90m",
        ])
        .unwrap();
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let claims = args.claims(now).unwrap();
        let json = serde_json::to_string(&claims).unwrap();
        assert_eq!(
            json,
            r#"{"sub":"alice","exp":1700005400,"iat":1700000000,"permissions":{"publish":["chat.>"],"subscribe":["chat.>","$sys.stats"]}}"#
        );
        // The default lifetime is an hour; no flags, no permissions.
        let bare = args_with_secret(&["--sub", "bob"]).claims(now).unwrap();
        assert_eq!(bare.exp, Some(1_700_003_600));
        assert_eq!(bare.permissions, Some(PermissionsClaim::default()));
    }

    fn args_with_secret(argv: &[&str]) -> TokenArgs {
        let mut all = vec!["--jwt-secret", "s"];
        all.extend_from_slice(argv);
        args(&all).unwrap()
    }

    #[test]
    fn the_broker_accepts_what_it_signs() {
        let args = args_with_secret(&[
            "--sub",
            "alice",
            "--publish",
            "chat.>",
            "--subscribe",
            "chat.*",
        ]);
        let token = args.sign().unwrap();
        let mut config = Config::ephemeral();
        config.jwt_secret = Some("s".into());
        let verifier = Verifier::from_config(&config).unwrap().unwrap();
        let identity = verifier.verify(&token).unwrap();
        assert_eq!(&*identity.sub, "alice");
        assert!(identity.expires_at.is_some());
        assert!(
            identity
                .permissions
                .may_publish(&Topic::new("chat.x.y").unwrap())
        );
        assert!(
            !identity
                .permissions
                .may_publish(&Topic::new("other.x").unwrap())
        );
        assert!(
            identity
                .permissions
                .may_subscribe(&Filter::new("chat.x").unwrap())
        );
        assert!(
            !identity
                .permissions
                .may_subscribe(&Filter::new("chat.>").unwrap())
        );
        // Another secret: refused.
        config.jwt_secret = Some("another".into());
        let other = Verifier::from_config(&config).unwrap();
        assert!(
            Auth::check(other.as_ref(), Some(&format!("token={token}")), None)
                .identity()
                .is_none()
        );
    }

    #[test]
    fn bad_arguments_are_refused_with_the_reason() {
        let error = |argv: &[&str]| args(argv).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(error(&["--jwt-secret", "s"]).contains("--sub"));
        assert!(error(&["--jwt-secret", "s", "--sub", ""]).contains("the subject is empty"));
        let long = "a".repeat(MAX_SUB_BYTES + 1);
        assert!(error(&["--jwt-secret", "s", "--sub", &long]).contains("over 1024 bytes"));
        assert!(
            error(&["--jwt-secret", "s", "--sub", "a", "--subscribe", "chat..x"])
                .contains("--subscribe")
        );
        assert!(
            error(&["--jwt-secret", "s", "--sub", "a", "--publish", "a.>.b"]).contains("--publish")
        );
        assert!(
            error(&["--jwt-secret", "s", "--sub", "a", "--ttl", "1w"]).contains("unknown unit")
        );
    }

    #[test]
    fn exactly_one_key_is_needed() {
        let mut args = args_with_secret(&["--sub", "alice"]);
        args.jwt_secret = None;
        assert!(matches!(args.sign(), Err(TokenError::NoKey)));
        args.jwt_secret = Some("s".into());
        args.jwt_private_key = Some("key.pem".into());
        let error = args.sign().unwrap_err();
        assert!(
            matches!(error, TokenError::TwoKeys) && error.is_usage(),
            "{error}"
        );
        args.jwt_private_key = None;
        args.jwt_secret = Some("".into());
        assert!(matches!(args.sign(), Err(TokenError::EmptySecret)));
        args.jwt_secret = None;
        args.jwt_private_key = Some("/nonexistent/key.pem".into());
        let error = args.sign().unwrap_err();
        assert!(
            matches!(error, TokenError::KeyFile { .. }) && !error.is_usage(),
            "{error}"
        );
    }
}
