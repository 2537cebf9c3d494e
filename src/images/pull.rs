//! Pulling a wasm image from a registry with oci-client: manifest, format
//! detection, and verified blobs into the store.

use base64::Engine as _;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use serde::Deserialize;

use super::format::{self, WasmLayout};
use super::store::{Image, ModuleKind, Store, sha256_digest};
use crate::error::{Error, Result};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// Credentials for one pull, as the CRI `AuthConfig` gives them.
#[derive(Debug, Default, Clone)]
pub struct Credentials {
    pub username: String,
    pub password: String,
    /// base64 of `username:password`.
    pub auth: String,
    pub identity_token: String,
    pub registry_token: String,
}

impl Credentials {
    fn registry_auth(&self, image: &str) -> Result<RegistryAuth> {
        if !self.registry_token.is_empty() {
            return Ok(RegistryAuth::Bearer(self.registry_token.clone()));
        }
        if !self.identity_token.is_empty() {
            return Ok(RegistryAuth::Bearer(self.identity_token.clone()));
        }
        if !self.auth.is_empty() {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(self.auth.trim())
                .ok()
                .and_then(|bytes| String::from_utf8(bytes).ok())
                .and_then(|text| {
                    text.split_once(':')
                        .map(|(u, p)| (u.to_owned(), p.to_owned()))
                })
                .ok_or_else(|| {
                    Error::InvalidArgument(format!(
                        "pull {image}: auth.auth is not base64 of \"username:password\""
                    ))
                })?;
            return Ok(RegistryAuth::Basic(decoded.0, decoded.1));
        }
        if !self.username.is_empty() {
            return Ok(RegistryAuth::Basic(
                self.username.clone(),
                self.password.clone(),
            ));
        }
        Ok(RegistryAuth::Anonymous)
    }
}

/// The parts of a manifest or index we read; unknown fields are ignored.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Manifest {
    #[serde(default)]
    pub media_type: Option<String>,
    #[serde(default)]
    pub config: Option<Descriptor>,
    #[serde(default)]
    pub layers: Vec<Descriptor>,
    #[serde(default)]
    pub manifests: Vec<IndexEntry>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Descriptor {
    pub media_type: String,
    pub digest: String,
    #[serde(default)]
    pub size: u64,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct IndexEntry {
    pub digest: String,
    #[serde(default)]
    pub platform: Option<Platform>,
}

#[derive(Debug, Deserialize)]
pub(super) struct Platform {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
}

pub struct Puller {
    client: Client,
}

impl Puller {
    pub fn new(insecure_registries: &[String]) -> Self {
        let config = ClientConfig {
            protocol: ClientProtocol::HttpsExcept(insecure_registries.to_vec()),
            connect_timeout: Some(std::time::Duration::from_secs(10)),
            read_timeout: Some(std::time::Duration::from_secs(60)),
            ..ClientConfig::default()
        };
        Self {
            client: Client::new(config),
        }
    }

    /// Pulls `name` (already parsed) into `store` and returns the image record,
    /// not yet inserted into the index. Blobs already in the store are not fetched again.
    pub async fn pull(
        &self,
        store: &Store,
        reference: &Reference,
        credentials: &Credentials,
    ) -> Result<Image> {
        let name = reference.whole();
        let auth = credentials.registry_auth(&name)?;
        let accepted = [
            OCI_MANIFEST,
            OCI_INDEX,
            DOCKER_MANIFEST,
            DOCKER_MANIFEST_LIST,
        ];
        let (mut manifest_bytes, mut manifest_digest) = self
            .client
            .pull_manifest_raw(reference, &auth, &accepted)
            .await
            .map_err(|e| registry_error(&name, "fetch the manifest", e))?;
        let mut manifest = parse_manifest(&name, &manifest_bytes)?;

        if !manifest.manifests.is_empty() {
            let entry = format::pick_platform(&manifest.manifests).ok_or_else(|| {
                Error::FailedPrecondition(format!(
                    "image {name} is not a wasm image: its index has no wasi/wasm platform entry"
                ))
            })?;
            let by_digest = reference.clone_with_digest(entry.digest.clone());
            (manifest_bytes, manifest_digest) = self
                .client
                .pull_manifest_raw(&by_digest, &auth, &accepted)
                .await
                .map_err(|e| registry_error(&name, "fetch the platform manifest", e))?;
            manifest = parse_manifest(&name, &manifest_bytes)?;
        }
        let actual = sha256_digest(&manifest_bytes);
        if actual != manifest_digest {
            return Err(Error::DataLoss(format!(
                "image {name}: manifest {manifest_digest} does not match its content ({actual})"
            )));
        }

        let layout = format::detect(&name, &manifest)?;
        let WasmLayout { config, layer } = layout;
        self.fetch_blob(store, reference, &name, &config, |_| Ok(()))
            .await?;
        let not_wasm = || {
            Error::InvalidArgument(format!(
                "image {name}: layer {} is not a WebAssembly binary (no \\0asm header)",
                layer.digest
            ))
        };
        self.fetch_blob(store, reference, &name, &layer, |header| {
            ModuleKind::detect(header).map(drop).ok_or_else(not_wasm)
        })
        .await?;
        let header = read_header(&store.blob_path(&layer.digest)?).await?;
        let module_kind = ModuleKind::detect(&header).ok_or_else(not_wasm)?;
        store.put_blob(&manifest_digest, &manifest_bytes).await?;

        let repository = format!("{}/{}", reference.registry(), reference.repository());
        Ok(Image {
            id: config.digest.clone(),
            repo_tags: match reference.tag() {
                Some(tag) => vec![format!("{repository}:{tag}")],
                None => Vec::new(),
            },
            repo_digests: vec![format!("{repository}@{manifest_digest}")],
            manifest_media_type: manifest
                .media_type
                .unwrap_or_else(|| OCI_MANIFEST.to_owned()),
            config_media_type: config.media_type.clone(),
            layer_media_type: layer.media_type.clone(),
            manifest_digest,
            size: config.size + layer.size,
            config_digest: config.digest,
            module_digest: layer.digest,
            module_kind,
            default_argv0: reference
                .repository()
                .rsplit('/')
                .next()
                .unwrap_or_default()
                .to_owned(),
            pulled_at: crate::durable::now_nanos(),
        })
    }

    /// Downloads one blob into the store unless it is there already; `check`
    /// sees its first bytes before it is committed and can refuse it.
    async fn fetch_blob(
        &self,
        store: &Store,
        reference: &Reference,
        name: &str,
        descriptor: &Descriptor,
        check: impl FnOnce(&[u8]) -> Result<()>,
    ) -> Result<()> {
        if store.has_blob(&descriptor.digest).await {
            return Ok(());
        }
        // No credentials here: oci-client reuses the token the manifest fetch obtained.
        let mut writer = store.blob_writer(&descriptor.digest).await?;
        if let Err(e) = self
            .client
            .pull_blob(reference, descriptor.digest.as_str(), &mut writer)
            .await
        {
            writer.discard().await;
            return Err(registry_error(
                name,
                &format!("fetch blob {}", descriptor.digest),
                e,
            ));
        }
        if let Err(e) = check(writer.header()) {
            writer.discard().await;
            return Err(e);
        }
        writer.commit().await
    }
}

async fn read_header(path: &std::path::Path) -> Result<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let mut header = Vec::with_capacity(8);
    let file = tokio::fs::File::open(path)
        .await
        .map_err(|e| Error::internal(format!("opening {}", path.display()), e))?;
    file.take(8)
        .read_to_end(&mut header)
        .await
        .map_err(|e| Error::internal(format!("reading {}", path.display()), e))?;
    Ok(header)
}

