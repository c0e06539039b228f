//! Behind a reverse proxy (`--trusted-proxy CIDR`): the client's address
//! from `X-Forwarded-For`, and whether it came over TLS from
//! `X-Forwarded-Proto`, believed only from the proxies named.
//!
//! `X-Forwarded-For` is read from the right, as each proxy appends the
//! address it got the request from: the first address that is not a
//! trusted proxy is the client. Anything to its left was written by the
//! client itself, and is ignored. A request straight from an untrusted
//! peer is that peer, whatever its headers say.

use std::net::IpAddr;
use std::str::FromStr;

use axum::http::HeaderMap;

/// A network of trusted proxies: `10.0.0.0/8`, `fd00::/8`, or one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrustedNet(ipnet::IpNet);

impl FromStr for TrustedNet {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        if let Ok(net) = text.parse::<ipnet::IpNet>() {
            return Ok(TrustedNet(net.trunc()));
        }
        text.parse::<IpAddr>()
            .map(|ip| TrustedNet(ipnet::IpNet::from(ip)))
            .map_err(|_| format!("{text:?} is neither an address nor a network (CIDR)"))
    }
}

impl TrustedNet {
    fn contains(&self, ip: &IpAddr) -> bool {
        self.0.contains(&canonical(*ip))
    }
}

/// An IPv4 address mapped into IPv6 (as a dual-stack socket reports it),
/// as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Who sent a request, and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Client {
    /// The client's address.
    pub(crate) ip: IpAddr,
    /// Whether the client reached the (first trusted) proxy over TLS.
    pub(crate) tls: Option<bool>,
}

/// The client behind `peer` (the socket's address), when `peer` is one of
/// `trusted`; otherwise `peer` itself.
pub(crate) fn client(peer: IpAddr, headers: &HeaderMap, trusted: &[TrustedNet]) -> Client {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    let peer = canonical(peer);
    if !is_trusted(&peer) {
        return Client {
            ip: peer,
            tls: None,
        };
    }
    let mut ip = peer;
    let forwarded = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .collect::<Vec<_>>();
    for hop in forwarded.iter().rev() {
        let Ok(hop) = hop.trim().parse::<IpAddr>() else {
            break;
        };
        ip = canonical(hop);
        if !is_trusted(&ip) {
            break;
        }
    }
    let tls = headers
        .get("x-forwarded-proto")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(',').next())
        .map(|proto| proto.trim().eq_ignore_ascii_case("https"));
    Client { ip, tls }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, value.parse().unwrap());
        }
        map
    }

    fn nets(list: &[&str]) -> Vec<TrustedNet> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    #[test]
    fn forwarded_addresses_are_believed_only_from_trusted_proxies() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let trusted = nets(&["127.0.0.1", "10.0.0.0/8"]);
        let spoofed = headers(&[("x-forwarded-for", "6.6.6.6, 203.0.113.7, 10.1.2.3")]);
        // Straight from a client: its own address, whatever it claims.
        assert_eq!(
            client(ip("198.51.100.1"), &spoofed, &trusted).ip,
            ip("198.51.100.1")
        );
        // Through two trusted proxies: the first untrusted hop from the right.
        assert_eq!(
            client(ip("127.0.0.1"), &spoofed, &trusted).ip,
            ip("203.0.113.7")
        );
        // No header: the proxy itself.
        assert_eq!(
            client(ip("127.0.0.1"), &HeaderMap::new(), &trusted).ip,
            ip("127.0.0.1")
        );
        // Several header lines are one list; garbage stops the walk.
        let lines = headers(&[
            ("x-forwarded-for", "203.0.113.9"),
            ("x-forwarded-for", "10.0.0.1"),
        ]);
        assert_eq!(
            client(ip("10.9.9.9"), &lines, &trusted).ip,
            ip("203.0.113.9")
        );
        let garbage = headers(&[("x-forwarded-for", "203.0.113.9, unknown")]);
        assert_eq!(
            client(ip("10.9.9.9"), &garbage, &trusted).ip,
            ip("10.9.9.9")
        );
        // Mapped IPv4 is IPv4.
        assert_eq!(
            client(ip("::ffff:127.0.0.1"), &spoofed, &trusted).ip,
            ip("203.0.113.7")
        );
        // Nobody trusted: the peer.
        assert_eq!(client(ip("127.0.0.1"), &spoofed, &[]).ip, ip("127.0.0.1"));
    }

    #[test]
    fn the_scheme_comes_from_a_trusted_proxy_only() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let https = headers(&[("x-forwarded-proto", "https")]);
        let trusted = nets(&["127.0.0.0/8"]);
        assert_eq!(client(ip("127.0.0.1"), &https, &trusted).tls, Some(true));
        assert_eq!(client(ip("192.0.2.1"), &https, &trusted).tls, None);
        assert!("300.1.1.1/8".parse::<TrustedNet>().is_err());
        assert!("not an address".parse::<TrustedNet>().is_err());
    }
}
