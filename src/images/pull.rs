//! Pulling a wasm image from a registry with oci-client: manifest, format
//! detection, and verified blobs into the store.

use base64::Engine as _;
use std::collections::HashMap;
use std::path::PathBuf;

use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use serde::Deserialize;

use super::format::{self, Layout};
use super::hosts;
use super::store::Store;
use crate::digest::Digest;
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

/// Why one source did not give the image.
#[derive(Debug)]
enum Fail {
    /// The source could not serve it (unreachable, refused our credentials,
    /// does not have it): the next source may.
    Source(Error),
    /// The content is wrong (digest, size, format), or the image is not wasm:
    /// the same digest from another source would be the same.
    Content(Error),
}

impl From<Error> for Fail {
    fn from(error: Error) -> Self {
        Fail::Content(error)
    }
}

/// A digest the manifest gives that wasmrun cannot use: any source would give the same.
impl From<crate::digest::ParseError> for Fail {
    fn from(error: crate::digest::ParseError) -> Self {
        Fail::Content(error.into())
    }
}

/// One place to fetch an image from: a mirror, or the registry itself.
#[derive(Debug, Clone)]
struct Source {
    /// `host[:port]` to connect to; the reference is rewritten to it.
    host: String,
    /// Plain http instead of https.
    http: bool,
    /// PEM certificates trusted for this host, besides the system's.
    ca_pems: Vec<Vec<u8>>,
    /// Accept any certificate (hosts.toml `skip_verify`).
    skip_verify: bool,
    /// `mirror` or `registry`, for messages and logs.
    role: &'static str,
    /// Why this source cannot be used, if it cannot (checked before any request).
    unusable: Option<String>,
}

impl Source {
    /// `mirror http://127.0.0.1:5000`, for messages.
    fn label(&self) -> String {
        format!("{} {}://{}", self.role, if self.http { "http" } else { "https" }, self.host)
    }

    /// What identifies the client settings, for the cache of anonymous clients.
    fn client_key(&self) -> String {
        let ca: Vec<u8> = self.ca_pems.concat();
        format!("{}|{}|{}|{}", self.http, self.skip_verify, self.host, Digest::sha256(&ca))
    }
}

/// What the manifest and config of one source say the image is.
struct Identified {
    manifest_bytes: Vec<u8>,
    manifest_digest: String,
    manifest: Manifest,
    config: Descriptor,
    config_json: Vec<u8>,
    layout: Layout,
}

pub struct Puller {
    /// `[registries]` and `insecure_registries`, by `host[:port]`.
    registries: HashMap<String, RegistryOptions>,
    /// Clients for anonymous pulls, per source settings, sharing their token caches.
    anonymous: std::sync::Mutex<HashMap<String, Client>>,
    limits: Limits,
    /// containerd's hosts directory (`registry_config_path`), read at every
    /// pull as containerd reads it at every resolve.
    registry_config: Option<PathBuf>,
}

impl Puller {
    pub fn new(
        registries: &HashMap<String, RegistryOptions>,
        limits: Limits,
        registry_config: Option<PathBuf>,
    ) -> Self {
        Self {
            registries: registries.clone(),
            anonymous: std::sync::Mutex::new(HashMap::new()),
            limits,
            registry_config,
        }
    }

    /// A client for one pull from `source`. An oci-client `Client` keeps the
    /// first credentials it is given per registry and caches tokens, so a pull
    /// with credentials gets a client of its own: one pod's pull secret must
    /// never serve another pod's pull, nor a wrong password spoil the next.
    fn client(&self, source: &Source, credentials: &Credentials) -> Client {
        let new_client = || {
            Client::new(ClientConfig {
                protocol: if source.http { ClientProtocol::Http } else { ClientProtocol::Https },
                accept_invalid_certificates: source.skip_verify,
                connect_timeout: Some(std::time::Duration::from_secs(10)),
                read_timeout: Some(std::time::Duration::from_secs(60)),
                extra_root_certificates: source
                    .ca_pems
                    .iter()
                    .map(|pem| Certificate { encoding: CertificateEncoding::Pem, data: pem.clone() })
                    .collect(),
                ..ClientConfig::default()
            })
        };
        if !credentials.is_empty() {
            return new_client();
        }
        self.anonymous.lock().unwrap().entry(source.client_key()).or_insert_with(new_client).clone()
    }

    /// The `[registries]` / `insecure_registries` settings of a host.
    fn options(&self, host: &str) -> RegistryOptions {
        self.registries.get(host).cloned().unwrap_or_default()
    }

