//! Registry hosts the way containerd reads them (`config_path` of its CRI
//! registry config): a directory holding `<host[:port]>/hosts.toml` per
//! registry, and `_default/hosts.toml` for every registry without one.
//!
//! The rules follow containerd's `core/remotes/docker/config/hosts.go` and
//! `config_unix.go`:
//!
//! - The directory of registry `host:port` is `<dir>/host_port_` if present,
//!   else `<dir>/host:port`, else `<dir>/_default`.
//! - Each `[host."<url>"]` table is a mirror, tried in the order the file lists
//!   them; `server` (or, without one, the registry itself) is tried last.
//!   The registry itself is then reached as wasmrun's own settings say
//!   (https unless `insecure_registries` or `[registries]` make it http);
//!   containerd would use plain http for a `localhost`/loopback name with a
//!   port other than 443, so give such a registry a `server = "http://…"`.
//! - A url without a scheme is `https://`; its path, when given, gets `/v2`
//!   appended unless `override_path = true`.
//! - `capabilities` defaults to all; a reference by tag is resolved only by a
//!   host with `resolve` and `pull`, one by digest by a host with `pull`.
//! - `ca` is a path or a list of paths, relative ones to the host directory;
//!   `skip_verify` turns certificate checks off for that host.
//! - A file that cannot be parsed is ignored with an error logged, as if the
//!   registry had no host directory.
//!
//! wasmrun does not use `client` (client certificates), `header` or
//! `dial_timeout`; a host whose API path is not `/v2` (a path prefix, or
//! `override_path`) cannot be reached through oci-client and is skipped.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The settings one `[host."…"]` table (or the file's top level, for
/// `server`) may give.
#[derive(Debug, Default, Deserialize)]
struct HostFields {
    #[serde(default)]
    capabilities: Vec<String>,
    #[serde(default)]
    ca: Option<OneOrMany>,
    #[serde(default)]
    skip_verify: Option<bool>,
    #[serde(default)]
    override_path: bool,
    #[serde(default)]
    client: Option<toml::Value>,
    #[serde(default)]
    header: Option<toml::Table>,
    #[serde(default)]
    dial_timeout: Option<String>,
}

/// A whole `hosts.toml`. The top-level fields describe `server`.
#[derive(Debug, Default, Deserialize)]
struct HostsFile {
    #[serde(default)]
    server: Option<String>,
    #[serde(flatten)]
    server_fields: HostFields,
    /// Mirrors, each with the span of its table so that file order is kept.
    #[serde(default)]
    host: BTreeMap<String, toml::Spanned<HostFields>>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

/// One host a registry's images may be fetched from, as a hosts.toml gives it.
#[derive(Debug, Clone, PartialEq)]
pub struct HostEntry {
    /// `host[:port]` to connect to; empty for "the registry itself" (a file
    /// without `server`).
    pub host: String,
    /// Plain http (`http://` url) instead of https.
    pub http: bool,
    /// The API path: `/v2` unless the url gave a prefix or `override_path`.
    pub path: String,
    /// May resolve a tag to a manifest (`resolve` capability).
    pub resolve: bool,
    /// May serve manifests and blobs by digest (`pull` capability).
    pub pull: bool,
    /// CA certificate files to trust for this host, besides the system's.
    pub ca_files: Vec<PathBuf>,
    /// Accept any certificate (`skip_verify = true`).
    pub skip_verify: bool,
    /// The last entry: `server`, or the registry itself; the others are mirrors.
    pub upstream: bool,
    /// Keys given that wasmrun does not use (`client`, `header`, `dial_timeout`).
    pub unused_keys: Vec<&'static str>,
}

/// The hosts.toml that applies to `registry` (`host[:port]`, as image
/// references name it) under `dir`, and its entries in the order to try;
/// `None` when no host directory applies or it holds no hosts.toml.
///
/// Blocking (reads the disk). A file that cannot be read or parsed is logged
/// and ignored, as containerd does; see the module documentation.
pub fn load(dir: &Path, registry: &str) -> Option<(PathBuf, Vec<HostEntry>)> {
    let host_dir = host_dir(dir, registry)?;
    let file = host_dir.join("hosts.toml");
    let text = match std::fs::read_to_string(&file) {
        Ok(text) if !text.trim().is_empty() => text,
        Ok(_) => return None,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::error!(file = %file.display(), error = %e, "cannot read a registry hosts file; ignoring it");
            return None;
        }
    };
    match parse(&host_dir, &text) {
        Ok(entries) => Some((file, entries)),
        Err(e) => {
            tracing::error!(file = %file.display(), error = %e, "cannot parse a registry hosts file; ignoring it");
            None
        }
    }
}

