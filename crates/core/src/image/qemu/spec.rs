//! What QEMU is asked to open, as the blockdev options of its `json:{...}`
//! image name: a format node over a file node (a local file, a block
//! device, a URL of one of QEMU's protocol drivers, or the user's own
//! `json:{...}`). Secrets are never in it, only the ids of the secret
//! objects the child reads from its descriptors (`secrets.rs`).

use super::secrets::{KEY_SECRET, PASSWORD_SECRET};
use crate::image::nbd::percent_decode;
use serde_json::{json, Value};
use std::path::Path;

/// Prefixes of the places QEMU's protocol drivers read (`rbd:` is Ceph's
/// own form; `json:` is QEMU's catch-all).
const PLACES: &[&str] = &["http://", "https://", "ftp://", "ftps://", "ssh://", "iscsi://", "nfs://", "rbd:", "json:"];

/// Protocols QEMU can only read (its curl driver).
const READ_ONLY_PROTOCOLS: &[&str] = &["http", "https", "ftp", "ftps"];

/// Whether `image` names a place QEMU reads rather than a local file.
pub fn is_place(image: &str) -> bool {
    PLACES.iter().any(|prefix| image.starts_with(prefix))
}

/// A place as QEMU's file node, how it may be shown, and what it allows.
#[derive(Debug, Clone)]
pub struct FileNode {
    pub options: Value,
    /// The place without user information or secrets.
    pub shown: String,
    pub read_only: bool,
    /// The user's `json:{...}` named the format node already.
    pub format: Option<String>,
}

impl FileNode {
    /// A file or block device of this machine.
    pub fn is_local(&self) -> bool {
        self.options["driver"] == "file" || self.options["driver"] == "host_device"
    }
}

/// The file node of a local file or block device.
pub fn local_file(path: &Path) -> FileNode {
    let block_device = std::fs::metadata(path).is_ok_and(|m| {
        use std::os::unix::fs::FileTypeExt;
        m.file_type().is_block_device()
    });
    let driver = if block_device { "host_device" } else { "file" };
    FileNode {
        options: json!({ "driver": driver, "filename": path.to_string_lossy() }),
        shown: path.display().to_string(),
        read_only: false,
        format: None,
    }
}

/// A place's URL, taken apart (`scheme://[user[:password]@]host[:port]/path[?query]`).
struct Url<'a> {
    scheme: &'a str,
    user: Option<&'a str>,
    password: Option<&'a str>,
    host: &'a str,
    port: Option<&'a str>,
    path: &'a str,
    query: &'a str,
}

impl<'a> Url<'a> {
    fn parse(image: &'a str) -> Result<Url<'a>, String> {
        let (scheme, rest) = image.split_once("://").ok_or_else(|| format!("{image} is not a URL"))?;
        let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (authority, path) = rest.find('/').map_or((rest, ""), |at| rest.split_at(at));
        let (user_info, host_port) = authority.rsplit_once('@').map_or((None, authority), |(u, h)| (Some(u), h));
        let (user, password) = match user_info.map(|info| info.split_once(':')) {
            Some(Some((user, password))) => (Some(user), Some(password)),
            Some(None) => (user_info, None),
            None => (None, None),
        };
        let (host, port) = match host_port.rsplit_once(':') {
            Some((host, port)) if !port.contains(']') => (host, Some(port)),
            _ => (host_port, None),
        };
        if host.is_empty() {
            return Err(format!("{scheme}://{}: the URL names no host", path));
        }
        Ok(Url { scheme, user, password, host, port, path, query })
    }

    /// The URL as it may be shown: user, no password.
    fn shown(&self) -> String {
        let user = self.user.map_or(String::new(), |u| format!("{u}@"));
        let port = self.port.map_or(String::new(), |p| format!(":{p}"));
        let query = if self.query.is_empty() { String::new() } else { format!("?{}", self.query) };
        format!("{}://{user}{}{port}{}{query}", self.scheme, self.host, self.path)
    }

    /// The URL without user information, for drivers that take the user apart.
    fn without_user(&self) -> String {
        let port = self.port.map_or(String::new(), |p| format!(":{p}"));
        let query = if self.query.is_empty() { String::new() } else { format!("?{}", self.query) };
        format!("{}://{}{port}{}{query}", self.scheme, self.host, self.path)
    }

    fn parameter(&self, name: &str) -> Option<&'a str> {
        self.query.split('&').find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
    }
}