fn parse_manifest(name: &str, bytes: &[u8]) -> Result<Manifest> {
    serde_json::from_slice(bytes).map_err(|e| {
        Error::InvalidArgument(format!(
            "image {name}: the registry sent a manifest that is not valid JSON: {e}"
        ))
    })
}

/// Turns a registry failure into an error that says which image, what step, and why.
fn registry_error(name: &str, step: &str, error: OciDistributionError) -> Error {
    let message = format!("pull {name}: could not {step}: {error}");
    match &error {
        OciDistributionError::ImageManifestNotFoundError(_) => Error::NotFound(message),
        OciDistributionError::AuthenticationFailure(_)
        | OciDistributionError::UnauthorizedError { .. } => Error::Unauthenticated(message),
        OciDistributionError::ServerError { code, .. } => match code {
            404 => Error::NotFound(message),
            401 | 403 => Error::Unauthenticated(message),
            429 => Error::ResourceExhausted(message),
            _ => Error::Unavailable(message),
        },
        OciDistributionError::RegistryError { envelope, .. } => {
            let codes: Vec<&OciErrorCode> = envelope.errors.iter().map(|e| &e.code).collect();
            if codes.iter().any(|code| {
                matches!(
                    code,
                    OciErrorCode::ManifestUnknown
                        | OciErrorCode::NameUnknown
                        | OciErrorCode::BlobUnknown
                        | OciErrorCode::NotFound
                )
            }) {
                Error::NotFound(message)
            } else if codes
                .iter()
                .any(|code| matches!(code, OciErrorCode::Unauthorized | OciErrorCode::Denied))
            {
                Error::Unauthenticated(message)
            } else if codes
                .iter()
                .any(|code| matches!(code, OciErrorCode::Toomanyrequests))
            {
                Error::ResourceExhausted(message)
            } else {
                Error::Unavailable(message)
            }
        }
        OciDistributionError::DigestError(_) => Error::DataLoss(message),
        OciDistributionError::ManifestParsingError(_)
        | OciDistributionError::UnsupportedMediaTypeError(_)
        | OciDistributionError::UnsupportedSchemaVersionError(_)
        | OciDistributionError::SpecViolationError(_)
        | OciDistributionError::UrlParseError(_) => Error::InvalidArgument(message),
        OciDistributionError::RequestError(cause) => {
            Error::Unavailable(format!("{message} ({})", error_chain(cause)))
        }
        _ => Error::Unavailable(message),
    }
}

/// reqwest's Display names only the outermost error ("error sending request");
/// the cause (connection refused, TLS failure) is further down the chain.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut parts = Vec::new();
    let mut source = error.source();
    while let Some(cause) = source {
        parts.push(cause.to_string());
        source = cause.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_become_registry_auth() {
        let creds = Credentials {
            auth: "dXNlcjpwYXNz".into(),
            ..Default::default()
        };
        assert!(
            matches!(creds.registry_auth("x").unwrap(), RegistryAuth::Basic(u, p) if u == "user" && p == "pass")
        );
        let creds = Credentials {
            username: "u".into(),
            password: "p".into(),
            ..Default::default()
        };
        assert!(matches!(creds.registry_auth("x").unwrap(), RegistryAuth::Basic(u, _) if u == "u"));
        let creds = Credentials {
            registry_token: "t".into(),
            username: "u".into(),
            ..Default::default()
        };
        assert!(matches!(creds.registry_auth("x").unwrap(), RegistryAuth::Bearer(t) if t == "t"));
        assert!(matches!(
            Credentials::default().registry_auth("x").unwrap(),
            RegistryAuth::Anonymous
        ));
        let creds = Credentials {
            auth: "not base64!".into(),
            ..Default::default()
        };
        assert!(matches!(
            creds.registry_auth("x").unwrap_err(),
            Error::InvalidArgument(_)
        ));
    }
}