/// Checks every `hosts.toml` directly below `dir`, for a clear refusal at start.
pub fn check_dir(dir: &Path) -> Result<(), String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
    for entry in entries.flatten() {
        let file = entry.path().join("hosts.toml");
        match std::fs::read_to_string(&file) {
            Ok(text) => {
                parse(&entry.path(), &text).map_err(|e| format!("{}: {e}", file.display()))?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("cannot read {}: {e}", file.display())),
        }
    }
    Ok(())
}

/// containerd's `hostPaths` (unix): `host_port_`, then `host:port`, then `_default`.
fn host_dir(dir: &Path, registry: &str) -> Option<PathBuf> {
    let mut candidates = Vec::new();
    if let Some((host, port)) = registry.rsplit_once(':')
        && !host.is_empty()
    {
        candidates.push(format!("{host}_{port}_"));
    }
    candidates.push(registry.to_owned());
    candidates.push("_default".to_owned());
    candidates
        .into_iter()
        // A registry name is host[:port]; one with a path separator or `..` names no directory.
        .filter(|name| !name.contains('/') && name != ".." && name != ".")
        .map(|name| dir.join(name))
        .find(|path| path.exists())
}

/// Parses one hosts.toml whose directory is `host_dir` (relative `ca` paths
/// are relative to it).
pub fn parse(host_dir: &Path, text: &str) -> Result<Vec<HostEntry>, String> {
    let file: HostsFile = toml::from_str(text).map_err(|e| e.to_string())?;
    let mut mirrors: Vec<(&String, &toml::Spanned<HostFields>)> = file.host.iter().collect();
    mirrors.sort_by_key(|(_, fields)| fields.span().start);
    let mut entries = Vec::with_capacity(mirrors.len() + 1);
    for (url, fields) in mirrors {
        entries.push(entry(host_dir, url, fields.get_ref(), false)?);
    }
    entries.push(entry(host_dir, file.server.as_deref().unwrap_or(""), &file.server_fields, true)?);
    Ok(entries)
}

fn entry(host_dir: &Path, url: &str, fields: &HostFields, upstream: bool) -> Result<HostEntry, String> {
    let (http, host, path) = if url.is_empty() {
        (false, String::new(), "/v2".to_owned())
    } else {
        let (http, rest) = if let Some(rest) = url.strip_prefix("http://") {
            (true, rest)
        } else if let Some(rest) = url.strip_prefix("https://") {
            (false, rest)
        } else if url.contains("://") {
            return Err(format!("host {url:?}: only http:// and https:// urls are supported"));
        } else {
            (false, url)
        };
        let (host, path) = match rest.find('/') {
            Some(slash) => (&rest[..slash], clean_path(&rest[slash..])),
            None => (rest, String::new()),
        };
        if host.is_empty() || host.chars().any(|c| c.is_whitespace() || matches!(c, '?' | '#' | '@')) {
            return Err(format!("host {url:?}: not a url of a registry host"));
        }
        let path = match (path.is_empty(), fields.override_path) {
            (true, false) => "/v2".to_owned(),
            (false, false) if !path.ends_with("/v2") => format!("{path}/v2"),
            _ => path,
        };
        (http, host.to_owned(), path)
    };
    let (mut pull, mut resolve) = (fields.capabilities.is_empty(), fields.capabilities.is_empty());
    for capability in &fields.capabilities {
        match capability.to_ascii_lowercase().as_str() {
            "pull" => pull = true,
            "resolve" => resolve = true,
            "push" | "referrers" => {}
            other => return Err(format!("host {url:?}: unknown capability {other:?}")),
        }
    }
    let ca_files = match &fields.ca {
        None => Vec::new(),
        Some(OneOrMany::One(path)) => vec![host_dir.join(path)],
        Some(OneOrMany::Many(paths)) => paths.iter().map(|path| host_dir.join(path)).collect(),
    };
    let mut unused_keys = Vec::new();
    if fields.client.is_some() {
        unused_keys.push("client");
    }
    if fields.header.is_some() {
        unused_keys.push("header");
    }
    if fields.dial_timeout.is_some() {
        unused_keys.push("dial_timeout");
    }
    Ok(HostEntry {
        host,
        http,
        path,
        resolve,
        pull,
        ca_files,
        skip_verify: fields.skip_verify.unwrap_or(false),
        upstream,
        unused_keys,
    })
}

