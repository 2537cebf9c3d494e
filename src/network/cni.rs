//! The CNI contract as libcni keeps it for containerd (the CNI spec,
//! `SPEC.md`, versions 0.3.0 to 1.1.0): which configuration is loaded, how a
//! plugin is executed, and what its result says.
//!
//! - **Configuration** ([`load`]): the first file of the configuration
//!   directory, in lexical order, ending in `.conf`, `.conflist` or `.json`,
//!   as libcni's `ConfFiles` lists them and containerd's `go-cni` loads its
//!   one network. A `.conflist` is a list; any other file is one plugin's
//!   configuration, made a list of one (libcni's `ConfListFromConf`). A file
//!   that does not parse, or a list without plugins, is an error, as
//!   containerd reports it (it does not skip to the next file).
//! - **Execution** ([`add`], [`del`]): each plugin of the list is the
//!   executable named by its `type`, found in the plugin directories in
//!   order; it gets the `CNI_*` variables besides the daemon's environment,
//!   and its configuration on stdin: the plugin's object with the list's
//!   `name` and `cniVersion`, the previous plugin's result as `prevResult`,
//!   and `runtimeConfig` holding the capability arguments the plugin declares
//!   in `capabilities` (libcni's `buildOneConfig`). ADD runs the plugins in
//!   order; DEL in reverse, each given the cached ADD result as `prevResult`
//!   from version 0.4.0 on. A plugin that fails prints an error object
//!   (`code`, `msg`, `details`) on stdout.
//! - **Result** ([`pod_ips`]): the addresses of the result's `ips` on the
//!   interface named `CNI_IFNAME` inside the namespace, IPv4 first, as
//!   containerd selects a pod's IPs (or `ip4`/`ip6` of a 0.2.0 result).

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::io::AsyncWriteExt;

/// The file extensions libcni loads configurations from.
const EXTENSIONS: [&str; 3] = ["conf", "conflist", "json"];

/// A network configuration list, as loaded from its file; kept in a pod's
/// record, so that its DEL runs with the configuration its ADD ran with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfigList {
    /// The file it was read from.
    pub source: PathBuf,
    /// The list's `name`: the network's name.
    pub name: String,
    /// The list's `cniVersion`.
    pub cni_version: String,
    /// The plugins' configuration objects, in order; each has a `type`.
    pub plugins: Vec<Map<String, Value>>,
}

/// Loads the network configuration from `conf_dir` (see the module's
/// documentation). Blocking: reads the directory and one file.
///
/// Errors: a message saying why there is no usable configuration (no
/// directory, no file, which file does not parse and why), as the reason
/// of a `NetworkReady` condition that is false.
pub fn load(conf_dir: &Path) -> Result<ConfigList, String> {
    let entries = std::fs::read_dir(conf_dir)
        .map_err(|e| format!("cannot read the CNI config directory {}: {e}", conf_dir.display()))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| {
            path.extension().and_then(|e| e.to_str()).is_some_and(|e| EXTENSIONS.contains(&e)) && path.is_file()
        })
        .collect();
    files.sort();
    let Some(source) = files.into_iter().next() else {
        return Err(format!("no network config found in {}", conf_dir.display()));
    };
    let bytes = std::fs::read(&source).map_err(|e| format!("cannot read CNI config file {}: {e}", source.display()))?;
    parse(&source, &bytes).map_err(|why| format!("invalid CNI config file {}: {why}", source.display()))
}

