//! Which addresses the node's active health checks may reach.
//!
//! An active check makes the node connect to an address a client chose and
//! tells that client the outcome, so without a bound any writer could use
//! the node as a probe of internal addresses. The node therefore checks only
//! instances whose IP lies in the configured ranges (`health_check_allow`,
//! default everything) and runs no checks at all with `health_checks =
//! false`. Registrations and updates that would need a refused check answer
//! 400 at once ([`refusal`]); the checker enforces the same rule again at
//! connect time, for records that came from peers and for host names, which
//! are resolved and checked address by address.

use std::net::IpAddr;

use muster_core::Host;
use muster_core::lease::META_HEALTH_CHECK;

use crate::config::HttpSettings;

/// An address range, `10.0.0.0/8` or `fd00::/8`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Cidr {
    net: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Every IPv4 and IPv6 address: the default.
    pub(crate) fn everything() -> Vec<Cidr> {
        vec![
            Cidr { net: IpAddr::from([0u8; 4]), prefix: 0 },
            Cidr { net: IpAddr::from([0u16; 8]), prefix: 0 },
        ]
    }

    /// Parses `addr/prefix` (or a bare address, a range of one).
    pub(crate) fn parse(s: &str) -> Result<Cidr, String> {
        let s = s.trim();
        let (addr, prefix) = s.split_once('/').unwrap_or((s, ""));
        let net: IpAddr =
            addr.parse().map_err(|_| format!("{s:?}: not an address range such as 10.0.0.0/8"))?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = if prefix.is_empty() {
            max
        } else {
            prefix
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?}: the prefix length must be 0 to {max}"))?
        };
        Ok(Cidr { net, prefix })
    }

    /// Parses a list; an empty list allows nothing (use `health_checks = false` instead).
    pub(crate) fn parse_list(list: &[String]) -> Result<Vec<Cidr>, String> {
        let out = list
            .iter()
            .filter(|s| !s.trim().is_empty())
            .map(|s| Cidr::parse(s))
            .collect::<Result<Vec<_>, _>>()?;
        if out.is_empty() {
            return Err(
                "give at least one range, e.g. 10.0.0.0/8; to run no checks set health_checks = false"
                    .to_owned(),
            );
        }
        Ok(out)
    }

    /// Whether `ip` lies in the range (IPv4-mapped IPv6 addresses count as IPv4).
    pub(crate) fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.net, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                masked(u128::from(u32::from(n)), self.prefix, 32)
                    == masked(u128::from(u32::from(a)), self.prefix, 32)
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                masked(u128::from(n), self.prefix, 128) == masked(u128::from(a), self.prefix, 128)
            }
            _ => false,
        }
    }

    fn is_everything(&self) -> bool {
        self.prefix == 0
    }
}

fn masked(v: u128, prefix: u8, bits: u32) -> u128 {
    let host_bits = bits - u32::from(prefix);
    if host_bits >= 128 { 0 } else { v >> host_bits }
}

/// Whether a check may connect to `ip`.
pub(crate) fn allowed(settings: &HttpSettings, ip: IpAddr) -> bool {
    settings.health_checks && settings.health_check_allow.iter().any(|c| c.contains(ip))
}

/// Why an instance with this host, persistence and `muster.health_check`
/// metadata cannot be accepted, if it would need an active check the node
/// refuses: `(field, message)` for a 400.
pub(crate) fn refusal(
    settings: &HttpSettings,
    host: &Host,
    ephemeral: bool,
    check: Option<&str>,
) -> Option<(&'static str, String)> {
    if ephemeral || check == Some("none") {
        return None;
    }
    if !settings.health_checks {
        return Some((
            "ephemeral",
            format!(
                "this node runs no active health checks; register persistent instances with metadata \
                 \"{META_HEALTH_CHECK}\": \"none\" and set their health with PATCH, or register them ephemeral"
            ),
        ));
    }
    let ok = match host.ip() {
        Some(ip) => allowed(settings, ip),
        None => settings.health_check_allow.iter().any(Cidr::is_everything),
    };
    if ok {
        return None;
    }
    let what = if host.ip().is_some() {
        format!("{host} is outside the address ranges this node health-checks (health_check_allow)")
    } else {
        "a host name cannot be health-checked while health_check_allow limits the address ranges; give its IP"
            .to_owned()
    };
    Some(("ip", format!("{what}; use an allowed address or metadata \"{META_HEALTH_CHECK}\": \"none\"")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_contain_exactly_their_addresses() {
        let c = Cidr::parse("10.1.0.0/16").unwrap();
        assert!(c.contains("10.1.255.3".parse().unwrap()));
        assert!(!c.contains("10.2.0.1".parse().unwrap()));
        assert!(c.contains("::ffff:10.1.0.9".parse().unwrap()));
        assert!(!c.contains("fd00::1".parse().unwrap()));
        let one = Cidr::parse("127.0.0.1").unwrap();
        assert!(one.contains("127.0.0.1".parse().unwrap()));
        assert!(!one.contains("127.0.0.2".parse().unwrap()));
        let v6 = Cidr::parse("fd00::/8").unwrap();
        assert!(v6.contains("fd12::1".parse().unwrap()));
        assert!(!v6.contains("fe80::1".parse().unwrap()));
        assert!(Cidr::everything().iter().any(|c| c.contains("169.254.169.254".parse().unwrap())));
        assert!(Cidr::everything().iter().any(|c| c.contains("::1".parse().unwrap())));
    }

    #[test]
    fn bad_ranges_are_refused_with_the_form_expected() {
        for bad in ["10.0.0.0/33", "x/8", "::/129", "10.0.0.0/-1"] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
        assert!(Cidr::parse_list(&[]).is_err());
    }
}