    /// The sources of `reference`'s registry, in the order to try them.
    ///
    /// Precedence: when `registry_config` (containerd's hosts directory) has
    /// a hosts.toml for the registry (its own directory, else `_default`),
    /// that file lists the sources, and `[registries."HOST"].mirrors` is not
    /// used for it; otherwise those mirrors, then the registry. How a source
    /// is reached adds up both: plain http if its hosts.toml url is `http://`
    /// or its host is insecure in `[registries]`/`insecure_registries`; the CA
    /// files of both are trusted.
    async fn sources(&self, reference: &Reference) -> Vec<Source> {
        let registry = reference.registry().to_owned();
        let by_tag = reference.digest().is_none();
        let hosts = match &self.registry_config {
            Some(dir) => {
                let dir = dir.to_owned();
                let registry = registry.clone();
                tokio::task::spawn_blocking(move || hosts::load(&dir, &registry)).await.unwrap_or_else(|e| {
                    tracing::error!(error = %e, "reading the registry hosts directory failed");
                    None
                })
            }
            None => None,
        };
        let Some((file, entries)) = hosts else {
            let mut sources: Vec<Source> =
                self.options(&registry).mirrors.iter().map(|mirror| self.legacy_source(mirror, "mirror")).collect();
            sources.push(self.legacy_source(&registry, "registry"));
            return sources;
        };
        let mut sources = Vec::with_capacity(entries.len());
        for entry in entries {
            let host = if entry.host.is_empty() { registry.clone() } else { entry.host.clone() };
            let options = self.options(&host);
            let mut ca_pems: Vec<Vec<u8>> = options.ca_pem.into_iter().collect();
            let mut unusable = None;
            for ca in &entry.ca_files {
                match tokio::fs::read(ca).await {
                    Ok(pem) => ca_pems.push(pem),
                    Err(e) => unusable = Some(format!("cannot read its CA file {}: {e}", ca.display())),
                }
            }
            if !entry.pull || (by_tag && !entry.resolve) {
                let needs = if by_tag { "\"pull\" and \"resolve\"" } else { "\"pull\"" };
                unusable = Some(format!("{} does not give it the capabilities {needs}", file.display()));
            }
            if entry.path != "/v2" {
                unusable = Some(format!(
                    "its API path {:?} (a path prefix or override_path) is not one wasmrun can use (only /v2)",
                    entry.path
                ));
            }
            if !entry.unused_keys.is_empty() {
                tracing::debug!(file = %file.display(), %host, keys = ?entry.unused_keys, "hosts.toml keys wasmrun does not use");
            }
            sources.push(Source {
                http: entry.http || options.insecure,
                host,
                ca_pems,
                skip_verify: entry.skip_verify,
                role: if entry.upstream { "registry" } else { "mirror" },
                unusable,
            });
        }
        sources
    }

    /// A source configured by `[registries]` and `insecure_registries` only.
    fn legacy_source(&self, host: &str, role: &'static str) -> Source {
        let options = self.options(host);
        Source {
            host: host.to_owned(),
            http: options.insecure,
            ca_pems: options.ca_pem.into_iter().collect(),
            skip_verify: false,
            role,
            unusable: None,
        }
    }

    /// Fetches the image from the first of its sources that has it (see
    /// [`Puller::sources`]). An answer that the image is not wasm, from any
    /// source, ends the pull with [`Error::NotWasm`]; so does content that is
    /// wrong (DataLoss, ResourceExhausted, InvalidArgument), with its error.
    /// When no source gives the manifest and config, whether the image is wasm
    /// is unknown: [`Error::Unfetchable`], holding the error that names the
    /// image and each source's failure.
    pub async fn fetch(&self, store: &Store, reference: &Reference, credentials: &Credentials) -> Result<Fetched> {
        let name = reference.whole();
        let auth = credentials.registry_auth(&name)?;
        let sources = self.sources(reference).await;
        let mut failures: Vec<(String, Error)> = Vec::new();
        let mut identified_once = false;
        for source in &sources {
            let label = source.label();
            if let Some(why) = &source.unusable {
                tracing::debug!(image = %name, source = %label, %why, "skipping a source");
                failures.push((label, Error::FailedPrecondition(format!("not used: {why}"))));
                continue;
            }
            let at_source = at_host(reference, &source.host);
            let client = self.client(source, credentials);
            let attempt = match self.identify(&client, store, &at_source, &name, &auth).await {
                Ok(identified) => {
                    identified_once = true;
                    self.fetch_layers(&client, store, &at_source, &name, identified).await
                }
                Err(fail) => Err(fail),
            };
            match attempt {
                Ok(fetched) => return Ok(fetched),
                Err(Fail::Content(e)) => return Err(e),
                Err(Fail::Source(e)) => {
                    tracing::warn!(image = %name, source = %label, error = %e, "a source could not serve the image");
                    failures.push((label, e));
                }
            }
        }
        let error = all_failed(&name, failures);
        if identified_once { Err(error) } else { Err(Error::Unfetchable(Box::new(error))) }
    }