/// A configuration file's contents as a list: a `.conflist` as it is, any
/// other file as one plugin's configuration.
fn parse(source: &Path, bytes: &[u8]) -> Result<ConfigList, String> {
    let value: Value = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    let Value::Object(mut object) = value else {
        return Err("it is not a JSON object".into());
    };
    let text = |object: &Map<String, Value>, key: &str| object.get(key).and_then(Value::as_str).map(str::to_owned);
    let is_list = source.extension().is_some_and(|e| e == "conflist");
    let (name, cni_version, plugins) = if is_list {
        let plugins = match object.remove("plugins") {
            Some(Value::Array(plugins)) => plugins,
            Some(_) => return Err("`plugins` is not an array".into()),
            None => return Err("it has no `plugins`".into()),
        };
        let plugins = plugins
            .into_iter()
            .map(|plugin| match plugin {
                Value::Object(plugin) => Ok(plugin),
                _ => Err("a plugin's configuration is not an object".to_owned()),
            })
            .collect::<Result<Vec<_>, _>>()?;
        (text(&object, "name"), text(&object, "cniVersion"), plugins)
    } else {
        (text(&object, "name"), text(&object, "cniVersion"), vec![object])
    };
    let name = name.filter(|name| !name.is_empty()).ok_or("it has no `name`")?;
    if plugins.is_empty() {
        return Err("its list has no plugins".into());
    }
    if let Some(index) = plugins.iter().position(|plugin| text(plugin, "type").is_none_or(|t| t.is_empty())) {
        return Err(format!("plugin {index} has no `type`"));
    }
    Ok(ConfigList {
        source: source.to_owned(),
        name,
        cni_version: cni_version.unwrap_or_else(|| "0.1.0".into()),
        plugins,
    })
}

/// What a plugin is run with besides its configuration: the `CNI_*`
/// variables and the runtime's capability arguments.
#[derive(Debug, Clone)]
pub struct Invocation<'a> {
    /// Where plugins are looked for, in order (`CNI_PATH`).
    pub bin_dirs: &'a [PathBuf],
    /// `CNI_CONTAINERID`: the pod sandbox's id.
    pub container_id: &'a str,
    /// `CNI_NETNS`; empty for a DEL whose namespace is gone (as containerd does).
    pub netns: &'a Path,
    /// `CNI_IFNAME`.
    pub ifname: &'a str,
    /// `CNI_ARGS`, as `K=V` pairs joined by `;`.
    pub args: &'a [(String, String)],
    /// The values of capabilities (`portMappings`, `bandwidth`, `dns`…); a
    /// plugin gets those it declares under `runtimeConfig`.
    pub capability_args: &'a Map<String, Value>,
}

/// Why a plugin failed: which one, at which command, and what it said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginError(pub String);

impl std::fmt::Display for PluginError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Runs ADD of every plugin of `list` in order; returns the last plugin's result.
///
/// Errors: the first plugin that failed, with its error output. What the
/// plugins before it did is not undone here: run [`del`] for that.
pub async fn add(list: &ConfigList, invocation: &Invocation<'_>) -> Result<Value, PluginError> {
    let mut previous: Option<Value> = None;
    for plugin in &list.plugins {
        let output = exec(list, plugin, "ADD", invocation, previous.as_ref()).await?;
        if !output.is_empty() {
            let result = serde_json::from_slice(&output)
                .map_err(|e| PluginError(format!("{}: its ADD result is not JSON: {e}", describe(list, plugin))))?;
            previous = Some(result);
        }
    }
    previous.ok_or_else(|| PluginError(format!("network {:?}: no plugin gave an ADD result", list.name)))
}

/// Runs DEL of every plugin of `list` in reverse order, with `cached`, the
/// ADD result, as `prevResult` where the version has one. Plugins are
/// required to succeed on a DEL of what is already gone. Unlike libcni, a
/// plugin that fails does not keep the ones before it from releasing what
/// they hold (a missing plugin would otherwise leak the bridge's addresses).
///
/// Errors: every plugin that failed, with its error output.
pub async fn del(list: &ConfigList, invocation: &Invocation<'_>, cached: Option<&Value>) -> Result<(), PluginError> {
    let cached = cached.filter(|_| version_at_least(&list.cni_version, (0, 4, 0)));
    let mut failed = Vec::new();
    for plugin in list.plugins.iter().rev() {
        if let Err(PluginError(error)) = exec(list, plugin, "DEL", invocation, cached).await {
            failed.push(error);
        }
    }
    if failed.is_empty() { Ok(()) } else { Err(PluginError(failed.join("; "))) }
}

