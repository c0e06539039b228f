//! Authentication: verifying a client's JWT, and what its claims allow.
//!
//! With `--jwt-secret` tokens are HS256; with `--jwt-public-key` they are
//! RS256 or ES256, as the key's kind says. Exactly that algorithm is
//! accepted: `alg: none`, another algorithm of the family, and HMAC signed
//! with the public key as its secret all fail. `exp` is enforced when
//! present and `nbf` when present, both with `--jwt-leeway-s` of leeway.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};
use starling_protocol::{Filter, Topic};

use crate::config::Config;

/// The longest `sub` a token may carry, in bytes.
pub(crate) const MAX_SUB_BYTES: usize = 1024;

/// Why the broker cannot start with the auth settings it was given.
#[derive(Debug, thiserror::Error)]
pub enum AuthConfigError {
    /// The public key file cannot be read.
    #[error("cannot read the JWT public key {path}: {source}")]
    KeyFile {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The public key is neither an RSA nor an EC (P-256) public key in PEM.
    #[error("the JWT public key {0} is not an RSA or EC public key in PEM")]
    KeyKind(String),
    /// The secret is empty.
    #[error("the JWT secret is empty")]
    EmptySecret,
}

/// Why a token was refused. Its text follows `unauthorized: ` in the close
/// reason or the error message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum AuthError {
    /// No token in the `token` query parameter or an `Authorization` header.
    #[error("no token")]
    Missing,
    /// The token is not a JWT, or its claims are not Starling's.
    #[error("malformed token: {0}")]
    Malformed(String),
    /// The signature does not verify with the broker's key, or the token
    /// uses another algorithm.
    #[error("bad signature or algorithm")]
    BadSignature,
    /// `exp` has passed.
    #[error("token expired")]
    Expired,
    /// `nbf` has not come yet.
    #[error("token not yet valid")]
    NotYetValid,
    /// `sub` is missing or empty.
    #[error("token without a subject")]
    NoSubject,
    /// A refresh token names another `sub` than the connection's.
    #[error("the new token is for another subject")]
    OtherSubject,
}

/// Verifies tokens with the broker's key.
pub(crate) struct Verifier {
    key: DecodingKey,
    validation: Validation,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("algorithms", &self.validation.algorithms)
            .finish_non_exhaustive()
    }
}

/// A token's claims, as the broker reads them and `starling token` writes
/// them (docs/protocol.md, "Authentication and permissions"). Claims of
/// other names are ignored; `nbf` is checked while the signature is
/// verified, before these are read.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The client's identity: required and non-empty, at most 1 KiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    /// When the token expires, in seconds since the Unix epoch; enforced
    /// when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<u64>,
    /// When the token was issued, in seconds since the Unix epoch. Written
    /// for the record; the broker does not read it, whatever its form.
    #[serde(default, skip_deserializing, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    /// What the client may do; none: nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permissions: Option<PermissionsClaim>,
}

/// The `permissions` claim: topic filters (`chat.>`, `rooms.*.messages`,
/// `$sys.stats`) a client may publish to and subscribe to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PermissionsClaim {
    /// Topics matched by one of these filters may be published to.
    #[serde(default)]
    pub publish: Vec<String>,
    /// Subscriptions inside one of these filters are allowed.
    #[serde(default)]
    pub subscribe: Vec<String>,
}

impl Verifier {
    /// The verifier the configuration asks for; `None` when auth is off.
    pub(crate) fn from_config(config: &Config) -> Result<Option<Self>, AuthConfigError> {
        let (key, algorithm) = if let Some(secret) = &config.jwt_secret {
            if secret.expose().is_empty() {
                return Err(AuthConfigError::EmptySecret);
            }
            let key = DecodingKey::from_secret(secret.expose().as_bytes())
                .map_err(|_| AuthConfigError::EmptySecret)?;
            (key, Algorithm::HS256)
        } else if let Some(path) = &config.jwt_public_key {
            let shown = path.display().to_string();
            let pem = std::fs::read(path).map_err(|source| AuthConfigError::KeyFile {
                path: shown.clone(),
                source,
            })?;
            if let Ok(key) = DecodingKey::from_rsa_pem(&pem) {
                (key, Algorithm::RS256)
            } else if let Ok(key) = DecodingKey::from_ec_pem(&pem) {
                (key, Algorithm::ES256)
            } else {
                return Err(AuthConfigError::KeyKind(shown));
            }
        } else {
            return Ok(None);
        };
        let mut validation = Validation::new(algorithm);
        validation.leeway = config.jwt_leeway_s;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.validate_aud = false;
        // `exp` is enforced when present, not required; `sub` is checked here.
        validation.required_spec_claims.clear();
        Ok(Some(Verifier { key, validation }))
    }