/// Go's `path.Clean` for the absolute paths a url has: no empty, `.` or `..`
/// segments, no trailing slash; `/` stays `/`, which containerd then treats
/// like any other path.
fn clean_path(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            part => parts.push(part),
        }
    }
    format!("/{}", parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirrors_keep_file_order_and_server_comes_last() {
        let text = r#"
            server = "https://registry.example.com"
            ca = "server-ca.pem"

            [host."http://zeta.mirror:5000"]
              capabilities = ["pull", "resolve"]

            [host."alpha.mirror"]
              capabilities = ["pull"]
              skip_verify = true
              ca = ["/etc/ca.pem", "local.pem"]
              header = { x = "y" }

            [host."https://prefixed.mirror/cache"]

            [host."https://raw.mirror/raw/api"]
              override_path = true
        "#;
        let entries = parse(Path::new("/certs.d/r.io"), text).unwrap();
        let hosts: Vec<&str> = entries.iter().map(|e| e.host.as_str()).collect();
        assert_eq!(
            hosts,
            ["zeta.mirror:5000", "alpha.mirror", "prefixed.mirror", "raw.mirror", "registry.example.com"]
        );
        assert!(entries[0].http && entries[0].pull && entries[0].resolve && !entries[0].upstream);
        assert!(!entries[1].http && entries[1].pull && !entries[1].resolve && entries[1].skip_verify);
        assert_eq!(entries[1].ca_files, [PathBuf::from("/etc/ca.pem"), PathBuf::from("/certs.d/r.io/local.pem")]);
        assert_eq!(entries[1].unused_keys, ["header"]);
        assert_eq!(entries[0].path, "/v2");
        assert_eq!(entries[2].path, "/cache/v2");
        assert_eq!(entries[3].path, "/raw/api");
        let server = &entries[4];
        assert!(server.upstream && server.pull && server.resolve && !server.http);
        assert_eq!(server.ca_files, [PathBuf::from("/certs.d/r.io/server-ca.pem")]);
    }

    #[test]
    fn a_file_without_server_ends_with_the_registry_itself() {
        let entries = parse(Path::new("/d"), "[host.\"http://127.0.0.1:5000\"]\n").unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[1].host, "");
        assert!(entries[1].upstream);
        assert!(parse(Path::new("/d"), "").unwrap()[0].upstream);
    }

    #[test]
    fn bad_files_are_refused() {
        for bad in [
            "server = 5",
            "[host.\"m\"]\ncapabilities = [\"fly\"]",
            "[host.\"ftp://m\"]",
            "[host.\"https:///v2\"]",
            "[host.\"m\"]\nca = 7",
            "not toml",
        ] {
            assert!(parse(Path::new("/d"), bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn host_directories_are_found_as_containerd_finds_them() {
        let dir = std::env::temp_dir().join(format!("wasmrun-hosts-{}", rand::random::<u64>()));
        std::fs::create_dir_all(dir.join("r.io:5000")).unwrap();
        assert_eq!(host_dir(&dir, "r.io:5000"), Some(dir.join("r.io:5000")));
        std::fs::create_dir_all(dir.join("r.io_5000_")).unwrap();
        assert_eq!(host_dir(&dir, "r.io:5000"), Some(dir.join("r.io_5000_")));
        assert_eq!(host_dir(&dir, "other.io"), None);
        std::fs::create_dir_all(dir.join("_default")).unwrap();
        assert_eq!(host_dir(&dir, "other.io"), Some(dir.join("_default")));
        std::fs::write(dir.join("_default/hosts.toml"), "[host.\"http://m:1\"]\n").unwrap();
        let (file, entries) = load(&dir, "other.io").unwrap();
        assert_eq!(file, dir.join("_default/hosts.toml"));
        assert_eq!(entries[0].host, "m:1");
        // A directory without hosts.toml gives no entries (containerd would read its cert files).
        assert_eq!(load(&dir, "r.io:5000"), None);
        std::fs::write(dir.join("r.io_5000_/hosts.toml"), "[host.\"m\"]\ncapabilities = [\"fly\"]\n").unwrap();
        assert_eq!(load(&dir, "r.io:5000"), None, "an unparsable file is ignored");
        assert!(check_dir(&dir).is_err());
        let _ = std::fs::remove_dir_all(dir);
    }
}
