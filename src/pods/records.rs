//! Pods and containers on disk, so that a daemon restart loses nothing
//! kubelet relies on (containerd keeps the same in its metadata store).
//!
//! One JSON file per object, named by its id:
//! `<root>/pods/sandboxes/<id>.json` and `<root>/pods/containers/<id>.json`.
//! Each is replaced whole when the object changes (written to a temporary
//! file, then renamed over the old one), so a daemon killed at any point
//! leaves the old record or the new one, never a part of one. Records are not
//! fsynced one by one (that costs about 0.5 ms a write on this project's test
//! machine, which would double CreateContainer): a power loss may lose the
//! last changes, or leave a torn record. A record that cannot be read is
//! moved to `<root>/pods/set-aside/` with a warning, never fatal.
//!
//! The CRI configs are kept as they came, in their protobuf encoding (base64
//! in the JSON): exactly what kubelet sent, whatever fields later CRI
//! versions add.

use std::io;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use super::container::Process;
use super::lifecycle::Phase;
use crate::api;
use crate::error::{Error, Result};
use crate::images::Image;
use crate::wasm::{Exit, ExitReason, ModuleSource, Root};

/// The version of the record format; a record of another version is set aside.
pub(super) const VERSION: u32 = 1;

/// A pod sandbox as recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct SandboxRecord {
    pub version: u32,
    pub id: String,
    pub config: Proto<api::PodSandboxConfig>,
    pub runtime_handler: String,
    /// Unix nanoseconds.
    pub created_at: i64,
    pub ready: bool,
}

/// A container as recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct ContainerRecord {
    pub version: u32,
    pub id: String,
    pub pod_id: String,
    pub config: Proto<api::ContainerConfig>,
    pub image: Image,
    pub process: Process,
    pub log_path: Option<PathBuf>,
    pub root: Option<RootRecord>,
    pub module_source: ModuleSource,
    /// Unix nanoseconds.
    pub created_at: i64,
    /// As last set by CreateContainer or UpdateContainerResources.
    pub resources: Option<Proto<api::LinuxContainerResources>>,
    pub phase: PhaseRecord,
}

/// A container's root filesystem (see `rootfs`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct RootRecord {
    pub host_path: PathBuf,
    pub readonly: bool,
}

/// The phase as recorded. A container being started is recorded as created:
/// a start the daemon did not finish did not happen.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub(super) enum PhaseRecord {
    Created,
    Running { started_at: i64 },
    Exited { started_at: i64, code: i32, reason: String, message: String, finished_at: i64 },
}

/// A protobuf message kept as the base64 of its encoding.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Proto<M>(pub M);

impl<M: prost::Message> Serialize for Proto<M> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&base64::engine::general_purpose::STANDARD.encode(self.0.encode_to_vec()))
    }
}

impl<'de, M: prost::Message + Default> Deserialize<'de> for Proto<M> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        let text = String::deserialize(deserializer)?;
        let bytes = base64::engine::general_purpose::STANDARD.decode(text).map_err(D::Error::custom)?;
        M::decode(bytes.as_slice()).map(Proto).map_err(D::Error::custom)
    }
}

impl PhaseRecord {
    pub fn of(phase: &Phase) -> Self {
        match phase {
            Phase::Created | Phase::Starting => PhaseRecord::Created,
            Phase::Running { started_at } => PhaseRecord::Running { started_at: *started_at },
            Phase::Exited { started_at, exit } => PhaseRecord::Exited {
                started_at: *started_at,
                code: exit.code,
                reason: exit.reason.as_str().to_owned(),
                message: exit.message.clone(),
                finished_at: exit.finished_at,
            },
        }
    }

    /// The phase; an unknown exit reason is an error (the record is set aside).
    pub fn phase(&self) -> Result<Phase, String> {
        Ok(match self {
            PhaseRecord::Created => Phase::Created,
            PhaseRecord::Running { started_at } => Phase::Running { started_at: *started_at },
            PhaseRecord::Exited { started_at, code, reason, message, finished_at } => Phase::Exited {
                started_at: *started_at,
                exit: Exit {
                    code: *code,
                    reason: ExitReason::parse(reason).ok_or_else(|| format!("unknown exit reason {reason:?}"))?,
                    message: message.clone(),
                    finished_at: *finished_at,
                },
            },
        })
    }
}