    /// Fetches the manifest (resolving an index to its wasm entry) and the
    /// config, and tells the image's layout: whether it is wasm. (oci-client
    /// adds a `GET /v2/` before each request to a registry that asks for no
    /// authentication: it caches tokens, not their absence.)
    async fn identify(
        &self,
        client: &Client,
        store: &Store,
        reference: &Reference,
        name: &str,
        auth: &RegistryAuth,
    ) -> Result<Identified, Fail> {
        let (mut manifest_bytes, mut manifest_digest) = self.fetch_manifest(client, reference, auth, name).await?;
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
                    self.fetch_manifest(client, &by_digest, auth, name).await?
                }
            };
            manifest = parse_manifest(name, &manifest_bytes)?;
        }
        let config = manifest
            .config
            .clone()
            .ok_or_else(|| Error::InvalidArgument(format!("image {name}: the manifest has no config descriptor")))?;

        self.fetch_blob(client, store, reference, name, &config, |_| Ok(())).await?;
        let config_path = store.blob_path(&config.digest.parse()?);
        let config_json = tokio::fs::read(&config_path)
            .await
            .map_err(|e| Error::internal(format!("reading config {} of {name}", config.digest), e))?;
        let layout = format::detect(name, &manifest, &config, &config_json)?;
        Ok(Identified { manifest_bytes, manifest_digest, manifest, config, config_json, layout })
    }

    /// Fetches the layers of an image `identify` found to be wasm into
    /// `store`. Blobs already stored are not fetched again, so pulling an
    /// image that is present costs one manifest request.
    async fn fetch_layers(
        &self,
        client: &Client,
        store: &Store,
        reference: &Reference,
        name: &str,
        identified: Identified,
    ) -> Result<Fetched, Fail> {
        let Identified { manifest_bytes, manifest_digest, manifest, config, config_json, layout } = identified;
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
        let stored: Digest = manifest_digest.parse()?;
        if !store.has_blob(&stored).await {
            store.put_blob(&stored, &manifest_bytes).await?;
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
    ) -> Result<(Vec<u8>, String), Fail> {
        let accepted = [OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST];
        let (bytes, digest) = client
            .pull_manifest_raw(reference, auth, &accepted)
            .await
            .map_err(|e| registry_error(name, "fetch the manifest", e))?;
        if bytes.len() as u64 > self.limits.max_manifest_bytes {
            return Err(Fail::Content(Error::ResourceExhausted(format!(
                "image {name}: manifest {digest} is {} bytes, over the limit of {} (max_manifest_bytes)",
                bytes.len(),
                self.limits.max_manifest_bytes
            ))));
        }
        let actual = Digest::sha256(&bytes);
        if actual.as_str() != digest {
            return Err(Fail::Content(Error::DataLoss(format!(
                "image {name}: manifest {digest} does not match its content ({actual})"
            ))));
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
    ) -> Result<(), Fail> {
        let digest: Digest = descriptor.digest.parse()?;
        if store.has_blob(&digest).await {
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
            return Err(Fail::Content(over_limit(descriptor.size)));
        }
        // No credentials here: oci-client reuses the token the manifest fetch obtained.
        let mut writer = store.blob_writer(&digest, limit).await?;
        let fetched = client.pull_blob(reference, descriptor.digest.as_str(), &mut writer).await;
        if let Err(e) = fetched {
            writer.discard().await;
            if writer.over_limit() {
                return Err(Fail::Content(over_limit(limit + 1)));
            }
            return Err(registry_error(name, &format!("fetch blob {}", descriptor.digest), e));
        }
        if let Err(e) = check(writer.header()) {
            writer.discard().await;
            return Err(Fail::Content(e));
        }
        Ok(writer.commit().await?)
    }
}

/// The content of the blob `digest` when the store holds it (blobs are
/// stored whole and verified, or not at all).
async fn stored_blob(store: &Store, digest: &str) -> Option<Vec<u8>> {
    tokio::fs::read(store.blob_path(&digest.parse().ok()?)).await.ok()
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

/// Turns a registry failure into an error that says which image, what step,
/// and why, and tells whether another source might do better: a source that
/// cannot be reached, refuses us or lacks the image is a [`Fail::Source`];
/// content that does not match its digest or cannot be parsed is a
/// [`Fail::Content`].
fn registry_error(name: &str, step: &str, error: OciDistributionError) -> Fail {
    let message = format!("pull {name}: could not {step}: {error}");
    let source = match &error {
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
        OciDistributionError::DigestError(_) => return Fail::Content(Error::DataLoss(message)),
        OciDistributionError::ManifestParsingError(_)
        | OciDistributionError::UnsupportedMediaTypeError(_)
        | OciDistributionError::UnsupportedSchemaVersionError(_)
        | OciDistributionError::SpecViolationError(_) => return Fail::Content(Error::InvalidArgument(message)),
        OciDistributionError::RequestError(cause) => Error::Unavailable(format!("{message} ({})", error_chain(cause))),
        _ => Error::Unavailable(message),
    };
    Fail::Source(source)
}

/// The error of a pull every source failed: with one source, its own error;
/// with several, one naming each source's failure, of the kind of the last
/// (the registry itself, or the hosts.toml `server`), so that a missing image
/// stays NotFound and a refused login Unauthenticated.
fn all_failed(name: &str, failures: Vec<(String, Error)>) -> Error {
    if failures.len() == 1 {
        let (label, error) = failures.into_iter().next().expect("one failure");
        return match error {
            Error::FailedPrecondition(m) => {
                Error::FailedPrecondition(format!("pull {name}: its only source, {label}, is {m}"))
            }
            other => other,
        };
    }
    let listed: Vec<String> = failures.iter().map(|(label, error)| format!("{label}: {error}")).collect();
    let message = format!("pull {name}: no source could serve the image: {}", listed.join("; "));
    match failures.last().map(|(_, error)| error) {
        Some(Error::NotFound(_)) => Error::NotFound(message),
        Some(Error::Unauthenticated(_)) => Error::Unauthenticated(message),
        Some(Error::ResourceExhausted(_)) => Error::ResourceExhausted(message),
        Some(Error::FailedPrecondition(_)) | None => Error::FailedPrecondition(message),
        Some(_) => Error::Unavailable(message),
    }
}

/// `reference` with its registry replaced by `host` (a mirror), keeping
/// repository, tag and digest: the image keeps the name it was pulled by.
fn at_host(reference: &Reference, host: &str) -> Reference {
    if host == reference.registry() {
        return reference.clone();
    }
    let repository = reference.repository().to_owned();
    match (reference.tag(), reference.digest()) {
        (Some(tag), Some(digest)) => {
            Reference::with_tag_and_digest(host.to_owned(), repository, tag.to_owned(), digest.to_owned())
        }
        (_, Some(digest)) => Reference::with_digest(host.to_owned(), repository, digest.to_owned()),
        (tag, None) => Reference::with_tag(host.to_owned(), repository, tag.unwrap_or("latest").to_owned()),
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
    fn every_source_failing_names_each_with_the_kind_of_the_last() {
        let failures = vec![
            ("mirror http://m:1".to_owned(), Error::Unavailable("connection refused".into())),
            ("registry https://r.io".to_owned(), Error::NotFound("manifest unknown".into())),
        ];
        let error = all_failed("r.io/x:v1", failures);
        assert!(matches!(&error, Error::NotFound(_)), "{error:?}");
        let message = error.to_string();
        for part in ["r.io/x:v1", "mirror http://m:1: connection refused", "registry https://r.io: manifest unknown"] {
            assert!(message.contains(part), "{part:?} missing from {message:?}");
        }
        // One source: its own error, unchanged.
        let error =
            all_failed("r.io/x:v1", vec![("registry https://r.io".into(), Error::Unauthenticated("no".into()))]);
        assert!(matches!(&error, Error::Unauthenticated(m) if m == "no"), "{error:?}");
    }

    #[test]
    fn a_mirror_keeps_repository_tag_and_digest() {
        let digest = format!("sha256:{}", "a".repeat(64));
        let reference = Reference::try_from(format!("r.io:5000/team/x:v1@{digest}").as_str()).unwrap();
        let at = at_host(&reference, "m:1");
        assert_eq!(
            (at.registry(), at.repository(), at.tag(), at.digest()),
            ("m:1", "team/x", Some("v1"), Some(digest.as_str()))
        );
        let at = at_host(&Reference::try_from("r.io/x").unwrap(), "m:1");
        assert_eq!((at.registry(), at.tag()), ("m:1", Some("latest")));
    }

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
