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

    /// The registry's filesystem storage (its `rootdirectory`).
    pub fn storage(&self) -> PathBuf {
        self.dir.join("storage")
    }
}

/// The registry of this test process, started on first use.
pub fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(start)
}

enum Event {
    Spawned,
    SpawnFailed(std::io::Error),
    Exited(std::io::Result<ExitStatus>),
}

fn start() -> Registry {
    let dir = scratch_dir("registry");
    let port = free_port();
    let config = dir.join("config.yml");
    let log = dir.join("registry.log");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\n\
             log:\n  level: info\n\
             storage:\n  filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: true\n\
             http:\n  addr: 127.0.0.1:{port}\n",
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
        .name("e2e-registry".into())
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
                    let _ = tx.send(Event::Spawned);
                    let _ = tx.send(Event::Exited(child.wait()));
                }
                Err(e) => {
                    let _ = tx.send(Event::SpawnFailed(e));
                }
            }
        })
        .expect("spawn registry thread");

    let registry = Registry { port, dir, log };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match rx.try_recv() {
            Ok(Event::SpawnFailed(e)) => panic!("cannot run {REGISTRY_BIN}: {e}"),
            Ok(Event::Exited(status)) => panic!(
                "registry exited early ({status:?}); log {}:\n{}",
                registry.log.display(),
                tail_file(&registry.log, 50)
            ),
            Ok(Event::Spawned) | Err(_) => {}
        }
        if let Ok((200, _)) = http_get(&registry.host(), "/v2/", None) {
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