impl RootRecord {
    pub fn of(root: &Root) -> Self {
        Self { host_path: root.host_path.clone(), readonly: root.readonly }
    }
}

/// What was found on disk at start.
#[derive(Debug, Default)]
pub(super) struct Loaded {
    pub sandboxes: Vec<SandboxRecord>,
    pub containers: Vec<ContainerRecord>,
}

/// The record files under `<root>/pods`.
pub(super) struct Records {
    sandboxes: PathBuf,
    containers: PathBuf,
    set_aside: PathBuf,
}

impl Records {
    /// The records under `root` (the daemon's root directory); the directories are made now.
    /// Errors: Internal when they cannot be made.
    pub fn open(root: &Path) -> Result<Self> {
        let dir = root.join("pods");
        let records = Self {
            sandboxes: dir.join("sandboxes"),
            containers: dir.join("containers"),
            set_aside: dir.join("set-aside"),
        };
        for dir in [&records.sandboxes, &records.containers] {
            std::fs::create_dir_all(dir).map_err(|e| Error::internal(format!("creating {}", dir.display()), e))?;
        }
        Ok(records)
    }

    /// The file of pod `id`'s record.
    pub fn sandbox_path(&self, id: &str) -> PathBuf {
        self.sandboxes.join(format!("{id}.json"))
    }

    /// The file of container `id`'s record.
    pub fn container_path(&self, id: &str) -> PathBuf {
        self.containers.join(format!("{id}.json"))
    }

    pub async fn save_sandbox(&self, record: &SandboxRecord) -> Result<()> {
        write(self.sandbox_path(&record.id), record).await
    }

    pub async fn save_container(&self, record: &ContainerRecord) -> Result<()> {
        write(self.container_path(&record.id), record).await
    }

    pub async fn delete_sandbox(&self, id: &str) -> Result<()> {
        delete(self.sandbox_path(id)).await
    }

    pub async fn delete_container(&self, id: &str) -> Result<()> {
        delete(self.container_path(id)).await
    }

    /// Every readable record. Blocking: called once, at start, off the async workers.
    pub fn load(&self) -> Loaded {
        Loaded { sandboxes: self.load_dir(&self.sandboxes), containers: self.load_dir(&self.containers) }
    }

    /// Moves a record whose content cannot be used (`why`) out of the way, with a warning.
    pub fn set_aside(&self, path: &Path, why: &str) {
        let kind = path.parent().and_then(Path::file_name).map(|k| k.to_string_lossy().into_owned());
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let target = self.set_aside.join(format!("{}-{name}.{}", kind.unwrap_or_default(), crate::clock::now_nanos()));
        let moved = std::fs::create_dir_all(&self.set_aside).and_then(|()| std::fs::rename(path, &target));
        match moved {
            Ok(()) => {
                tracing::warn!(record = %path.display(), moved_to = %target.display(), why, "a pod or container record cannot be used; set aside")
            }
            Err(e) => {
                tracing::warn!(record = %path.display(), why, error = %e, "a pod or container record cannot be used, nor set aside")
            }
        }
    }

    fn load_dir<T: serde::de::DeserializeOwned + Versioned>(&self, dir: &Path) -> Vec<T> {
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot read the records");
                return Vec::new();
            }
        };
        let mut records = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.contains(".tmp") {
                // A write the daemon did not finish: the record it was replacing stands.
                let _ = std::fs::remove_file(&path);
                continue;
            }
            let parsed = std::fs::read(&path)
                .map_err(|e| format!("cannot read it: {e}"))
                .and_then(|bytes| serde_json::from_slice::<T>(&bytes).map_err(|e| format!("cannot parse it: {e}")))
                .and_then(|record| match record.version() {
                    VERSION => Ok(record),
                    other => Err(format!("its format version is {other}, not {VERSION}")),
                })
                .and_then(|record| match Some(record.id()) == name.strip_suffix(".json") {
                    true => Ok(record),
                    false => Err("its id is not its file's name".to_owned()),
                });
            match parsed {
                Ok(record) => records.push(record),
                Err(why) => self.set_aside(&path, &why),
            }
        }
        records
    }
}