/// `plugin type="bridge" name="mynet"`, naming a plugin in errors as libcni does.
fn describe(list: &ConfigList, plugin: &Map<String, Value>) -> String {
    let kind = plugin.get("type").and_then(Value::as_str).unwrap_or_default();
    format!("plugin type={kind:?} name={:?}", list.name)
}

/// The configuration one plugin gets on stdin (libcni's `buildOneConfig`).
fn plugin_config(
    list: &ConfigList,
    plugin: &Map<String, Value>,
    capability_args: &Map<String, Value>,
    previous: Option<&Value>,
) -> Map<String, Value> {
    let mut config = plugin.clone();
    config.insert("name".into(), Value::String(list.name.clone()));
    config.insert("cniVersion".into(), Value::String(list.cni_version.clone()));
    if let Some(previous) = previous {
        config.insert("prevResult".into(), previous.clone());
    }
    let declared = plugin.get("capabilities").and_then(Value::as_object);
    let runtime_config: Map<String, Value> = capability_args
        .iter()
        .filter(|(capability, _)| {
            declared.and_then(|declared| declared.get(*capability)).and_then(Value::as_bool).unwrap_or(false)
        })
        .map(|(capability, value)| (capability.clone(), value.clone()))
        .collect();
    if !runtime_config.is_empty() {
        config.insert("runtimeConfig".into(), Value::Object(runtime_config));
    }
    config
}

/// Runs one plugin with `command`; returns its stdout.
async fn exec(
    list: &ConfigList,
    plugin: &Map<String, Value>,
    command: &str,
    invocation: &Invocation<'_>,
    previous: Option<&Value>,
) -> Result<Vec<u8>, PluginError> {
    let who = describe(list, plugin);
    let kind = plugin.get("type").and_then(Value::as_str).unwrap_or_default();
    let binary = find_plugin(kind, invocation.bin_dirs).ok_or_else(|| {
        PluginError(format!(
            "{who} failed ({}): failed to find plugin {kind:?} in path {:?}",
            command.to_lowercase(),
            invocation.bin_dirs
        ))
    })?;
    let stdin = serde_json::to_vec(&plugin_config(list, plugin, invocation.capability_args, previous))
        .expect("a JSON object always serializes");
    let cni_args = invocation.args.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(";");
    let cni_path = std::env::join_paths(invocation.bin_dirs).unwrap_or_default();
    let failed = |what: String| PluginError(format!("{who} failed ({}): {what}", command.to_lowercase()));
    let mut child = tokio::process::Command::new(&binary)
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", invocation.container_id)
        .env("CNI_NETNS", invocation.netns)
        .env("CNI_IFNAME", invocation.ifname)
        .env("CNI_ARGS", cni_args)
        .env("CNI_PATH", cni_path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| failed(format!("cannot run {}: {e}", binary.display())))?;
    let mut input = child.stdin.take().expect("stdin is piped");
    // A plugin that exits without reading its stdin is judged by its exit status.
    let written = async move {
        let _ = input.write_all(&stdin).await;
    };
    let (_, output) = tokio::join!(written, child.wait_with_output());
    let output = output.map_err(|e| failed(format!("waiting for {}: {e}", binary.display())))?;
    if output.status.success() {
        return Ok(output.stdout);
    }
    Err(failed(error_text(&output.stdout, &output.stderr, output.status)))
}

/// A failed plugin's error: `msg` and `details` of the error object it
/// printed (CNI spec, "Error"), else its stdout; its stderr after them.
fn error_text(stdout: &[u8], stderr: &[u8], status: std::process::ExitStatus) -> String {
    let mut text = match serde_json::from_slice::<Value>(stdout) {
        Ok(error) if error.get("msg").is_some() => {
            let msg = error.get("msg").and_then(Value::as_str).unwrap_or_default();
            match error.get("details").and_then(Value::as_str).filter(|d| !d.is_empty()) {
                Some(details) => format!("{msg}: {details}"),
                None => msg.to_owned(),
            }
        }
        _ => String::from_utf8_lossy(stdout).trim().to_owned(),
    };
    let stderr = String::from_utf8_lossy(stderr);
    let stderr = stderr.trim();
    if !stderr.is_empty() {
        text = if text.is_empty() { format!("stderr: {stderr}") } else { format!("{text} (stderr: {stderr})") };
    }
    if text.is_empty() { format!("it exited with {status} and printed nothing") } else { text }
}

