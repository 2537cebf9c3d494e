//! Default registry credentials from a docker `config.json` (`auth_file`),
//! used when a pull brings no credentials of its own.

use std::collections::HashMap;
use std::path::Path;

use serde::Deserialize;

use super::Credentials;
use crate::error::{Error, Result};

#[derive(Debug, Default, Deserialize)]
struct DockerConfig {
    #[serde(default)]
    auths: HashMap<String, DockerAuth>,
}

#[derive(Debug, Default, Deserialize)]
struct DockerAuth {
    #[serde(default)]
    auth: String,
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    identitytoken: String,
    #[serde(default)]
    registrytoken: String,
}

/// The credentials `auth_file` holds for `registry` (`host[:port]`), if any.
/// The file is read at every pull, so that a rotated secret is picked up.
pub async fn from_file(auth_file: &Path, registry: &str) -> Result<Option<Credentials>> {
    let bytes = tokio::fs::read(auth_file)
        .await
        .map_err(|e| Error::FailedPrecondition(format!("auth_file {} cannot be read: {e}", auth_file.display())))?;
    let config: DockerConfig = serde_json::from_slice(&bytes).map_err(|e| {
        Error::FailedPrecondition(format!("auth_file {} is not a docker config.json: {e}", auth_file.display()))
    })?;
    let wanted = canonical_host(registry);
    Ok(config.auths.into_iter().find(|(key, _)| canonical_host(key) == wanted).map(|(_, auth)| Credentials {
        username: auth.username,
        password: auth.password,
        auth: auth.auth,
        identity_token: auth.identitytoken,
        registry_token: auth.registrytoken,
    }))
}

/// `https://index.docker.io/v1/` and `docker.io` name the same registry.
fn canonical_host(key: &str) -> String {
    let host = key.trim_start_matches("https://").trim_start_matches("http://");
    let host = host.split('/').next().unwrap_or_default();
    match host {
        "index.docker.io" | "registry-1.docker.io" | "docker.io" => "docker.io".to_owned(),
        other => other.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn finds_credentials_by_registry_host() {
        let path = std::env::temp_dir().join(format!("wasmrun-auth-{}.json", rand::random::<u64>()));
        std::fs::write(
            &path,
            r#"{"auths": {"https://index.docker.io/v1/": {"auth": "dTpw"}, "127.0.0.1:5000": {"username": "a", "password": "b"}}}"#,
        )
        .unwrap();
        let hub = from_file(&path, "docker.io").await.unwrap().unwrap();
        assert_eq!(hub.auth, "dTpw");
        let local = from_file(&path, "127.0.0.1:5000").await.unwrap().unwrap();
        assert_eq!((local.username.as_str(), local.password.as_str()), ("a", "b"));
        assert!(from_file(&path, "other.example").await.unwrap().is_none());
        let missing = from_file(Path::new("/nonexistent/config.json"), "docker.io").await.unwrap_err();
        assert!(matches!(missing, Error::FailedPrecondition(_)));
    }
}
