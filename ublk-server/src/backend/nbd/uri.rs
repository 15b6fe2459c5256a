//! Where an NBD export is, as the NBD URI specification writes it
//! (`docs/nbd-uri.md` of the NBD project): `nbd://HOST[:PORT]/EXPORT` or
//! `nbd+unix:///EXPORT?socket=PATH`.

use std::fmt;
use std::path::{Path, PathBuf};

/// The IANA port of NBD.
pub const DEFAULT_PORT: u16 = 10809;

/// An export's server and name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uri {
    pub server: Server,
    /// The export name (may be empty: the server's default export).
    pub export: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Server {
    Tcp { host: String, port: u16 },
    Unix(PathBuf),
}

/// Whether a table's `<dev>` names an NBD export rather than a file: any
/// `nbd…://` scheme (the unsupported ones are refused with a reason by
/// [`Uri::parse`], not taken for relative paths).
pub fn is_nbd(dev: &Path) -> bool {
    let s = dev.to_string_lossy();
    s.split_once("://").is_some_and(|(scheme, _)| {
        scheme == "nbd"
            || scheme.starts_with("nbd+")
            || scheme == "nbds"
            || scheme.starts_with("nbds+")
    })
}

impl Uri {
    /// Parses an NBD URI; the error says what is wrong with it.
    pub fn parse(s: &str) -> Result<Uri, String> {
        let url = url::Url::parse(s).map_err(|e| format!("not an NBD URI: {e}"))?;
        let scheme = url.scheme();
        if scheme.starts_with("nbds") {
            return Err("TLS (nbds://) is not supported; use nbd:// or nbd+unix://".into());
        }
        let export = percent(url.path().strip_prefix('/').unwrap_or(url.path()))?;
        let mut socket = None;
        for (k, v) in url.query_pairs() {
            match k.as_ref() {
                "socket" => socket = Some(PathBuf::from(v.as_ref())),
                other => return Err(format!("the URI parameter {other:?} is not supported")),
            }
        }
        if url.fragment().is_some() || !url.username().is_empty() || url.password().is_some() {
            return Err("user names, passwords and fragments are not part of an NBD URI".into());
        }
        let server = match scheme {
            "nbd" | "nbd+tcp" => {
                if socket.is_some() {
                    return Err("socket= belongs to nbd+unix:// URIs".into());
                }
                let host = match url.host() {
                    Some(url::Host::Ipv6(a)) => a.to_string(),
                    Some(h) => percent(&h.to_string())?,
                    None => return Err("no host: nbd://HOST[:PORT]/EXPORT".into()),
                };
                if host.is_empty() {
                    return Err("no host: nbd://HOST[:PORT]/EXPORT".into());
                }
                Server::Tcp {
                    host,
                    port: url.port().unwrap_or(DEFAULT_PORT),
                }
            }
            "nbd+unix" => {
                if url.host_str().is_some_and(|h| !h.is_empty()) || url.port().is_some() {
                    return Err("nbd+unix:// takes no host: nbd+unix:///EXPORT?socket=PATH".into());
                }
                match socket {
                    Some(p) if p.is_absolute() => Server::Unix(p),
                    Some(p) => {
                        return Err(format!("socket={} must be an absolute path", p.display()))
                    }
                    None => return Err("nbd+unix:// needs ?socket=PATH".into()),
                }
            }
            other => {
                return Err(format!(
                    "the transport {other}:// is not supported; use nbd:// or nbd+unix://"
                ))
            }
        };
        Ok(Uri { server, export })
    }

    /// A stable identity for the overlap and recovery checks: the same
    /// export named the same way is the same device, across restarts and
    /// rdm versions (FNV-1a of the normalized address).
    pub fn identity(&self) -> (u64, u64) {
        let norm = match &self.server {
            Server::Tcp { host, port } => format!(
                "tcp\0{}\0{port}\0{}",
                host.to_ascii_lowercase(),
                self.export
            ),
            Server::Unix(p) => format!("unix\0{}\0{}", p.display(), self.export),
        };
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in norm.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        (u64::MAX - 2, h)
    }
}

impl fmt::Display for Uri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.server {
            Server::Tcp { host, port } if host.contains(':') => {
                write!(f, "nbd://[{host}]:{port}/{}", self.export)
            }
            Server::Tcp { host, port } => write!(f, "nbd://{host}:{port}/{}", self.export),
            Server::Unix(p) => write!(f, "nbd+unix:///{}?socket={}", self.export, p.display()),
        }
    }
}

/// Percent-decoding (RFC 3986) into UTF-8.
fn percent(s: &str) -> Result<String, String> {
    let mut out = Vec::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok());
            let v = hex
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("bad percent escape in {s:?}"))?;
            out.push(v);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("{s:?} is not UTF-8 once decoded"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_and_unix_uris() {
        let u = Uri::parse("nbd://example.com/disk").unwrap();
        assert_eq!(
            u.server,
            Server::Tcp {
                host: "example.com".into(),
                port: DEFAULT_PORT
            }
        );
        assert_eq!(u.export, "disk");
        let u = Uri::parse("nbd://127.0.0.1:10810/a%20b").unwrap();
        assert_eq!(u.export, "a b");
        assert_eq!(u.to_string(), "nbd://127.0.0.1:10810/a b");
        let u = Uri::parse("nbd://[::1]:7000/").unwrap();
        assert_eq!(
            u.server,
            Server::Tcp {
                host: "::1".into(),
                port: 7000
            }
        );
        assert_eq!(u.export, "");
        let u = Uri::parse("nbd+unix:///e0?socket=/run/q.sock").unwrap();
        assert_eq!(u.server, Server::Unix("/run/q.sock".into()));
        assert_eq!(u.export, "e0");
        let u = Uri::parse("nbd+unix://?socket=/run/q.sock").unwrap();
        assert_eq!(u.export, "");
    }

    #[test]
    fn refusals_say_why() {
        for (s, why) in [
            ("nbds://h/e", "TLS"),
            ("nbd+unix:///e", "socket="),
            ("nbd+unix:///e?socket=rel.sock", "absolute"),
            ("nbd+unix://host/e?socket=/s", "no host"),
            ("nbd://h/e?socket=/s", "nbd+unix"),
            ("nbd+vsock://1/e", "not supported"),
            ("nbd://h/e?tls=on", "not supported"),
            ("nbd:///e", "no host"),
            ("nbd://u:p@h/e", "passwords"),
        ] {
            let e = Uri::parse(s).unwrap_err();
            assert!(e.contains(why), "{s}: {e}");
        }
    }

    #[test]
    fn which_devices_are_exports() {
        assert!(is_nbd(Path::new("nbd://h/e")));
        assert!(is_nbd(Path::new("nbd+unix:///e?socket=/s")));
        assert!(is_nbd(Path::new("nbds://h/e")));
        assert!(!is_nbd(Path::new("/srv/nbd://x")));
        assert!(!is_nbd(Path::new("/srv/a.img")));
    }

    #[test]
    fn identity_is_stable_and_names_the_export() {
        let a = Uri::parse("nbd://H:1/e").unwrap().identity();
        assert_eq!(a, Uri::parse("nbd://h:1/e").unwrap().identity());
        assert_ne!(a, Uri::parse("nbd://h:1/f").unwrap().identity());
        assert_ne!(a, Uri::parse("nbd://h:2/e").unwrap().identity());
        // Recorded in state files: must never change between versions.
        assert_eq!(
            Uri::parse("nbd://h/e").unwrap().identity(),
            (u64::MAX - 2, 0x8936_8d07_a64e_3077)
        );
    }
}