/// The first executable file named `kind` in `dirs`.
fn find_plugin(kind: &str, dirs: &[PathBuf]) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    if kind.is_empty() || kind.contains('/') {
        return None;
    }
    dirs.iter()
        .map(|dir| dir.join(kind))
        .find(|path| path.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

/// Whether a `cniVersion` is at least `min` (unparsable: no).
fn version_at_least(version: &str, min: (u64, u64, u64)) -> bool {
    let mut parts = version.split('.').map(|part| part.parse::<u64>());
    match (parts.next(), parts.next(), parts.next()) {
        (Some(Ok(major)), Some(Ok(minor)), patch) => (major, minor, patch.and_then(Result::ok).unwrap_or(0)) >= min,
        _ => false,
    }
}

/// The pod's addresses in an ADD result: those on interface `ifname` inside
/// the namespace (an `interfaces` entry with a `sandbox`), or every address
/// when the result ties none to an interface; IPv4 first, each family in the
/// result's order. A 0.2.0 result's `ip4` and `ip6` count too.
pub fn pod_ips(result: &Value, ifname: &str) -> Vec<IpAddr> {
    let interfaces = result.get("interfaces").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    let in_pod = |index: u64| {
        interfaces.get(index as usize).is_some_and(|interface| {
            interface.get("name").and_then(Value::as_str) == Some(ifname)
                && interface.get("sandbox").and_then(Value::as_str).is_some_and(|s| !s.is_empty())
        })
    };
    let address = |entry: &Value, key: &str| -> Option<IpAddr> {
        let cidr = entry.get(key)?.as_str()?;
        cidr.split('/').next()?.parse().ok()
    };
    let ips = result.get("ips").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    let tied = ips.iter().any(|ip| ip.get("interface").and_then(Value::as_u64).is_some_and(in_pod));
    let mut found: Vec<IpAddr> = ips
        .iter()
        .filter(|ip| !tied || ip.get("interface").and_then(Value::as_u64).is_some_and(in_pod))
        .filter_map(|ip| address(ip, "address"))
        .collect();
    for legacy in ["ip4", "ip6"] {
        if let Some(ip) = result.get(legacy).and_then(|entry| address(entry, "ip")) {
            found.push(ip);
        }
    }
    found.sort_by_key(|ip| ip.is_ipv6());
    found.dedup();
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("wasmrun-cni-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn loads_the_first_file_in_lexical_order_and_makes_a_conf_a_list() {
        let dir = dir();
        assert!(load(&dir).unwrap_err().contains("no network config found"));
        std::fs::write(dir.join("20-b.conflist"), r#"{"cniVersion":"1.0.0","name":"b","plugins":[{"type":"bridge"},{"type":"portmap","capabilities":{"portMappings":true}}]}"#).unwrap();
        std::fs::write(dir.join("README"), "not a config").unwrap();
        let list = load(&dir).unwrap();
        assert_eq!((list.name.as_str(), list.plugins.len()), ("b", 2));
        std::fs::write(dir.join("10-a.conf"), r#"{"cniVersion":"0.4.0","name":"a","type":"bridge","bridge":"cni0"}"#)
            .unwrap();
        let list = load(&dir).unwrap();
        assert_eq!((list.name.as_str(), list.cni_version.as_str(), list.plugins.len()), ("a", "0.4.0", 1));
        assert_eq!(list.plugins[0]["bridge"], "cni0");
        std::fs::write(dir.join("05-bad.conflist"), r#"{"name":"x","plugins":[]}"#).unwrap();
        let error = load(&dir).unwrap_err();
        assert!(error.contains("05-bad.conflist") && error.contains("no plugins"), "{error}");
        std::fs::write(dir.join("05-bad.conflist"), "{").unwrap();
        assert!(load(&dir).unwrap_err().contains("05-bad.conflist"));
        std::fs::write(dir.join("05-bad.conflist"), r#"{"name":"x","plugins":[{"bridge":"y"}]}"#).unwrap();
        assert!(load(&dir).unwrap_err().contains("no `type`"));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_plugin_gets_the_list_name_its_previous_result_and_only_the_capabilities_it_declares() {
        let list = ConfigList {
            source: "x.conflist".into(),
            name: "net".into(),
            cni_version: "1.0.0".into(),
            plugins: vec![
                json!({"type":"bridge"}).as_object().unwrap().clone(),
                json!({"type":"portmap","capabilities":{"portMappings":true,"dns":false}}).as_object().unwrap().clone(),
            ],
        };
        let capabilities = json!({"portMappings":[{"hostPort":8080,"containerPort":80,"protocol":"tcp"}],"dns":{"servers":["10.0.0.10"]}});
        let capabilities = capabilities.as_object().unwrap();
        let first = plugin_config(&list, &list.plugins[0], capabilities, None);
        assert_eq!(Value::Object(first), json!({"type":"bridge","name":"net","cniVersion":"1.0.0"}));
        let previous = json!({"ips":[{"address":"10.1.0.2/16"}]});
        let second = plugin_config(&list, &list.plugins[1], capabilities, Some(&previous));
        assert_eq!(second["prevResult"], previous);
        assert_eq!(
            second["runtimeConfig"],
            json!({"portMappings":[{"hostPort":8080,"containerPort":80,"protocol":"tcp"}]})
        );
    }

    #[test]
    fn picks_the_pod_interface_addresses_ipv4_first() {
        let result = json!({
            "cniVersion": "1.0.0",
            "interfaces": [{"name":"cni0","mac":"aa"},{"name":"veth1","mac":"bb"},{"name":"eth0","mac":"cc","sandbox":"/run/netns/x"}],
            "ips": [
                {"address":"fd00::5/64","interface":2},
                {"address":"10.22.0.5/16","gateway":"10.22.0.1","interface":2},
                {"address":"10.99.0.1/24","interface":0}
            ]
        });
        assert_eq!(pod_ips(&result, "eth0"), ["10.22.0.5".parse::<IpAddr>().unwrap(), "fd00::5".parse().unwrap()]);
        let untied = json!({"ips":[{"address":"10.0.0.7/24"}]});
        assert_eq!(pod_ips(&untied, "eth0"), ["10.0.0.7".parse::<IpAddr>().unwrap()]);
        let legacy = json!({"cniVersion":"0.2.0","ip4":{"ip":"10.0.0.8/24"}});
        assert_eq!(pod_ips(&legacy, "eth0"), ["10.0.0.8".parse::<IpAddr>().unwrap()]);
        assert!(pod_ips(&json!({}), "eth0").is_empty());
    }

    #[test]
    fn reads_a_failed_plugins_error_object() {
        use std::os::unix::process::ExitStatusExt;
        let status = std::process::ExitStatus::from_raw(1 << 8);
        let text = error_text(br#"{"code":7,"msg":"failed to allocate","details":"range full"}"#, b"", status);
        assert_eq!(text, "failed to allocate: range full");
        assert_eq!(error_text(b"", b"boom\n", status), "stderr: boom");
        assert_eq!(error_text(b"not json", b"boom", status), "not json (stderr: boom)");
        assert!(error_text(b"", b"", status).contains("printed nothing"));
        assert!(version_at_least("0.4.0", (0, 4, 0)) && version_at_least("1.0.0", (0, 4, 0)));
        assert!(!version_at_least("0.3.1", (0, 4, 0)) && !version_at_least("x", (0, 4, 0)));
    }
}