/// The file node of a place (`is_place`). A password in the URL is moved
/// into a secret of its own, where QEMU's driver takes one, so that it is
/// never on the child's command line; the URL's password comes back.
pub fn place(image: &str, password_given: bool) -> Result<(FileNode, Option<String>), String> {
    if let Some(text) = image.strip_prefix("json:") {
        return user_json(text, password_given).map(|node| (node, None));
    }
    if let Some(name) = image.strip_prefix("rbd:") {
        if password_given {
            return Err(format!(
                "rbd:{}: Ceph authenticates with its keyring, not --password-file",
                strip_rbd_secrets(name)
            ));
        }
        let node = FileNode {
            options: rbd(name)?,
            shown: format!("rbd:{}", strip_rbd_secrets(name)),
            read_only: false,
            format: None,
        };
        return Ok((node, None));
    }
    let url = Url::parse(image)?;
    let shown = url.shown();
    let password = url.password.map(percent_decode);
    let secret = (password.is_some() || password_given).then_some(PASSWORD_SECRET);
    let mut options = match url.scheme {
        "http" | "https" | "ftp" | "ftps" => json!({ "driver": url.scheme, "url": url.without_user() }),
        "iscsi" => {
            let (target, lun) =
                url.path.trim_start_matches('/').split_once('/').unwrap_or((url.path.trim_start_matches('/'), "0"));
            let lun: u32 = lun.parse().map_err(|_| format!("{shown}: the LUN ({lun}) is not a number"))?;
            let portal = url.port.map_or(url.host.to_string(), |port| format!("{}:{port}", url.host));
            json!({ "driver": "iscsi", "transport": "tcp", "portal": portal, "target": percent_decode(target), "lun": lun })
        }
        "ssh" => {
            if secret.is_some() {
                return Err(format!(
                    "{shown}: ssh images log in with a key (ssh-agent or ~/.ssh/id_*), not a password"
                ));
            }
            let mut server = json!({ "host": url.host });
            if let Some(port) = url.port {
                server["port"] = port.into();
            }
            let mut node = json!({ "driver": "ssh", "server": server, "path": percent_decode(url.path) });
            if let Some(check) = url.parameter("host_key_check") {
                node["host-key-check"] = ssh_host_key_check(check)
                    .ok_or_else(|| format!("{shown}: host_key_check={check} is not one QEMU knows"))?;
            }
            node
        }
        "nfs" => {
            if secret.is_some() {
                return Err(format!("{shown}: NFS takes no password"));
            }
            json!({ "driver": "nfs", "server": { "type": "inet", "host": url.host }, "path": percent_decode(url.path) })
        }
        other => return Err(format!("{shown}: QEMU reads no {other}:// places")),
    };
    let user_key = if url.scheme == "iscsi" { "user" } else { "username" };
    if let (Some(user), true) = (url.user, matches!(url.scheme, "http" | "https" | "ftp" | "ftps" | "iscsi")) {
        options[user_key] = percent_decode(user).into();
    }
    if url.scheme == "ssh" {
        if let Some(user) = url.user {
            options["user"] = percent_decode(user).into();
        }
    }
    if let Some(id) = secret {
        options["password-secret"] = id.into();
    }
    let read_only = READ_ONLY_PROTOCOLS.contains(&url.scheme);
    Ok((FileNode { options, shown, read_only, format: None }, password))
}

/// QEMU's `host_key_check=` URL values as its `host-key-check` option.
fn ssh_host_key_check(value: &str) -> Option<Value> {
    match value {
        "no" => Some(json!({ "mode": "none" })),
        "yes" => Some(json!({ "mode": "known_hosts" })),
        _ => {
            let (kind, hash) = value.split_once(':')?;
            ["md5", "sha1", "sha256"].contains(&kind).then(|| json!({ "mode": "hash", "type": kind, "hash": hash }))
        }
    }
}

/// Ceph's `rbd:POOL/[NAMESPACE/]IMAGE[@SNAPSHOT][:id=USER][:conf=FILE]`.
fn rbd(name: &str) -> Result<Value, String> {
    let mut parts = name.split(':');
    let spec = parts.next().unwrap_or_default();
    let (spec, snapshot) = spec.split_once('@').map_or((spec, None), |(s, snap)| (s, Some(snap)));
    let names: Vec<&str> = spec.split('/').collect();
    let mut node = match names.as_slice() {
        [pool, image] => json!({ "driver": "rbd", "pool": pool, "image": image }),
        [pool, namespace, image] => json!({ "driver": "rbd", "pool": pool, "namespace": namespace, "image": image }),
        _ => return Err(format!("rbd:{}: give rbd:POOL/IMAGE", strip_rbd_secrets(name))),
    };
    if let Some(snapshot) = snapshot {
        node["snapshot"] = snapshot.into();
    }
    for option in parts {
        match option.split_once('=') {
            Some(("id", user)) => node["user"] = user.into(),
            Some(("conf", file)) => node["conf"] = file.into(),
            _ => {}
        }
    }
    Ok(node)
}

/// A Ceph name's `key=` / `keyring=` options are not for the logs.
fn strip_rbd_secrets(name: &str) -> String {
    name.split(':')
        .filter(|part| !part.starts_with("key=") && !part.starts_with("keyring="))
        .collect::<Vec<_>>()
        .join(":")
}

