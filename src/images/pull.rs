//! Pulling a wasm image from a registry with oci-client: manifest, format
//! detection, and verified blobs into the store.

use base64::Engine as _;
use std::collections::HashMap;

use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use serde::Deserialize;

use super::format::{self, Layout};
use super::store::{Store, sha256_digest};
use crate::error::{Error, Result};
use crate::wasm::WasmKind;

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
    /// No credentials at all: the pull is anonymous unless `auth_file` has some.
    pub fn is_empty(&self) -> bool {
        [&self.username, &self.password, &self.auth, &self.identity_token, &self.registry_token]
            .iter()
            .all(|field| field.is_empty())
    }

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
                .and_then(|text| text.split_once(':').map(|(u, p)| (u.to_owned(), p.to_owned())))
                .ok_or_else(|| {
                    Error::InvalidArgument(format!("pull {image}: auth.auth is not base64 of \"username:password\""))
                })?;
            return Ok(RegistryAuth::Basic(decoded.0, decoded.1));
        }
        if !self.username.is_empty() {
            return Ok(RegistryAuth::Basic(self.username.clone(), self.password.clone()));
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
    #[serde(default)]
    pub annotations: std::collections::HashMap<String, String>,
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
    #[serde(default)]
    pub variant: String,
}

/// Size limits on what a registry may send.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_manifest_bytes: u64,
    pub max_blob_bytes: u64,
}

/// What a pull brought into the store: every blob verified, nothing indexed yet.
pub struct Fetched {
    pub manifest_digest: String,
    pub manifest_media_type: String,
    pub config: Descriptor,
    pub config_json: Vec<u8>,
    pub layout: Layout,
    /// Config plus layers, as the manifest gives them.
    pub size: u64,
}

/// How to reach one registry, beyond the defaults.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RegistryOptions {
    /// Plain http instead of https.
    pub insecure: bool,
    /// PEM certificates trusted for this registry, besides the system's.
    pub ca_pem: Option<Vec<u8>>,
    /// Registries (`host[:port]`) tried in order before this one.
    pub mirrors: Vec<String>,
}

pub struct Puller {
    insecure: Vec<String>,
    /// PEM CA certificates of registries that trust a CA of their own.
    ca_pem: HashMap<String, Vec<u8>>,
    mirrors: HashMap<String, Vec<String>>,
    /// Clients for anonymous pulls, per registry, sharing their token caches.
    anonymous: std::sync::Mutex<HashMap<String, Client>>,
    limits: Limits,
}

impl Puller {
    pub fn new(registries: &HashMap<String, RegistryOptions>, limits: Limits) -> Self {
        Self {
            insecure: registries.iter().filter(|(_, o)| o.insecure).map(|(h, _)| h.clone()).collect(),
            ca_pem: registries.iter().filter_map(|(h, o)| Some((h.clone(), o.ca_pem.clone()?))).collect(),
            mirrors: registries
                .iter()
                .filter(|(_, options)| !options.mirrors.is_empty())
                .map(|(host, options)| (host.clone(), options.mirrors.clone()))
                .collect(),
            anonymous: std::sync::Mutex::new(HashMap::new()),
            limits,
        }
    }

    /// A client for one pull from `registry`. An oci-client `Client` keeps the
    /// first credentials it is given per registry and caches tokens, so a pull
    /// with credentials gets a client of its own: one pod's pull secret must
    /// never serve another pod's pull, nor a wrong password spoil the next.
    fn client(&self, registry: &str, credentials: &Credentials) -> Client {
        let new_client = || {
            Client::new(ClientConfig {
                protocol: ClientProtocol::HttpsExcept(self.insecure.clone()),
                connect_timeout: Some(std::time::Duration::from_secs(10)),
                read_timeout: Some(std::time::Duration::from_secs(60)),
                extra_root_certificates: self
                    .ca_pem
                    .get(registry)
                    .map(|pem| vec![Certificate { encoding: CertificateEncoding::Pem, data: pem.clone() }])
                    .unwrap_or_default(),
                ..ClientConfig::default()
            })
        };
        if !credentials.is_empty() {
            return new_client();
        }
        self.anonymous.lock().unwrap().entry(registry.to_owned()).or_insert_with(new_client).clone()
    }

