//! Where health checks may connect. A check is a request that the cluster makes on behalf of
//! whoever registered it, so without rules it is a way into whatever the nodes can reach: the
//! cloud's metadata service, services bound to loopback, the node's own API.
//!
//! [`TargetPolicy`] decides per address, after resolution: rules are CIDR ranges that allow or
//! deny, built in ([`DEFAULT_DENY`]) or given with `--check-allow` and `--check-deny`. The most
//! specific range that holds the address decides; on a tie a flag beats a built-in rule and deny
//! beats allow (so `--check-deny 0.0.0.0/0 --check-allow 10.0.0.0/8` allows only 10/8, and
//! `--check-allow 169.254.0.0/16` does not open the metadata address, a /32 of its own). The
//! node's own listeners are refused whatever the rules say. An address no rule holds is allowed.
//!
//! Names are resolved, then every address is checked: at registration (the HTTP layer refuses
//! a denied target with 400 naming the rule) and before every probe (a name that came to resolve
//! into a denied range makes the check critical with the rule as its output). Probes connect
//! to the addresses just checked, never to the name again, so a name that changes its answer
//! between the check and the connection cannot slip through (see [`crate::prober`]).

use std::fmt;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::Duration;

use ipnet::IpNet;

/// Ranges denied unless a rule given by flag allows them, with the reason shown in refusals.
/// Loopback is also denied outside `--dev` ([`LOOPBACK`]).
pub const DEFAULT_DENY: &[(&str, &str)] = &[
    ("0.0.0.0/8", "this host"),
    ("::/128", "this host"),
    ("169.254.0.0/16", "link-local"),
    ("fe80::/10", "link-local"),
    ("169.254.169.254/32", "cloud metadata"),
    ("fd00:ec2::254/128", "cloud metadata"),
    ("100.100.100.200/32", "cloud metadata"),
];

/// Denied by default outside `--dev`: services bound to loopback trust their callers.
pub const LOOPBACK: &[(&str, &str)] = &[("127.0.0.0/8", "loopback"), ("::1/128", "loopback")];

/// How long registration waits for a check target's name to resolve. A name that does not
/// resolve in time (or at all) is accepted: the probe checks it every time it runs.
pub const REGISTRATION_RESOLVE_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Clone)]
struct Rule {
    net: IpNet,
    allow: bool,
    /// Given by flag (`--check-allow`, `--check-deny`), or built in with its reason.
    reason: Option<&'static str>,
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.allow, self.reason) {
            (true, _) => write!(f, "--check-allow {}", self.net),
            (false, None) => write!(f, "--check-deny {}", self.net),
            (false, Some(why)) => write!(
                f,
                "the default rule denying {} ({why}; --check-allow can open it)",
                self.net
            ),
        }
    }
}

/// An address a check may not connect to, and the rule that says so.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{addr} is refused by {rule}")]
pub struct Refused {
    pub addr: IpAddr,
    pub rule: String,
}

/// Why a check target cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error(transparent)]
    Refused(#[from] Refused),
    /// The name did not resolve (or to nothing).
    #[error("cannot resolve {host}")]
    Resolve { host: String },
}

/// The rules, and this node's listeners.
#[derive(Debug, Clone)]
pub struct TargetPolicy {
    rules: Vec<Rule>,
    own: Vec<SocketAddr>,
}

impl TargetPolicy {
    /// The built-in rules (loopback denied unless `dev`) and those given by flag.
    pub fn new(allow: &[IpNet], deny: &[IpNet], dev: bool) -> TargetPolicy {
        let builtin = DEFAULT_DENY
            .iter()
            .chain(if dev { &[][..] } else { LOOPBACK })
            .filter_map(|(net, why)| {
                Some(Rule {
                    net: net.parse().ok()?,
                    allow: false,
                    reason: Some(why),
                })
            });
        let given = allow
            .iter()
            .map(|net| (net, true))
            .chain(deny.iter().map(|net| (net, false)))
            .map(|(net, allow)| Rule {
                net: net.trunc(),
                allow,
                reason: None,
            });
        TargetPolicy {
            rules: builtin.chain(given).collect(),
            own: Vec::new(),
        }
    }

