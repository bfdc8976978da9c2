use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use crate::HeartbeatLink;

/// Why a heartbeat link URL was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseLinkError(pub String);

impl fmt::Display for ParseLinkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ParseLinkError {}

const LINK_FORMS: &str = "expected \"udp://IP:PORT\" or \"serial:///dev/PATH?baud=N\"";
pub(crate) const DEFAULT_BAUD: u32 = 115_200;

pub(crate) fn parse_link(s: &str) -> Result<HeartbeatLink, ParseLinkError> {
    let err = |m: String| Err(ParseLinkError(m));
    let Some((scheme, rest)) = s.split_once("://") else {
        return err(format!("invalid heartbeat link {s:?}: {LINK_FORMS}"));
    };
    match scheme {
        "udp" => match parse_addr(rest) {
            Ok(addr) if addr.ip().is_unspecified() => err(format!(
                "heartbeat link {s:?}: the peer sends to this address, so it must be a specific IP, not {}",
                addr.ip()
            )),
            Ok(addr) => Ok(HeartbeatLink::Udp(addr)),
            Err(m) => err(format!("heartbeat link {s:?}: {m}")),
        },
        "serial" => {
            let (path, query) = match rest.split_once('?') {
                Some((p, q)) => (p, Some(q)),
                None => (rest, None),
            };
            if !path.starts_with('/') {
                return err(format!(
                    "heartbeat link {s:?}: the serial device must be an absolute path, as in \"serial:///dev/ttyS1\""
                ));
            }
            if path.len() == 1 {
                return err(format!("heartbeat link {s:?}: the serial device path is missing"));
            }
            let mut baud = DEFAULT_BAUD;
            for param in query.into_iter().flat_map(|q| q.split('&')) {
                match param.split_once('=') {
                    Some(("baud", v)) => match v.parse::<u32>() {
                        Ok(b) if b > 0 => baud = b,
                        _ => {
                            return err(format!(
                                "heartbeat link {s:?}: baud must be a positive whole number, found {v:?}"
                            ))
                        }
                    },
                    _ => {
                        return err(format!(
                            "heartbeat link {s:?}: unknown parameter {param:?}; the only parameter is \"baud=N\""
                        ))
                    }
                }
            }
            Ok(HeartbeatLink::Serial {
                path: PathBuf::from(path),
                baud,
            })
        }
        other => err(format!(
            "heartbeat link {s:?} has unknown scheme {other:?}; {LINK_FORMS}"
        )),
    }
}

/// Parses `IP:PORT` (`[v6]:PORT`). The error says what is wrong with `s`
/// without repeating it, e.g. `no port; expected "IP:PORT"`.
pub(crate) fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = s.parse::<SocketAddr>() {
        if addr.port() == 0 {
            return Err("port 0 is not a real port".to_string());
        }
        return Ok(addr);
    }
    let no_port = "no port; expected \"IP:PORT\"".to_string();
    if s.parse::<IpAddr>().is_ok()
        || s.trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .is_ok()
    {
        return Err(no_port);
    }
    match s.rsplit_once(':') {
        None => Err(no_port),
        Some((_, p)) if p.parse::<u16>().is_err() => Err(format!(
            "invalid port {p:?}; expected \"IP:PORT\" with a port from 1 to 65535"
        )),
        Some((host, _)) => Err(format!(
            "{host:?} is not an IP address (tandem does not resolve host names here); expected \"IP:PORT\""
        )),
    }
}