    /// Fetches the image from the first of its registry's mirrors that has it,
    /// or else from the registry itself.
    pub async fn fetch(&self, store: &Store, reference: &Reference, credentials: &Credentials) -> Result<Fetched> {
        let name = reference.whole();
        for mirror in self.mirrors.get(reference.registry()).into_iter().flatten() {
            let source = match (reference.tag(), reference.digest()) {
                (Some(tag), Some(digest)) => Reference::with_tag_and_digest(
                    mirror.clone(),
                    reference.repository().to_owned(),
                    tag.to_owned(),
                    digest.to_owned(),
                ),
                (_, Some(digest)) => {
                    Reference::with_digest(mirror.clone(), reference.repository().to_owned(), digest.to_owned())
                }
                (tag, None) => Reference::with_tag(
                    mirror.clone(),
                    reference.repository().to_owned(),
                    tag.unwrap_or("latest").to_owned(),
                ),
            };
            match self.fetch_from(&self.client(mirror, credentials), store, &source, &name, credentials).await {
                Ok(fetched) => return Ok(fetched),
                Err(e) => tracing::warn!(image = %name, %mirror, error = %e, "mirror failed; trying the next source"),
            }
        }
        self.fetch_from(&self.client(reference.registry(), credentials), store, reference, &name, credentials).await
    }

    /// Fetches the manifest (resolving an index to its wasm entry), the config
    /// and the layers into `store`. Blobs already stored are not fetched again,
    /// so pulling an image that is present costs one manifest request. (oci-client
    /// adds a `GET /v2/` before each request to a registry that asks for no
    /// authentication: it caches tokens, not their absence.)
    async fn fetch_from(
        &self,
        client: &Client,
        store: &Store,
        reference: &Reference,
        name: &str,
        credentials: &Credentials,
    ) -> Result<Fetched> {
        let auth = credentials.registry_auth(name)?;
        let (mut manifest_bytes, mut manifest_digest) = self.fetch_manifest(client, reference, &auth, name).await?;
        let mut manifest = parse_manifest(name, &manifest_bytes)?;
        if !manifest.manifests.is_empty() {
            let entry = format::pick_platform(&manifest.manifests).ok_or_else(|| {
                Error::NotWasm(format!(
                    "image {name} is not a wasm image: its index has no wasm platform entry (os wasip1, wasip2 or wasi, or architecture wasm)"
                ))
            })?;
            // The entry names its manifest by digest: one stored (verified) already is not fetched again.
            (manifest_bytes, manifest_digest) = match stored_blob(store, &entry.digest).await {
                Some(bytes) => (bytes, entry.digest.clone()),
                None => {
                    let by_digest = reference.clone_with_digest(entry.digest.clone());
                    self.fetch_manifest(client, &by_digest, &auth, name).await?
                }
            };
            manifest = parse_manifest(name, &manifest_bytes)?;
        }
        let config = manifest
            .config
            .clone()
            .ok_or_else(|| Error::InvalidArgument(format!("image {name}: the manifest has no config descriptor")))?;

        self.fetch_blob(client, store, reference, name, &config, |_| Ok(())).await?;
        let config_path = store.blob_path(&config.digest)?;
        let config_json = tokio::fs::read(&config_path)
            .await
            .map_err(|e| Error::internal(format!("reading config {} of {name}", config.digest), e))?;
        let layout = format::detect(name, &manifest, &config, &config_json)?;
        match &layout {
            Layout::Artifact { layer, .. } => {
                let not_wasm = || {
                    Error::InvalidArgument(format!(
                        "image {name}: layer {} is not a WebAssembly binary (no \\0asm header)",
                        layer.digest
                    ))
                };
                self.fetch_blob(client, store, reference, name, layer, |header| {
                    WasmKind::detect(header).map(drop).ok_or_else(not_wasm)
                })
                .await?;
            }
            Layout::Compat { layers, .. } => {
                for layer in layers {
                    self.fetch_blob(client, store, reference, name, layer, |_| Ok(())).await?;
                }
            }
        }
        // A stored blob is whole and verified: a re-pull does not write the manifest again.
        if !store.has_blob(&manifest_digest).await {
            store.put_blob(&manifest_digest, &manifest_bytes).await?;
        }
        let size = config.size + manifest.layers.iter().map(|layer| layer.size).sum::<u64>();
        Ok(Fetched {
            manifest_media_type: manifest.media_type.unwrap_or_else(|| OCI_MANIFEST.to_owned()),
            manifest_digest,
            config,
            config_json,
            layout,
            size,
        })
    }

    /// Fetches a manifest and checks its size and digest.
    async fn fetch_manifest(
        &self,
        client: &Client,
        reference: &Reference,
        auth: &RegistryAuth,
        name: &str,
    ) -> Result<(Vec<u8>, String)> {
        let accepted = [OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST];
        let (bytes, digest) = client
            .pull_manifest_raw(reference, auth, &accepted)
            .await
            .map_err(|e| registry_error(name, "fetch the manifest", e))?;
        if bytes.len() as u64 > self.limits.max_manifest_bytes {
            return Err(Error::ResourceExhausted(format!(
                "image {name}: manifest {digest} is {} bytes, over the limit of {} (max_manifest_bytes)",
                bytes.len(),
                self.limits.max_manifest_bytes
            )));
        }
        let actual = sha256_digest(&bytes);
        if actual != digest {
            return Err(Error::DataLoss(format!(
                "image {name}: manifest {digest} does not match its content ({actual})"
            )));
        }
        Ok((bytes.to_vec(), digest))
    }