    /// Refuse this node's own listeners (HTTP, HTTPS, cluster RPC, DNS) too. A listener on
    /// `0.0.0.0` or `::` is refused at every address of this machine.
    pub fn with_own_listeners(mut self, listeners: impl IntoIterator<Item = SocketAddr>) -> Self {
        self.own.extend(listeners);
        self
    }

    /// Whether a check may connect to `addr`; [`Refused`] names the rule when not.
    pub fn check(&self, addr: SocketAddr) -> Result<(), Refused> {
        let ip = addr.ip().to_canonical();
        if let Some(l) = self.own.iter().find(|l| {
            l.port() == addr.port()
                && (l.ip().to_canonical() == ip || (l.ip().is_unspecified() && is_local(ip)))
        }) {
            return Err(Refused {
                addr: ip,
                rule: format!("this node's own listener {l} (port {})", l.port()),
            });
        }
        self.check_ip(ip)
    }

    /// [`TargetPolicy::check`] by the ranges alone, for a connection whose port is not known.
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), Refused> {
        let ip = ip.to_canonical();
        // Most specific first; then a flag over a built-in rule; then deny over allow.
        let decisive = self
            .rules
            .iter()
            .filter(|r| r.net.contains(&ip))
            .max_by_key(|r| (r.net.prefix_len(), r.reason.is_none(), !r.allow));
        match decisive {
            Some(rule) if !rule.allow => Err(Refused {
                addr: ip,
                rule: rule.to_string(),
            }),
            _ => Ok(()),
        }
    }

    /// Resolves `host` (a name, or an IP literal, bracketed or not) and checks every address:
    /// one refused address refuses the target, so a name cannot alternate between a good
    /// answer and a denied one.
    pub async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, TargetError> {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let addrs: Vec<SocketAddr> = match bare.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, port)],
            Err(_) => tokio::net::lookup_host((bare, port))
                .await
                .map_err(|_| TargetError::Resolve {
                    host: bare.to_owned(),
                })?
                .collect(),
        };
        if addrs.is_empty() {
            return Err(TargetError::Resolve {
                host: bare.to_owned(),
            });
        }
        for addr in &addrs {
            self.check(*addr)?;
        }
        Ok(addrs)
    }
}

/// Whether `ip` is an address of this machine: one a socket can be bound to.
fn is_local(ip: IpAddr) -> bool {
    ip.is_loopback() || ip.is_unspecified() || UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
}

/// The host and port an HTTP check's URL connects to.
pub fn url_target(url: &str) -> Option<(String, u16)> {
    let url = reqwest::Url::parse(url).ok()?;
    Some((url.host_str()?.to_owned(), url.port_or_known_default()?))
}

