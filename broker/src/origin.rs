//! Which web origins may open a WebSocket: the broker's own, and those
//! allowed with `--allowed-origin`.
//!
//! A browser sends `Origin` with every WebSocket handshake, and any page a
//! user visits can open one; without this check, a hostile page could read
//! and publish with the user's cookies or network position. Clients that
//! are not browsers send no `Origin` and are not affected.

use std::fmt;

/// An origin: scheme, host and port (the scheme's default when absent).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Origin {
    scheme: String,
    host: String,
    port: u16,
}

fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" => Some(80),
        "https" => Some(443),
        _ => None,
    }
}

/// Splits `host[:port]` (an IPv6 host in brackets) into host and port.
fn split_host_port(authority: &str) -> Option<(&str, Option<u16>)> {
    if authority.is_empty() {
        return None;
    }
    if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        return match after.strip_prefix(':') {
            Some(port) => Some((host, Some(port.parse().ok()?))),
            None if after.is_empty() => Some((host, None)),
            None => None,
        };
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() => Some((host, Some(port.parse().ok()?))),
        Some(_) => None,
        None => Some((authority, None)),
    }
}

impl Origin {
    /// Parses `scheme://host[:port]`, as browsers send it (no path).
    fn parse(text: &str) -> Option<Origin> {
        let (scheme, authority) = text.split_once("://")?;
        let scheme = scheme.to_ascii_lowercase();
        if authority.contains(['/', '?', '#', '@']) {
            return None;
        }
        let (host, port) = split_host_port(authority)?;
        let port = port.or_else(|| default_port(&scheme))?;
        Some(Origin {
            host: host.to_ascii_lowercase(),
            scheme,
            port,
        })
    }
}

/// One `--allowed-origin` rule.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Rule {
    /// `*`: any origin, `null` included.
    Any,
    /// One origin.
    Exact(Origin),
    /// `scheme://*.domain[:port]`: every subdomain of `domain` (not
    /// `domain` itself).
    Subdomains(Origin),
}

/// A rule that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid --allowed-origin {0:?}: expected *, scheme://host[:port] or scheme://*.domain[:port]"
)]
pub struct OriginRuleError(String);

/// The origins a broker accepts WebSocket handshakes from.
#[derive(Clone, Default)]
pub(crate) struct OriginPolicy {
    rules: Vec<Rule>,
}

impl fmt::Debug for OriginPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(&self.rules).finish()
    }
}

impl OriginPolicy {
    /// The policy of `--allowed-origin` rules (none: same origin only).
    pub(crate) fn new(rules: &[String]) -> Result<Self, OriginRuleError> {
        let rules = rules
            .iter()
            .map(|text| {
                let rule = text.trim();
                if rule == "*" {
                    return Ok(Rule::Any);
                }
                let invalid = || OriginRuleError(text.clone());
                let origin = Origin::parse(rule).ok_or_else(invalid)?;
                match origin.host.strip_prefix("*.") {
                    Some(domain) if !domain.is_empty() && !domain.contains('*') => {
                        Ok(Rule::Subdomains(Origin {
                            host: format!(".{domain}"),
                            ..origin
                        }))
                    }
                    Some(_) => Err(invalid()),
                    None if origin.host.contains('*') => Err(invalid()),
                    None => Ok(Rule::Exact(origin)),
                }
            })
            .collect::<Result<_, _>>()?;
        Ok(OriginPolicy { rules })
    }

    /// Whether a handshake from `origin` is accepted. `host` is the
    /// request's `Host` header; `tls` whether the broker serves `https`.
    /// The broker's own origin (same scheme, host and port as the request)
    /// is always accepted.
    pub(crate) fn allows(&self, origin: &str, host: Option<&str>, tls: bool) -> bool {
        if self.rules.contains(&Rule::Any) {
            return true;
        }
        let Some(origin) = Origin::parse(origin.trim()) else {
            // `null` (a sandboxed frame, a file) and anything unparsable.
            return false;
        };
        let scheme = if tls { "https" } else { "http" };
        let own = host.and_then(|host| Origin::parse(&format!("{scheme}://{}", host.trim())));
        if own.as_ref() == Some(&origin) {
            return true;
        }
        self.rules.iter().any(|rule| match rule {
            Rule::Any => true,
            Rule::Exact(allowed) => *allowed == origin,
            Rule::Subdomains(allowed) => {
                allowed.scheme == origin.scheme
                    && allowed.port == origin.port
                    && origin.host.len() > allowed.host.len()
                    && origin.host.ends_with(&allowed.host)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(rules: &[&str]) -> OriginPolicy {
        OriginPolicy::new(&rules.iter().map(|r| r.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn the_brokers_own_origin_is_allowed_by_default() {
        let p = policy(&[]);
        let host = Some("broker.example.com:7070");
        assert!(p.allows("http://broker.example.com:7070", host, false));
        assert!(p.allows("HTTP://Broker.Example.com:7070", host, false));
        assert!(!p.allows("https://broker.example.com:7070", host, false));
        assert!(!p.allows("http://broker.example.com:7071", host, false));
        assert!(!p.allows("http://evil.example.com:7070", host, false));
        assert!(p.allows("https://chat.example.com", Some("chat.example.com"), true));
        assert!(p.allows(
            "https://chat.example.com:443",
            Some("chat.example.com"),
            true
        ));
        assert!(p.allows("http://[::1]:7070", Some("[::1]:7070"), false));
        assert!(!p.allows("null", host, false));
        assert!(!p.allows("http://broker.example.com:7070", None, false));
    }

    #[test]
    fn rules_allow_exact_origins_and_subdomains_only() {
        let p = policy(&["https://app.example.com", "https://*.example.org"]);
        let host = Some("broker:7070");
        assert!(p.allows("https://app.example.com", host, false));
        assert!(p.allows("https://app.example.com:443", host, false));
        assert!(!p.allows("http://app.example.com", host, false));
        assert!(!p.allows("https://app.example.com:8443", host, false));
        assert!(!p.allows("https://app.example.com.evil.net", host, false));
        assert!(p.allows("https://a.example.org", host, false));
        assert!(p.allows("https://a.b.example.org", host, false));
        assert!(!p.allows("https://example.org", host, false));
        assert!(!p.allows("https://evilexample.org", host, false));
        assert!(!p.allows("https://example.org.evil.net", host, false));
        assert!(!p.allows("http://a.example.org", host, false));
        assert!(!p.allows("null", host, false));
        assert!(policy(&["*"]).allows("null", host, false));
        assert!(policy(&["*"]).allows("https://anything.at.all", host, false));
    }

    #[test]
    fn bad_rules_are_refused() {
        for rule in [
            "example.com",
            "https://",
            "https://*.",
            "https://a.*.com",
            "https://x.com/path",
            "https://x.com:99999",
        ] {
            assert!(
                OriginPolicy::new(&[rule.to_string()]).is_err(),
                "{rule} should be refused"
            );
        }
    }
}