    /// Downloads one blob into the store unless it is there already; `check`
    /// sees its first bytes before it is committed and can refuse it.
    async fn fetch_blob(
        &self,
        client: &Client,
        store: &Store,
        reference: &Reference,
        name: &str,
        descriptor: &Descriptor,
        check: impl FnOnce(&[u8]) -> Result<()>,
    ) -> Result<()> {
        if store.has_blob(&descriptor.digest).await {
            return Ok(());
        }
        let limit = self.limits.max_blob_bytes;
        let over_limit = |size: u64| {
            Error::ResourceExhausted(format!(
                "image {name}: blob {} is {size} bytes or more, over the limit of {limit} (max_blob_bytes)",
                descriptor.digest
            ))
        };
        if descriptor.size > limit {
            return Err(over_limit(descriptor.size));
        }
        // No credentials here: oci-client reuses the token the manifest fetch obtained.
        let mut writer = store.blob_writer(&descriptor.digest, limit).await?;
        let fetched = client.pull_blob(reference, descriptor.digest.as_str(), &mut writer).await;
        if let Err(e) = fetched {
            writer.discard().await;
            if writer.over_limit() {
                return Err(over_limit(limit + 1));
            }
            return Err(registry_error(name, &format!("fetch blob {}", descriptor.digest), e));
        }
        if let Err(e) = check(writer.header()) {
            writer.discard().await;
            return Err(e);
        }
        writer.commit().await
    }
}

/// The content of the blob `digest` when the store holds it (blobs are
/// stored whole and verified, or not at all).
async fn stored_blob(store: &Store, digest: &str) -> Option<Vec<u8>> {
    tokio::fs::read(store.blob_path(digest).ok()?).await.ok()
}

pub(super) async fn read_header(path: &std::path::Path) -> Result<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let mut header = Vec::with_capacity(8);
    let file =
        tokio::fs::File::open(path).await.map_err(|e| Error::internal(format!("opening {}", path.display()), e))?;
    file.take(8)
        .read_to_end(&mut header)
        .await
        .map_err(|e| Error::internal(format!("reading {}", path.display()), e))?;
    Ok(header)
}

fn parse_manifest(name: &str, bytes: &[u8]) -> Result<Manifest> {
    serde_json::from_slice(bytes).map_err(|e| {
        Error::InvalidArgument(format!("image {name}: the registry sent a manifest that is not valid JSON: {e}"))
    })
}

/// Turns a registry failure into an error that says which image, what step, and why.
fn registry_error(name: &str, step: &str, error: OciDistributionError) -> Error {
    let message = format!("pull {name}: could not {step}: {error}");
    match &error {
        OciDistributionError::ImageManifestNotFoundError(_) => Error::NotFound(message),
        OciDistributionError::AuthenticationFailure(_) | OciDistributionError::UnauthorizedError { .. } => {
            Error::Unauthenticated(message)
        }
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
            } else if codes.iter().any(|code| matches!(code, OciErrorCode::Unauthorized | OciErrorCode::Denied)) {
                Error::Unauthenticated(message)
            } else if codes.iter().any(|code| matches!(code, OciErrorCode::Toomanyrequests)) {
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
        OciDistributionError::RequestError(cause) => Error::Unavailable(format!("{message} ({})", error_chain(cause))),
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
        let creds = Credentials { auth: "dXNlcjpwYXNz".into(), ..Default::default() };
        assert!(matches!(creds.registry_auth("x").unwrap(), RegistryAuth::Basic(u, p) if u == "user" && p == "pass"));
        let creds = Credentials { username: "u".into(), password: "p".into(), ..Default::default() };
        assert!(matches!(creds.registry_auth("x").unwrap(), RegistryAuth::Basic(u, _) if u == "u"));
        let creds = Credentials { registry_token: "t".into(), username: "u".into(), ..Default::default() };
        assert!(matches!(creds.registry_auth("x").unwrap(), RegistryAuth::Bearer(t) if t == "t"));
        assert!(matches!(Credentials::default().registry_auth("x").unwrap(), RegistryAuth::Anonymous));
        let creds = Credentials { auth: "not base64!".into(), ..Default::default() };
        assert!(matches!(creds.registry_auth("x").unwrap_err(), Error::InvalidArgument(_)));
    }
}