/// Checks a `HOST:PORT` TCP target (host names allowed; `[v6]:PORT` for IPv6).
pub(crate) fn check_host_port(s: &str) -> Result<(), String> {
    let Some((host, port)) = s.rsplit_once(':') else {
        return Err(format!("{s:?} has no port; expected \"HOST:PORT\""));
    };
    if host.is_empty() {
        return Err(format!("{s:?} has no host; expected \"HOST:PORT\""));
    }
    // A bare IPv6 address ("fe80::1") splits on its last colon: refuse it.
    if host.contains(':') && !(host.starts_with('[') && host.ends_with(']')) {
        return Err(format!("{s:?}: write IPv6 targets as \"[ADDRESS]:PORT\""));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => {}
        _ => {
            return Err(format!(
                "{s:?} has an invalid port {port:?}; expected \"HOST:PORT\" with a port from 1 to 65535"
            ))
        }
    }
    let bad = |c: char| !(c.is_ascii_alphanumeric() || "-._[]:".contains(c));
    if host.contains(bad) {
        return Err(format!(
            "{s:?}: {host:?} is not a valid host name or IP address"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_round_trip() {
        for s in [
            "udp://10.10.10.1:7482",
            "udp://[fe80::1]:7482",
            "serial:///dev/ttyS1?baud=115200",
            "serial:///dev/ttyUSB0?baud=9600",
        ] {
            let link: HeartbeatLink = s.parse().unwrap();
            assert_eq!(link.to_string(), s);
            assert_eq!(link.to_string().parse::<HeartbeatLink>().unwrap(), link);
        }
        assert_eq!(
            "serial:///dev/ttyS1".parse::<HeartbeatLink>().unwrap(),
            HeartbeatLink::Serial {
                path: "/dev/ttyS1".into(),
                baud: 115_200
            }
        );
    }

    #[test]
    fn bad_links() {
        let e = |s: &str| s.parse::<HeartbeatLink>().unwrap_err().0;
        expect_test::expect![[r#"heartbeat link "tcp://1.2.3.4:5" has unknown scheme "tcp"; expected "udp://IP:PORT" or "serial:///dev/PATH?baud=N""#]].assert_eq(&e("tcp://1.2.3.4:5"));
        expect_test::expect![[r#"invalid heartbeat link "10.0.0.1:7482": expected "udp://IP:PORT" or "serial:///dev/PATH?baud=N""#]].assert_eq(&e("10.0.0.1:7482"));
        expect_test::expect![[r#"heartbeat link "udp://10.0.0.1": no port; expected "IP:PORT""#]]
            .assert_eq(&e("udp://10.0.0.1"));
        expect_test::expect![[r#"heartbeat link "udp://[::1]": no port; expected "IP:PORT""#]]
            .assert_eq(&e("udp://[::1]"));
        expect_test::expect![[r#"heartbeat link "udp://peer:7482": "peer" is not an IP address (tandem does not resolve host names here); expected "IP:PORT""#]].assert_eq(&e("udp://peer:7482"));
        expect_test::expect![[r#"heartbeat link "udp://10.0.0.1:99999": invalid port "99999"; expected "IP:PORT" with a port from 1 to 65535"#]].assert_eq(&e("udp://10.0.0.1:99999"));
        expect_test::expect![[r#"heartbeat link "udp://0.0.0.0:7482": the peer sends to this address, so it must be a specific IP, not 0.0.0.0"#]].assert_eq(&e("udp://0.0.0.0:7482"));
        expect_test::expect![[r#"heartbeat link "serial:///dev/ttyS1?baud=fast": baud must be a positive whole number, found "fast""#]].assert_eq(&e("serial:///dev/ttyS1?baud=fast"));
        expect_test::expect![[r#"heartbeat link "serial:///dev/ttyS1?baud=0": baud must be a positive whole number, found "0""#]].assert_eq(&e("serial:///dev/ttyS1?baud=0"));
        expect_test::expect![[r#"heartbeat link "serial:///dev/ttyS1?parity=n": unknown parameter "parity=n"; the only parameter is "baud=N""#]].assert_eq(&e("serial:///dev/ttyS1?parity=n"));
        expect_test::expect![[r#"heartbeat link "serial://dev/ttyS1": the serial device must be an absolute path, as in "serial:///dev/ttyS1""#]].assert_eq(&e("serial://dev/ttyS1"));
    }

    #[test]
    fn host_port() {
        assert!(check_host_port("192.168.1.1:53").is_ok());
        assert!(check_host_port("gw.example.net:22").is_ok());
        assert!(check_host_port("[fe80::1]:22").is_ok());
        assert!(check_host_port("192.168.1.1").is_err());
        assert!(check_host_port("fe80::1").is_err());
        assert!(check_host_port(":22").is_err());
        assert!(check_host_port("a b:22").is_err());
    }
}
