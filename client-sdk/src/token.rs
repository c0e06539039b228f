//! Tokens for brokers that require them: a fixed token or a provider that
//! is asked on every connect and before the current token expires.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// The error a token provider may fail with.
pub type TokenError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What a token provider returns: a future of a JWT.
pub type TokenFuture = Pin<Box<dyn Future<Output = Result<String, TokenError>> + Send + 'static>>;

/// A token is refreshed this long before its `exp` (or at 80 % of what is
/// left of it, when that comes first).
const REFRESH_BEFORE: Duration = Duration::from_secs(30);

/// The soonest a refresh is tried, however short the token.
const REFRESH_AT_LEAST: Duration = Duration::from_secs(1);

/// An async callback that gives a token.
#[derive(Clone)]
pub(crate) struct TokenProvider(Arc<dyn Fn() -> TokenFuture + Send + Sync>);

impl TokenProvider {
    pub(crate) fn new<F, Fut>(provider: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<String, TokenError>> + Send + 'static,
    {
        TokenProvider(Arc::new(move || Box::pin(provider())))
    }

    /// Asks the provider for a token.
    pub(crate) fn call(&self) -> TokenFuture {
        (self.0)()
    }
}

/// How long to wait before refreshing `token`, from its `exp` claim; `None`
/// when it has none (or is not a JWT the client can read).
pub(crate) fn refresh_delay(token: &str, now: SystemTime) -> Option<Duration> {
    let left = expiry(token)?.duration_since(now).unwrap_or(Duration::ZERO);
    let early = left.saturating_sub(REFRESH_BEFORE);
    Some(early.min(left.mul_f64(0.8)).max(REFRESH_AT_LEAST))
}

/// The `exp` claim of a JWT.
fn expiry(token: &str) -> Option<SystemTime> {
    #[derive(serde::Deserialize)]
    struct Claims {
        exp: Option<u64>,
    }
    let claims = token.split('.').nth(1)?;
    let json = URL_SAFE_NO_PAD.decode(claims.trim_end_matches('=')).ok()?;
    let claims: Claims = serde_json::from_slice(&json).ok()?;
    Some(UNIX_EPOCH + Duration::from_secs(claims.exp?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(claims: &str) -> String {
        format!("e30.{}.sig", URL_SAFE_NO_PAD.encode(claims))
    }

    #[test]
    fn refreshes_before_expiry() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000);
        let delay = |claims: &str| refresh_delay(&jwt(claims), now);
        // An hour left: at 80 % of it, which comes before 30 s from the end.
        assert_eq!(delay(r#"{"exp":4600}"#), Some(Duration::from_secs(2880)));
        // Two minutes left: 30 s before the end.
        assert_eq!(delay(r#"{"exp":1120}"#), Some(Duration::from_secs(90)));
        // Ten seconds left: at 80 % of them.
        assert_eq!(delay(r#"{"exp":1010}"#), Some(Duration::from_secs(1)));
        assert_eq!(delay(r#"{"exp":1100}"#), Some(Duration::from_secs(70)));
        assert_eq!(delay(r#"{"exp":1020}"#), Some(Duration::from_secs(1)));
        // Expired: as soon as allowed.
        assert_eq!(delay(r#"{"exp":10}"#), Some(REFRESH_AT_LEAST));
        assert_eq!(delay(r#"{"sub":"ada"}"#), None);
        assert_eq!(refresh_delay("not a jwt", now), None);
    }
}