/// The host and port of a TCP check's `host:port` target.
pub fn tcp_target(target: &str) -> Option<(String, u16)> {
    let (host, port) = target.rsplit_once(':')?;
    Some((host.to_owned(), port.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn refused(p: &TargetPolicy, addr: &str) -> Option<String> {
        p.check(addr.parse().unwrap()).err().map(|r| r.rule)
    }

    #[test]
    fn metadata_link_local_and_this_host_are_denied_by_default() {
        let p = TargetPolicy::new(&[], &[], false);
        for addr in [
            "169.254.169.254:80",
            "169.254.1.2:80",
            "[fe80::1]:80",
            "[fd00:ec2::254]:80",
            "0.0.0.0:80",
            "[::]:80",
            "127.0.0.1:8080",
            "[::1]:8080",
            // IPv4-mapped IPv6 is the IPv4 address.
            "[::ffff:169.254.169.254]:80",
            "[::ffff:127.0.0.1]:80",
        ] {
            assert!(refused(&p, addr).is_some(), "{addr}");
        }
        assert_eq!(
            refused(&p, "169.254.169.254:80").unwrap(),
            "the default rule denying 169.254.169.254/32 (cloud metadata; --check-allow can open it)"
        );
        for addr in ["10.0.0.7:8080", "192.0.2.1:443", "[2001:db8::1]:80"] {
            assert_eq!(refused(&p, addr), None, "{addr}");
        }
    }

    #[test]
    fn dev_allows_loopback_but_not_metadata() {
        let p = TargetPolicy::new(&[], &[], true);
        assert_eq!(refused(&p, "127.0.0.1:8080"), None);
        assert!(refused(&p, "169.254.169.254:80").is_some());
    }

    #[test]
    fn the_most_specific_rule_decides_and_flags_win_ties() {
        // Allowing link-local does not open the metadata address, a more specific default.
        let p = TargetPolicy::new(&nets(&["169.254.0.0/16"]), &[], false);
        assert_eq!(refused(&p, "169.254.1.1:80"), None);
        assert!(refused(&p, "169.254.169.254:80").is_some());
        // The same range given by flag beats the default.
        let p = TargetPolicy::new(&nets(&["127.0.0.0/8"]), &[], false);
        assert_eq!(refused(&p, "127.0.0.1:80"), None);
        // An allow-list: deny everything, allow one range; deny wins a tie between flags.
        let p = TargetPolicy::new(
            &nets(&["10.0.0.0/8", "192.0.2.0/24"]),
            &nets(&["0.0.0.0/0", "10.1.0.0/16", "192.0.2.0/24"]),
            false,
        );
        assert_eq!(refused(&p, "10.2.0.1:80"), None);
        assert_eq!(
            refused(&p, "10.1.0.1:80").unwrap(),
            "--check-deny 10.1.0.0/16"
        );
        assert_eq!(
            refused(&p, "192.0.2.1:80").unwrap(),
            "--check-deny 192.0.2.0/24"
        );
        assert_eq!(refused(&p, "8.8.8.8:53").unwrap(), "--check-deny 0.0.0.0/0");
    }

    #[test]
    fn own_listeners_are_refused_even_where_ranges_allow() {
        let p = TargetPolicy::new(&nets(&["127.0.0.0/8"]), &[], true).with_own_listeners([
            "127.0.0.1:8500".parse().unwrap(),
            "0.0.0.0:8300".parse().unwrap(),
        ]);
        assert!(refused(&p, "127.0.0.1:8500")
            .unwrap()
            .contains("own listener"));
        assert_eq!(refused(&p, "127.0.0.1:8501"), None);
        // A wildcard listener is reached at every local address, loopback included.
        assert!(refused(&p, "127.0.0.1:8300").is_some());
        assert!(refused(&p, "127.0.0.9:8300").is_some());
        assert!(refused(&p, "0.0.0.0:8300").is_some());
        // Not at another machine's.
        assert_eq!(refused(&p, "192.0.2.1:8300"), None);
    }

    #[tokio::test]
    async fn names_are_resolved_and_every_address_checked() {
        let p = TargetPolicy::new(&[], &[], false);
        match p.resolve("localhost", 80).await {
            Err(TargetError::Refused(r)) => assert!(r.rule.contains("loopback"), "{r}"),
            other => panic!("localhost: {other:?}"),
        }
        assert!(matches!(
            p.resolve("[169.254.169.254]", 80).await,
            Err(TargetError::Refused(_))
        ));
        assert_eq!(
            p.resolve("192.0.2.7", 80).await.unwrap(),
            ["192.0.2.7:80".parse().unwrap()]
        );
        assert!(matches!(
            p.resolve("no-such-name.invalid", 80).await,
            Err(TargetError::Resolve { .. })
        ));
    }

    #[test]
    fn targets_are_split_into_host_and_port() {
        assert_eq!(
            url_target("http://169.254.169.254/latest"),
            Some(("169.254.169.254".into(), 80))
        );
        assert_eq!(
            url_target("https://[::1]:8443/h"),
            Some(("[::1]".into(), 8443))
        );
        assert_eq!(tcp_target("[::1]:5432"), Some(("[::1]".into(), 5432)));
        assert_eq!(
            tcp_target("db.internal:5432"),
            Some(("db.internal".into(), 5432))
        );
    }
}
