//! One local OCI registry (distribution v2, Debian's `docker-registry`)
//! shared by every test of the process.

use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::{die_with_parent, free_port, http_get, scratch_dir, tail_file};

const REGISTRY_BIN: &str = "/usr/bin/docker-registry";

/// The shared registry: plain HTTP, no authentication, on 127.0.0.1.
pub struct Registry {
    pub port: u16,
    /// The registry process.
    pub pid: u32,
    /// Directory holding the config, the storage and the log.
    pub dir: PathBuf,
    /// Where the registry's stdout and stderr go.
    pub log: PathBuf,
}

impl Registry {
    /// "127.0.0.1:PORT", the registry host part of image references.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Kills the registry process at once, as a crash would.
    pub fn kill(&self) {
        // SAFETY: kill(2) on the pid of our own child process.
        unsafe { libc::kill(self.pid as libc::pid_t, libc::SIGKILL) };
    }

    /// The registry's filesystem storage (its `rootdirectory`).
    pub fn storage(&self) -> PathBuf {
        self.dir.join("storage")
    }

    /// The length of the registry's log now: pass it to [`Registry::requests_since`].
    pub fn log_len(&self) -> u64 {
        std::fs::metadata(&self.log).map_or(0, |m| m.len())
    }

    /// The requests the registry served after its log was `offset` bytes long,
    /// from its access log, once nothing more has been logged for 100 ms (a
    /// request's line is written just after its response).
    pub fn requests_since(&self, offset: u64) -> Vec<Request> {
        let mut len = self.log_len();
        loop {
            std::thread::sleep(Duration::from_millis(100));
            let now = self.log_len();
            if now == len {
                break;
            }
            len = now;
        }
        let log = std::fs::read(&self.log).unwrap_or_default();
        let since = log.get(offset as usize..).unwrap_or_default();
        String::from_utf8_lossy(since).lines().filter_map(Request::parse).collect()
    }
}

/// One request of a registry's access log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// The path and query, e.g. `/v2/e2e/x/manifests/v1`.
    pub uri: String,
    pub status: u16,
}

impl Request {
    /// A line of the access log (combined log format):
    /// `127.0.0.1 - - [date] "GET /v2/ HTTP/1.1" 200 2 "" "agent"`.
    fn parse(line: &str) -> Option<Request> {
        let (_, rest) = line.split_once("] \"")?;
        let (request, rest) = rest.split_once('"')?;
        let mut words = request.split(' ');
        let (method, uri) = (words.next()?, words.next()?);
        if !words.next()?.starts_with("HTTP/") {
            return None;
        }
        let status = rest.split_whitespace().next()?.parse().ok()?;
        Some(Request { method: method.to_owned(), uri: uri.to_owned(), status })
    }

    /// `GET /v2/`: the version check a client makes to learn how to authenticate.
    pub fn is_ping(&self) -> bool {
        self.uri == "/v2/"
    }

    /// A request for a manifest or an index, by tag or digest.
    pub fn is_manifest(&self) -> bool {
        self.uri.contains("/manifests/")
    }

    /// A request for a blob (config or layer), not an upload.
    pub fn is_blob(&self) -> bool {
        self.uri.contains("/blobs/") && !self.uri.contains("/blobs/uploads/")
    }
}

/// The registry of this test process, started on first use.
pub fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(|| start("registry", "", 200))
}

/// A registry of one test's own, for tests that kill it.
pub fn start_own_registry(name: &str) -> Registry {
    start(name, "", 200)
}

/// A registry with `extra_config` appended to its YAML (top level, after the
/// `http:` block), ready when `GET /v2/` answers `ready_status`.
pub fn start_with_config(name: &str, extra_config: &str, ready_status: u16) -> Registry {
    start(name, extra_config, ready_status)
}

/// A registry served over TLS, with a certificate from a CA of the test's own.
pub struct TlsRegistry {
    pub registry: Registry,
    /// The CA certificate, PEM: trusted by nobody unless told.
    pub ca_pem: String,
    pub ca_file: PathBuf,
}