    /// The algorithm tokens must use.
    pub(crate) fn algorithm(&self) -> Algorithm {
        self.validation.algorithms[0]
    }

    /// Verifies `token` and reads its identity and permissions.
    pub(crate) fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation).map_err(
            |error| match error.kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                ErrorKind::ImmatureSignature => AuthError::NotYetValid,
                ErrorKind::InvalidSignature
                | ErrorKind::InvalidAlgorithm
                | ErrorKind::InvalidAlgorithmName
                | ErrorKind::InvalidKeyFormat => AuthError::BadSignature,
                _ => AuthError::Malformed(error.to_string()),
            },
        )?;
        let claims = data.claims;
        let sub = claims
            .sub
            .filter(|sub| !sub.is_empty())
            .ok_or(AuthError::NoSubject)?;
        // It travels on every message the client publishes.
        if sub.len() > MAX_SUB_BYTES {
            return Err(AuthError::Malformed(format!(
                "sub is over {MAX_SUB_BYTES} bytes"
            )));
        }
        let raw = claims.permissions.unwrap_or_default();
        let filters = |names: Vec<String>| {
            names
                .iter()
                .map(|name| {
                    Filter::new(name).map_err(|error| {
                        AuthError::Malformed(format!("permission filter {name:?}: {error}"))
                    })
                })
                .collect::<Result<Vec<_>, _>>()
        };
        let permissions = Permissions {
            publish: filters(raw.publish)?,
            subscribe: filters(raw.subscribe)?,
        };
        // The token is valid until `exp` plus the leeway.
        let expires_at = claims.exp.map(|exp| {
            let at = UNIX_EPOCH + Duration::from_secs(exp.saturating_add(self.validation.leeway));
            let left = at
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO);
            Instant::now() + left
        });
        Ok(Identity {
            sub: sub.into(),
            permissions,
            expires_at,
            last_refresh: None,
        })
    }
}

/// What the handshake found out about a connection's credentials: nothing
/// when auth is off, else a verified identity or why the token was refused.
/// One pointer wide: every connection carries it.
#[derive(Debug)]
pub(crate) struct Auth(Option<Box<Credentials>>);

#[derive(Debug)]
enum Credentials {
    Verified(Identity),
    /// A missing or bad token: the connection is closed with 1008 at once.
    Refused(AuthError),
}

impl Auth {
    /// Auth is off: the connection may do anything.
    pub(crate) const OFF: Auth = Auth(None);

    /// A valid token's identity.
    pub(crate) fn verified(identity: Identity) -> Auth {
        Auth(Some(Box::new(Credentials::Verified(identity))))
    }

    fn refused(error: AuthError) -> Auth {
        Auth(Some(Box::new(Credentials::Refused(error))))
    }

    /// Checks the token of a handshake: the `token` query parameter, or an
    /// `Authorization: Bearer` header.
    pub(crate) fn check(
        verifier: Option<&Verifier>,
        query: Option<&str>,
        authorization: Option<&str>,
    ) -> Auth {
        let Some(verifier) = verifier else {
            return Auth::OFF;
        };
        let from_query = query.and_then(|query| {
            form_urlencoded::parse(query.as_bytes())
                .find(|(name, _)| name == "token")
                .map(|(_, value)| value.into_owned())
        });
        let from_header = || {
            let value = authorization?.trim();
            let (scheme, token) = value.split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then(|| token.trim().to_owned())
        };
        match from_query.or_else(from_header) {
            None => Auth::refused(AuthError::Missing),
            Some(token) => match verifier.verify(&token) {
                Ok(identity) => Auth::verified(identity),
                Err(error) => Auth::refused(error),
            },
        }
    }