/// The user's own `json:{...}`: a format node (its `driver` is a format)
/// or a file node; shown as its driver and the place it names.
fn user_json(text: &str, password_given: bool) -> Result<FileNode, String> {
    let options: Value = serde_json::from_str(text).map_err(|e| format!("json: image options are not JSON: {e}"))?;
    let driver = options.get("driver").and_then(Value::as_str).unwrap_or("").to_string();
    let format = crate::image::probe::QEMU_FORMATS.contains(&driver.as_str()).then(|| driver.clone());
    let file = if format.is_some() { options.get("file").cloned().unwrap_or(Value::Null) } else { options.clone() };
    let place = ["url", "filename", "path"].iter().find_map(|key| file.get(*key).and_then(Value::as_str));
    let file_driver = file.get("driver").and_then(Value::as_str).unwrap_or("");
    let shown = format!("json:{}", place.map_or(file_driver.to_string(), |p| format!("{file_driver} {p}")));
    if password_given && !text.contains(PASSWORD_SECRET) {
        return Err(format!(
            "{shown}: with json: options, --password-file is the secret \"{PASSWORD_SECRET}\": \
             name it where the driver takes a password (\"password-secret\": \"{PASSWORD_SECRET}\")"
        ));
    }
    Ok(FileNode { read_only: READ_ONLY_PROTOCOLS.contains(&file_driver), options, shown, format })
}

/// The format node over `file`: the image QEMU serves. The key, when one
/// is given, unlocks a LUKS image or a qcow2 / qcow image's encryption.
pub fn format_node(format: &str, file: &FileNode, with_key: bool) -> Value {
    if file.format.is_some() {
        return file.options.clone();
    }
    let mut node = json!({ "driver": format, "file": file.options });
    if with_key {
        if format == "luks" {
            node["key-secret"] = KEY_SECRET.into();
        } else {
            node["encrypt"] = json!({ "key-secret": KEY_SECRET });
        }
    }
    node
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_in_an_http_url_moves_into_a_secret() {
        let (node, password) = place("https://ann:s3cret@example.org/disk.qcow2", false).unwrap();
        assert_eq!(password.as_deref(), Some("s3cret"));
        assert_eq!(node.shown, "https://ann@example.org/disk.qcow2");
        assert!(node.read_only);
        let text = node.options.to_string();
        assert!(!text.contains("s3cret"), "{text}");
        assert_eq!(node.options["username"], "ann");
        assert_eq!(node.options["password-secret"], PASSWORD_SECRET);
        assert_eq!(node.options["url"], "https://example.org/disk.qcow2");
    }

    #[test]
    fn drivers_that_take_no_password_refuse_one() {
        let error = place("ssh://root:pw@127.0.0.1:2222/srv/disk.img", false).unwrap_err();
        assert!(error.contains("key"), "{error}");
        assert!(!error.contains(":pw@"), "{error}");
        assert!(place("nfs://127.0.0.1/export/disk.img", true).is_err());
    }

    #[test]
    fn ssh_iscsi_nfs_and_rbd_places_become_their_drivers_options() {
        let (node, _) = place("ssh://root@127.0.0.1:2222/srv/disk%20a.img?host_key_check=sha256:abcd", false).unwrap();
        assert_eq!(
            node.options,
            json!({ "driver": "ssh", "server": { "host": "127.0.0.1", "port": "2222" }, "path": "/srv/disk a.img",
                    "user": "root", "host-key-check": { "mode": "hash", "type": "sha256", "hash": "abcd" } })
        );
        assert!(!node.read_only);
        let (node, password) = place("iscsi://joe:pw@127.0.0.1:3260/iqn.2026-01.test:t/1", false).unwrap();
        assert_eq!(password.as_deref(), Some("pw"));
        assert_eq!(
            node.options,
            json!({ "driver": "iscsi", "transport": "tcp", "portal": "127.0.0.1:3260", "target": "iqn.2026-01.test:t",
                    "lun": 1, "user": "joe", "password-secret": PASSWORD_SECRET })
        );
        assert_eq!(node.shown, "iscsi://joe@127.0.0.1:3260/iqn.2026-01.test:t/1");
        let (node, _) = place("nfs://10.0.0.1/export/disk.img", false).unwrap();
        assert_eq!(node.options["path"], "/export/disk.img");
        let (node, _) = place("rbd:pool/image@snap:id=admin:key=AQBx==", false).unwrap();
        assert_eq!(node.shown, "rbd:pool/image@snap:id=admin");
        assert_eq!(
            node.options,
            json!({ "driver": "rbd", "pool": "pool", "image": "image", "snapshot": "snap", "user": "admin" })
        );
    }

    #[test]
    fn user_json_names_its_format_or_its_file() {
        let (node, _) =
            place(r#"json:{"driver":"vmdk","file":{"driver":"http","url":"http://h/d.vmdk"}}"#, false).unwrap();
        assert_eq!(node.format.as_deref(), Some("vmdk"));
        assert!(node.read_only);
        assert_eq!(node.shown, "json:http http://h/d.vmdk");
        assert!(place("json:{nope", false).is_err());
    }

    #[test]
    fn the_key_goes_where_each_format_takes_it() {
        let file = local_file(Path::new("/images/a.img"));
        assert_eq!(format_node("luks", &file, true)["key-secret"], KEY_SECRET);
        assert_eq!(format_node("qcow2", &file, true)["encrypt"]["key-secret"], KEY_SECRET);
        assert!(format_node("vmdk", &file, false).get("encrypt").is_none());
        assert_eq!(format_node("vmdk", &file, false)["file"]["filename"], "/images/a.img");
    }
}
