//! The caller's address: the socket peer, or what a trusted proxy in front of us says it is.

use std::net::{IpAddr, Ipv4Addr};

use ipnet::IpNet;
use pingora_http::RequestHeader;

use crate::config::{ClientIpConf, ForwardedHeader, Invalid, KeyPath};

/// Compiled `[client_ip]`.
#[derive(Debug, Clone, Default)]
pub struct ClientIpResolver {
    trusted: Vec<IpNet>,
    header: ForwardedHeader,
}

/// Used when the peer has no IP address (a Unix socket): all such callers share one key.
pub const UNKNOWN: IpAddr = IpAddr::V4(Ipv4Addr::UNSPECIFIED);

impl ClientIpResolver {
    /// Compiles `[client_ip]`, found at `at`.
    pub fn compile(conf: &ClientIpConf, at: &KeyPath) -> Result<Self, Invalid> {
        let trusted = conf
            .trusted_proxies
            .iter()
            .map(|p| {
                p.parse::<IpNet>()
                    .or_else(|_| p.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| {
                        let key = at.key("trusted_proxies");
                        Invalid::new(key, format!("{p:?} is not an address or CIDR block"))
                            .pointing_at(at.clone())
                    })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            trusted,
            header: conf.header,
        })
    }

    fn is_trusted(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.trusted.iter().any(|net| net.contains(&ip))
    }

    /// The client address. Forwarding headers count only when the socket peer is trusted; they
    /// are then read from the right, skipping trusted hops, so that a client cannot choose its
    /// own address by prepending entries. An unreadable entry stops the walk at the last hop
    /// known to be good.
    pub fn resolve(&self, peer: Option<IpAddr>, req: &RequestHeader) -> IpAddr {
        let Some(peer) = peer.map(canonical) else {
            return UNKNOWN;
        };
        if !self.is_trusted(peer) {
            return peer;
        }
        let mut client = peer;
        let values = req.headers.get_all(self.header.name());
        // Headers repeated on several lines form one list, in order (RFC 9110 §5.3).
        let mut hops: Vec<&str> = Vec::new();
        for value in values {
            let Ok(value) = value.to_str() else {
                return client;
            };
            hops.extend(value.split(','));
        }
        for hop in hops.iter().rev() {
            let parsed = match self.header {
                ForwardedHeader::XForwardedFor => parse_addr(hop.trim()),
                ForwardedHeader::Forwarded => forwarded_for(hop),
            };
            let Some(ip) = parsed else {
                return client;
            };
            client = ip;
            if !self.is_trusted(ip) {
                return ip;
            }
        }
        client
    }
}

impl ForwardedHeader {
    fn name(self) -> &'static str {
        match self {
            ForwardedHeader::XForwardedFor => "x-forwarded-for",
            ForwardedHeader::Forwarded => "forwarded",
        }
    }
}

/// IPv4-mapped IPv6 addresses (`::ffff:10.0.0.1`) are their IPv4 selves, for matching and keys.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// `1.2.3.4`, `1.2.3.4:567`, `::1`, `[::1]`, `[::1]:567`.
fn parse_addr(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    if let Some(rest) = s.strip_prefix('[') {
        let (ip, _) = rest.split_once(']')?;
        return ip.parse().ok().map(canonical);
    }
    let (ip, port) = s.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    ip.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

/// The `for=` parameter of one RFC 7239 element: `for=192.0.2.60;proto=http`.
fn forwarded_for(element: &str) -> Option<IpAddr> {
    element.split(';').find_map(|pair| {
        let (name, value) = pair.trim().split_once('=')?;
        if !name.trim().eq_ignore_ascii_case("for") {
            return None;
        }
        parse_addr(value.trim().trim_matches('"'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolver(trusted: &[&str], header: ForwardedHeader) -> ClientIpResolver {
        ClientIpResolver::compile(
            &ClientIpConf {
                trusted_proxies: trusted.iter().map(|s| s.to_string()).collect(),
                header,
            },
            &KeyPath::root(),
        )
        .unwrap()
    }

    fn req(name: &str, values: &[&str]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", b"/", None).unwrap();
        for v in values {
            r.append_header(name.to_string(), *v).unwrap();
        }
        r
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn untrusted_peer_is_the_client() {
        let r = resolver(&["10.0.0.0/8"], ForwardedHeader::XForwardedFor);
        let h = req("x-forwarded-for", &["203.0.113.9"]);
        assert_eq!(r.resolve(Some(ip("192.0.2.1")), &h), ip("192.0.2.1"));
    }

    #[test]
    fn rightmost_untrusted_hop_wins() {
        let r = resolver(&["10.0.0.0/8", "127.0.0.1"], ForwardedHeader::XForwardedFor);
        // The client forged the first entry; the proxy appended what it saw.
        let h = req("x-forwarded-for", &["1.1.1.1, 203.0.113.9", "10.1.2.3"]);
        assert_eq!(r.resolve(Some(ip("127.0.0.1")), &h), ip("203.0.113.9"));
        let all_trusted = req("x-forwarded-for", &["10.9.9.9, 10.1.1.1"]);
        assert_eq!(
            r.resolve(Some(ip("10.0.0.1")), &all_trusted),
            ip("10.9.9.9")
        );
        let garbage = req("x-forwarded-for", &["203.0.113.9, nonsense"]);
        assert_eq!(r.resolve(Some(ip("10.0.0.1")), &garbage), ip("10.0.0.1"));
        let none = req("x-other", &["1.1.1.1"]);
        assert_eq!(r.resolve(Some(ip("10.0.0.1")), &none), ip("10.0.0.1"));
    }

    #[test]
    fn rfc7239_forwarded() {
        let r = resolver(&["127.0.0.0/8"], ForwardedHeader::Forwarded);
        let h = req(
            "forwarded",
            &[r#"for=192.0.2.60;proto=http, for="[2001:db8:cafe::17]:4711""#],
        );
        assert_eq!(
            r.resolve(Some(ip("127.0.0.1")), &h),
            ip("2001:db8:cafe::17")
        );
    }

    #[test]
    fn mapped_v4_is_v4() {
        let r = resolver(&["127.0.0.1"], ForwardedHeader::XForwardedFor);
        let h = req("x-forwarded-for", &["203.0.113.9:4433"]);
        assert_eq!(
            r.resolve(Some(ip("::ffff:127.0.0.1")), &h),
            ip("203.0.113.9")
        );
        assert!(ClientIpResolver::compile(
            &ClientIpConf {
                trusted_proxies: vec!["10.0.0.0/33".into()],
                header: ForwardedHeader::XForwardedFor,
            },
            &KeyPath::root()
        )
        .is_err());
    }
}