    /// Whether auth is off.
    pub(crate) fn is_off(&self) -> bool {
        self.0.is_none()
    }

    /// The verified identity, if the token was valid.
    pub(crate) fn identity(&self) -> Option<&Identity> {
        match self.0.as_deref() {
            Some(Credentials::Verified(identity)) => Some(identity),
            _ => None,
        }
    }

    /// The verified identity, to update.
    pub(crate) fn identity_mut(&mut self) -> Option<&mut Identity> {
        match self.0.as_deref_mut() {
            Some(Credentials::Verified(identity)) => Some(identity),
            _ => None,
        }
    }

    /// Why the token was refused, if it was.
    pub(crate) fn refusal(&self) -> Option<&AuthError> {
        match self.0.as_deref() {
            Some(Credentials::Refused(error)) => Some(error),
            _ => None,
        }
    }

    /// When the connection's token expires, if it does.
    pub(crate) fn expires_at(&self) -> Option<Instant> {
        self.identity().and_then(|identity| identity.expires_at)
    }

    /// Whether a subscription to `filter` is allowed: auth is off, or the
    /// token's subscribe filters cover it.
    pub(crate) fn may_subscribe(&self, filter: &Filter) -> bool {
        self.is_off()
            || self
                .identity()
                .is_some_and(|identity| identity.permissions.may_subscribe(filter))
    }
}

/// Who a connection is and what it may do.
#[derive(Debug, Clone)]
pub(crate) struct Identity {
    /// The token's `sub`.
    pub(crate) sub: Arc<str>,
    pub(crate) permissions: Permissions,
    /// When the token stops being valid (its `exp` plus the leeway).
    pub(crate) expires_at: Option<Instant>,
    /// When the connection last asked to replace its token (`refresh`).
    pub(crate) last_refresh: Option<Instant>,
}

/// The topics a token may publish to and subscribe to.
#[derive(Debug, Clone, Default)]
pub(crate) struct Permissions {
    publish: Vec<Filter>,
    subscribe: Vec<Filter>,
}

impl Permissions {
    /// Whether a subscription to `filter` asks for nothing outside the
    /// subscribe filters.
    pub(crate) fn may_subscribe(&self, filter: &Filter) -> bool {
        self.subscribe.iter().any(|allowed| allowed.covers(filter))
    }

    /// Whether `topic` is matched by a publish filter. (`$` topics are
    /// refused before this is asked.)
    pub(crate) fn may_publish(&self, topic: &Topic) -> bool {
        self.publish
            .iter()
            .any(|allowed| allowed.matches(topic.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn permissions(publish: &[&str], subscribe: &[&str]) -> Permissions {
        let f = |names: &[&str]| names.iter().map(|n| Filter::new(n).unwrap()).collect();
        Permissions {
            publish: f(publish),
            subscribe: f(subscribe),
        }
    }

    #[test]
    fn permissions_allow_what_their_filters_cover() {
        let p = permissions(&["chat.*"], &["chat.>", "$sys.stats"]);
        let t = |s: &str| Topic::new(s).unwrap();
        let f = |s: &str| Filter::new(s).unwrap();
        assert!(p.may_publish(&t("chat.lobby")));
        assert!(!p.may_publish(&t("chat.lobby.typing")));
        assert!(!p.may_publish(&t("news")));
        assert!(p.may_subscribe(&f("chat.*")));
        assert!(p.may_subscribe(&f("$sys.stats")));
        assert!(!p.may_subscribe(&f(">")));
        assert!(!p.may_subscribe(&f("$sys.*")));
        let none = Permissions::default();
        assert!(!none.may_publish(&t("chat.lobby")));
        assert!(!none.may_subscribe(&f("chat.lobby")));
    }
}