/// The TLS registry of this test process, started on first use.
pub fn tls_registry() -> &'static TlsRegistry {
    static REGISTRY: OnceLock<TlsRegistry> = OnceLock::new();
    REGISTRY.get_or_init(|| {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
        let dir = scratch_dir("tls-certs");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(DnType::CommonName, "wasmrun e2e CA");
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("CA key")).expect("CA");
        let key = KeyPair::generate().expect("server key");
        let cert = CertificateParams::new(vec!["127.0.0.1".to_owned()])
            .expect("server params")
            .signed_by(&key, &ca)
            .expect("server certificate");
        let (ca_file, cert_file, key_file) = (dir.join("ca.pem"), dir.join("server.pem"), dir.join("server.key"));
        std::fs::write(&ca_file, ca.pem()).expect("write CA");
        std::fs::write(&cert_file, cert.pem()).expect("write certificate");
        std::fs::write(&key_file, key.serialize_pem()).expect("write key");
        let tls = format!("  tls:\n    certificate: {}\n    key: {}\n", cert_file.display(), key_file.display());
        // A TLS registry answers a plain-http GET /v2/ with 400 once it is up.
        TlsRegistry { registry: start("tls-registry", &tls, 400), ca_pem: ca.pem(), ca_file }
    })
}

/// A second registry that requires a login (htpasswd, basic auth).
pub struct AuthRegistry {
    pub registry: Registry,
    pub username: String,
    pub password: String,
}

/// The registry with a login of this test process, started on first use.
pub fn auth_registry() -> &'static AuthRegistry {
    static REGISTRY: OnceLock<AuthRegistry> = OnceLock::new();
    REGISTRY.get_or_init(|| {
        let (username, password) = ("e2e-user".to_owned(), format!("pw-{}", super::random_id()));
        let htpasswd = scratch_dir("htpasswd").join("htpasswd");
        let hash = bcrypt::hash(&password, 4).expect("bcrypt");
        std::fs::write(&htpasswd, format!("{username}:{hash}\n")).expect("write htpasswd");
        let auth = format!("auth:\n  htpasswd:\n    realm: e2e\n    path: {}\n", htpasswd.display());
        // A registry that wants a login answers /v2/ with 401 once it is up.
        AuthRegistry { registry: start("auth-registry", &auth, 401), username, password }
    })
}

enum Event {
    Spawned(u32),
    SpawnFailed(std::io::Error),
    Exited(std::io::Result<ExitStatus>),
}

/// Starts a registry with `extra_config` appended to its YAML, ready when
/// `GET /v2/` answers `ready_status`.
fn start(name: &str, extra_config: &str, ready_status: u16) -> Registry {
    let dir = scratch_dir(name);
    let port = free_port();
    let config = dir.join("config.yml");
    let log = dir.join("registry.log");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\n\
             log:\n  level: info\n\
             storage:\n  filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: true\n\
             http:\n  addr: 127.0.0.1:{port}\n{extra_config}",
            storage = dir.join("storage").display()
        ),
    )
    .expect("write registry config");

    // PR_SET_PDEATHSIG fires when the spawning *thread* exits, and the test
    // threads are short-lived: spawn from a thread that lives as long as the
    // registry does.
    let (tx, rx) = mpsc::channel();
    let (thread_config, thread_log) = (config.clone(), log.clone());
    std::thread::Builder::new()
        .name(format!("e2e-{name}"))
        .spawn(move || {
            let log_file = std::fs::File::create(&thread_log).expect("create registry log");
            let mut cmd = Command::new(REGISTRY_BIN);
            cmd.arg("serve")
                .arg(&thread_config)
                .stdin(Stdio::null())
                .stdout(log_file.try_clone().expect("clone log handle"))
                .stderr(log_file);
            die_with_parent(&mut cmd);
            match cmd.spawn() {
                Ok(mut child) => {
                    let _ = tx.send(Event::Spawned(child.id()));
                    let _ = tx.send(Event::Exited(child.wait()));
                }
                Err(e) => {
                    let _ = tx.send(Event::SpawnFailed(e));
                }
            }
        })
        .expect("spawn registry thread");

    let pid = match rx.recv() {
        Ok(Event::Spawned(pid)) => pid,
        Ok(Event::SpawnFailed(e)) => panic!("cannot run {REGISTRY_BIN}: {e}"),
        other => panic!("registry thread ended before spawning: {:?}", other.is_ok()),
    };
    let registry = Registry { port, pid, dir, log };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match rx.try_recv() {
            Ok(Event::SpawnFailed(e)) => panic!("cannot run {REGISTRY_BIN}: {e}"),
            Ok(Event::Exited(status)) => panic!(
                "registry exited early ({status:?}); log {}:\n{}",
                registry.log.display(),
                tail_file(&registry.log, 50)
            ),
            Ok(Event::Spawned(_)) | Err(_) => {}
        }
        if http_get(&registry.host(), "/v2/", None).is_ok_and(|(status, _)| status == ready_status) {
            return registry;
        }
        if Instant::now() > deadline {
            panic!(
                "registry did not answer GET /v2/ within 30 s; log {}:\n{}",
                registry.log.display(),
                tail_file(&registry.log, 50)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