/// What `load_dir` checks of every record.
trait Versioned {
    fn version(&self) -> u32;
    fn id(&self) -> &str;
}

impl Versioned for SandboxRecord {
    fn version(&self) -> u32 {
        self.version
    }
    fn id(&self) -> &str {
        &self.id
    }
}

impl Versioned for ContainerRecord {
    fn version(&self) -> u32 {
        self.version
    }
    fn id(&self) -> &str {
        &self.id
    }
}

/// Replaces `path` with the JSON of `record`: a temporary file renamed over it.
async fn write(path: PathBuf, record: &impl Serialize) -> Result<()> {
    let bytes = serde_json::to_vec(record).map_err(|e| Error::internal(format!("encoding {}", path.display()), e))?;
    tokio::task::spawn_blocking(move || {
        let tmp = path.with_extension(format!("json.tmp{}", rand::random::<u32>()));
        std::fs::write(&tmp, &bytes).and_then(|()| std::fs::rename(&tmp, &path)).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            Error::internal(format!("writing the record {}", path.display()), e)
        })
    })
    .await
    .map_err(|e| Error::internal("writing a record", e))?
}

async fn delete(path: PathBuf) -> Result<()> {
    match tokio::fs::remove_file(&path).await {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(Error::internal(format!("deleting the record {}", path.display()), e))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sandbox(id: &str) -> SandboxRecord {
        SandboxRecord {
            version: VERSION,
            id: id.into(),
            config: Proto(api::PodSandboxConfig {
                metadata: Some(api::PodSandboxMetadata { name: "p".into(), ..Default::default() }),
                labels: [("a".to_owned(), "b".to_owned())].into(),
                ..Default::default()
            }),
            runtime_handler: "wasmrun".into(),
            created_at: 7,
            ready: true,
        }
    }

    #[tokio::test]
    async fn a_record_reads_back_as_written_and_a_bad_one_is_set_aside() {
        let root = tempdir();
        let records = Records::open(&root).unwrap();
        records.save_sandbox(&sandbox("aaa")).await.unwrap();
        records.save_sandbox(&sandbox("bbb")).await.unwrap();
        std::fs::write(root.join("pods/sandboxes/ccc.json"), b"{\"version\": 1, \"id\": \"cc").unwrap();
        std::fs::write(root.join("pods/sandboxes/ddd.json.tmp123"), b"half").unwrap();
        let mut loaded = records.load().sandboxes;
        loaded.sort_by(|a, b| a.id.cmp(&b.id));
        assert_eq!(loaded, vec![sandbox("aaa"), sandbox("bbb")]);
        let set_aside: Vec<_> = std::fs::read_dir(root.join("pods/set-aside")).unwrap().flatten().collect();
        assert_eq!(set_aside.len(), 1);
        assert!(set_aside[0].file_name().to_string_lossy().starts_with("sandboxes-ccc.json."));
        assert!(!root.join("pods/sandboxes/ccc.json").exists());
        assert!(!root.join("pods/sandboxes/ddd.json.tmp123").exists());
        records.delete_sandbox("aaa").await.unwrap();
        records.delete_sandbox("aaa").await.unwrap();
        assert_eq!(records.load().sandboxes, vec![sandbox("bbb")]);
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn phases_read_back_as_written() {
        let exited = Phase::Exited {
            started_at: 3,
            exit: Exit { code: 137, reason: ExitReason::OomKilled, message: "m".into(), finished_at: 4 },
        };
        for phase in [Phase::Created, Phase::Running { started_at: 3 }, exited] {
            assert_eq!(PhaseRecord::of(&phase).phase().unwrap(), phase);
        }
        assert_eq!(PhaseRecord::of(&Phase::Starting).phase().unwrap(), Phase::Created);
        let odd = PhaseRecord::Exited {
            started_at: 0,
            code: 1,
            reason: "Tired".into(),
            message: String::new(),
            finished_at: 0,
        };
        assert!(odd.phase().is_err());
    }

    fn tempdir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("wasmrun-records-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
