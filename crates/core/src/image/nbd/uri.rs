//! NBD URIs (`nbd://HOST[:PORT][/EXPORT]`, `nbd+unix:///EXPORT?socket=PATH`,
//! and their TLS forms `nbds://`, `nbds+unix://`): recognised, checked
//! enough to name the address in errors, and shown without secrets.
//! Connecting is libnbd's job, with the URI exactly as given.

const SCHEMES: &[&str] = &["nbd://", "nbds://", "nbd+unix://", "nbds+unix://"];

/// Query parameters that may be shown; the rest (TLS key files, PSK
/// identities, anything unknown) are dropped from what is shown.
const SHOWN_PARAMETERS: &[&str] = &["socket"];

pub fn is_uri(image: &str) -> bool {
    SCHEMES.iter().any(|scheme| image.starts_with(scheme))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NbdUri {
    /// The URI without user information and without secret parameters.
    pub shown: String,
    /// Where the server is: `HOST:PORT` or the socket's path.
    pub address: String,
}

pub fn parse(uri: &str) -> Result<NbdUri, String> {
    let bad = |why: &str| format!("Bad NBD URI {}: {why}", strip(uri));
    let scheme = SCHEMES.iter().find(|s| uri.starts_with(**s)).ok_or_else(|| bad("unknown scheme"))?;
    let rest = &uri[scheme.len()..];
    let (before_query, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (authority, _export) = before_query.split_once('/').unwrap_or((before_query, ""));
    let host = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
    let socket = query.split('&').find_map(|p| p.strip_prefix("socket="));
    let address = if scheme.contains("+unix") {
        if !host.is_empty() {
            return Err(bad("a Unix socket URI has no host (nbd+unix:///EXPORT?socket=PATH)"));
        }
        match socket {
            Some(path) if !path.is_empty() => percent_decode(path),
            _ => return Err(bad("it needs ?socket=PATH")),
        }
    } else {
        if host.is_empty() {
            return Err(bad("it needs a host (nbd://HOST[:PORT][/EXPORT])"));
        }
        if let Some((_, port)) = host.rsplit_once(':').filter(|_| !host.ends_with(']')) {
            if port.parse::<u16>().is_err() {
                return Err(bad("the port is not a number"));
            }
            host.to_string()
        } else {
            format!("{host}:10809")
        }
    };
    Ok(NbdUri { shown: strip(uri), address })
}

/// The URI without user information and with only harmless parameters.
pub fn strip(uri: &str) -> String {
    let (scheme, rest) = uri.split_once("://").unwrap_or(("", uri));
    let (before_query, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (authority, path) = match before_query.split_once('/') {
        Some((authority, path)) => (authority, Some(path)),
        None => (before_query, None),
    };
    let host = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
    let kept: Vec<&str> =
        query.split('&').filter(|p| SHOWN_PARAMETERS.iter().any(|name| p.split('=').next() == Some(*name))).collect();
    let mut shown = format!("{scheme}://{host}");
    if let Some(path) = path {
        shown.push('/');
        shown.push_str(path);
    }
    if !kept.is_empty() {
        shown.push('?');
        shown.push_str(&kept.join("&"));
    }
    shown
}

/// A URI part as the text it stands for (`%2F` → `/`); invalid UTF-8 is
/// replaced, never refused.
pub fn percent_decode(text: &str) -> String {
    percent_encoding::percent_decode_str(text).decode_utf8_lossy().into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_the_nbd_schemes_only() {
        assert!(is_uri("nbd://localhost"));
        assert!(is_uri("nbds://host:10809/export"));
        assert!(is_uri("nbd+unix:///?socket=/tmp/s"));
        assert!(is_uri("nbds+unix:///x?socket=/tmp/s"));
        assert!(!is_uri("disk.img"));
        assert!(!is_uri("/srv/nbd://x"));
        assert!(!is_uri("http://host/disk.img"));
    }

    #[test]
    fn tcp_addresses_default_to_port_10809() {
        assert_eq!(parse("nbd://127.0.0.1/disk").unwrap().address, "127.0.0.1:10809");
        assert_eq!(parse("nbd://127.0.0.1:1234").unwrap().address, "127.0.0.1:1234");
        assert_eq!(parse("nbd://[::1]:99/e").unwrap().address, "[::1]:99");
    }

    #[test]
    fn unix_addresses_are_the_socket_path() {
        let uri = parse("nbd+unix:///export?socket=/run/nbd%20x.sock").unwrap();
        assert_eq!(uri.address, "/run/nbd x.sock");
        assert_eq!(uri.shown, "nbd+unix:///export?socket=/run/nbd%20x.sock");
    }

    #[test]
    fn bad_uris_are_refused_with_the_reason() {
        assert!(parse("nbd+unix:///export").unwrap_err().contains("socket=PATH"));
        assert!(parse("nbd+unix://host/?socket=/s").unwrap_err().contains("no host"));
        assert!(parse("nbd:///export").unwrap_err().contains("needs a host"));
        assert!(parse("nbd://host:port/").unwrap_err().contains("port"));
    }

    #[test]
    fn secrets_are_never_shown() {
        let uri = "nbds://alice:hunter2@server:10809/disk?tls-psk-file=/etc/keys.psk&tls-certificates=/etc/pki";
        let parsed = parse(uri).unwrap();
        assert_eq!(parsed.shown, "nbds://server:10809/disk");
        assert!(!parsed.shown.contains("hunter2") && !parsed.shown.contains("alice") && !parsed.shown.contains("psk"));
        assert_eq!(strip("nbds+unix://bob@/e?tls-psk-file=/k&socket=/s&tls-username=bob"), "nbds+unix:///e?socket=/s");
        assert!(!parse("nbd://u:secret@h:x/").unwrap_err().contains("secret"));
    }
}
