//! Pods and containers on disk, so that a daemon restart loses nothing
//! kubelet relies on (containerd keeps the same in its metadata store).
//!
//! One journal, `<root>/pods/journal`: a JSON line per change, appended
//! (the object's whole record, or its deletion). Every change is written
//! before the call that made it returns, so an answer kubelet gets never
//! shows a state the journal lacks; a write that returned is in the kernel,
//! and a daemon killed at any moment keeps it. Appends are not fsynced (a
//! power loss may lose the last changes). The journal is rewritten with only
//! the live records at start and whenever it holds more than twice as many
//! lines as live records (plus [`COMPACT_SLACK`]).
//!
//! A change is one `write` of a line to a file kept open, made on the
//! calling task's thread through `crate::blocking::in_place`: a write the
//! kernel makes wait holds up no other task, and a change waits for no
//! other thread. What each way of appending costs is measured by `cargo
//! bench -- append` (see `crate::blocking`); a record file per object,
//! created and renamed over, cost about 0.4 ms a change.
//!
//! At start the lines are read in order, each replacing (or deleting) its
//! object's record. A line that cannot be used (torn by a power loss, or
//! not a record of this format version) is moved to `<root>/pods/set-aside/`
//! with a warning, never fatal; so is a record the daemon cannot recover
//! (a container whose pod has no record).
//!
//! The CRI configs are kept as they came, in their protobuf encoding (base64
//! in the JSON): exactly what kubelet sent, whatever fields later CRI
//! versions add.

use std::collections::HashMap;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use super::container::Process;
use super::lifecycle::Phase;
use crate::api;
use crate::error::{Error, Result};
use crate::images::Image;
use crate::network::{Attachment, Joined};
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
    /// The pod's network (its namespace, CNI configuration and result); none
    /// for a hostNetwork pod. Absent from records written before pods had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<Attachment>,
    /// For a mixed pod, the backing runtime's sandbox network it joined.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub joined: Option<Joined>,
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

/// One line of the journal.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Line {
    Sandbox(Box<SandboxRecord>),
    Container(Box<ContainerRecord>),
    DeleteSandbox(String),
    DeleteContainer(String),
}

/// Which object a line is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Sandbox(String),
    Container(String),
}

/// Lines the journal may hold beyond twice the live records before it is rewritten.
const COMPACT_SLACK: usize = 1024;

/// The journal under `<root>/pods`, appended to by the calls that change
/// pods and containers.
pub(super) struct Records {
    journal: Mutex<Journal>,
    set_aside: PathBuf,
}

/// The open journal and where its live lines are.
struct Journal {
    path: PathBuf,
    file: std::fs::File,
    places: Places,
    /// The file's length in bytes: where the next line goes.
    end: u64,
    /// Lines in the file, live or not.
    lines: usize,
}

impl Records {
    /// Reads the journal under `root` (the daemon's root directory) and
    /// rewrites it with the live records only. Blocking: call it off the
    /// async workers. Errors: Internal when the directory or the journal
    /// cannot be made.
    pub fn open(root: &Path) -> Result<(Self, Loaded)> {
        let dir = root.join("pods");
        let set_aside = dir.join("set-aside");
        std::fs::create_dir_all(&dir).map_err(|e| Error::internal(format!("creating {}", dir.display()), e))?;
        let path = dir.join("journal");
        let live = read(&path, &set_aside);
        let mut loaded = Loaded::default();
        for line in live.values() {
            match serde_json::from_slice::<Line>(line) {
                Ok(Line::Sandbox(record)) => loaded.sandboxes.push(*record),
                Ok(Line::Container(record)) => loaded.containers.push(*record),
                _ => {}
            }
        }
        let journal = rewrite(path, live.iter().map(|(key, line)| (key, line.as_slice())))?;
        Ok((Self { journal: Mutex::new(journal), set_aside }, loaded))
    }

    /// Writes the pod's record; it is in the journal when this returns.
    /// Errors: Internal when it cannot be encoded or written.
    pub fn save_sandbox(&self, record: &SandboxRecord) -> Result<()> {
        self.write(Key::Sandbox(record.id.clone()), &Line::Sandbox(Box::new(record.clone())))
    }

    /// Writes the container's record (see [`Records::save_sandbox`]).
    pub fn save_container(&self, record: &ContainerRecord) -> Result<()> {
        self.write(Key::Container(record.id.clone()), &Line::Container(Box::new(record.clone())))
    }

    /// Deletes the pod's record (see [`Records::save_sandbox`]).
    pub fn delete_sandbox(&self, id: &str) -> Result<()> {
        self.write(Key::Sandbox(id.to_owned()), &Line::DeleteSandbox(id.to_owned()))
    }

    /// Deletes the container's record (see [`Records::save_sandbox`]).
    pub fn delete_container(&self, id: &str) -> Result<()> {
        self.write(Key::Container(id.to_owned()), &Line::DeleteContainer(id.to_owned()))
    }

    /// Moves a container's record the daemon cannot use (`why`) out of the
    /// journal into the set-aside directory, with a warning.
    pub fn set_aside_container(&self, record: &ContainerRecord, why: &str) {
        let bytes = serde_json::to_vec(&Line::Container(Box::new(record.clone()))).unwrap_or_default();
        set_aside(&self.set_aside, &format!("container-{}", record.id), &bytes, why);
        if let Err(e) = self.delete_container(&record.id) {
            tracing::warn!(container = %record.id, error = %e, "cannot take a set-aside record out of the journal");
        }
    }

    /// Appends `line` (about `key`) with one `write`, on the calling thread
    /// (see the module's docs), and rewrites the journal when it has grown.
    fn write(&self, key: Key, line: &Line) -> Result<()> {
        let mut bytes =
            serde_json::to_vec(line).map_err(|e| Error::internal(format!("encoding the record {key:?}"), e))?;
        bytes.push(b'\n');
        let live = matches!(line, Line::Sandbox(_) | Line::Container(_));
        crate::blocking::in_place(|| {
            let mut journal = self.journal.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            journal.append(key, &bytes, live)
        })
    }
}

impl Journal {
    /// Appends the line `bytes` about `key`: its record if `live`, else its
    /// deletion. A line only partly written is cut off again, so that the
    /// next one starts a line of its own.
    fn append(&mut self, key: Key, bytes: &[u8], live: bool) -> Result<()> {
        if let Err(e) = self.file.write_all(bytes) {
            let _ = self.file.set_len(self.end);
            return Err(Error::internal(format!("recording {key:?} in {}", self.path.display()), e));
        }
        if live {
            self.places.insert(key, (self.end, bytes.len()));
        } else {
            self.places.remove(&key);
        }
        self.end += bytes.len() as u64;
        self.lines += 1;
        if self.lines > 2 * self.places.len() + COMPACT_SLACK {
            self.compact();
        }
        Ok(())
    }

    /// Rewrites the journal with its live lines only. A failure is logged:
    /// the journal stays as it was, and appends go on.
    fn compact(&mut self) {
        let rewritten = live_lines(&self.path, &self.places)
            .map_err(|e| Error::internal(format!("reading {}", self.path.display()), e))
            .and_then(|live| rewrite(self.path.clone(), live.iter().map(|(key, line)| (key, line.as_slice()))));
        match rewritten {
            Ok(journal) => *self = journal,
            Err(e) => tracing::warn!(journal = %self.path.display(), error = %e, "cannot rewrite the pod records"),
        }
    }
}

/// The live records of the journal at `path`, by object, as the lines that
/// state them; lines that cannot be used are set aside.
fn read(path: &Path, set_aside_dir: &Path) -> HashMap<Key, Vec<u8>> {
    let mut live = HashMap::new();
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return live,
        Err(e) => {
            tracing::warn!(journal = %path.display(), error = %e, "cannot read the pod records; starting without them");
            set_aside_file(path, set_aside_dir);
            return live;
        }
    };
    for (number, line) in bytes.split_inclusive(|b| *b == b'\n').enumerate() {
        let parsed =
            serde_json::from_slice::<Line>(line).map_err(|e| format!("cannot parse it: {e}")).and_then(|parsed| {
                let version = match &parsed {
                    Line::Sandbox(record) => record.version,
                    Line::Container(record) => record.version,
                    Line::DeleteSandbox(_) | Line::DeleteContainer(_) => VERSION,
                };
                match version {
                    VERSION => Ok(parsed),
                    other => Err(format!("its format version is {other}, not {VERSION}")),
                }
            });
        let why = match parsed {
            Ok(Line::Sandbox(record)) => {
                live.insert(Key::Sandbox(record.id), line.to_vec());
                continue;
            }
            Ok(Line::Container(record)) => {
                live.insert(Key::Container(record.id), line.to_vec());
                continue;
            }
            Ok(Line::DeleteSandbox(id)) => {
                live.remove(&Key::Sandbox(id));
                continue;
            }
            Ok(Line::DeleteContainer(id)) => {
                live.remove(&Key::Container(id));
                continue;
            }
            Err(why) if !line.ends_with(b"\n") => format!("the journal's last line is cut short ({why})"),
            Err(why) => why,
        };
        set_aside(set_aside_dir, &format!("journal-line-{}", number + 1), line, &why);
    }
    live
}

/// Where each live record's line is in the journal: its offset and length in bytes.
type Places = HashMap<Key, (u64, usize)>;

/// Replaces the journal at `path` with `lines` (atomically and synced, as
/// `durable::write_atomically` does), and opens it for appending, knowing
/// where each line is.
fn rewrite<'a>(path: PathBuf, lines: impl Iterator<Item = (&'a Key, &'a [u8])>) -> Result<Journal> {
    let mut all = Vec::new();
    let mut places = Places::new();
    for (key, line) in lines {
        places.insert(key.clone(), (all.len() as u64, line.len()));
        all.extend_from_slice(line);
    }
    crate::durable::write_atomically(&path, &all)?;
    let file = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .map_err(|e| Error::internal(format!("opening {}", path.display()), e))?;
    Ok(Journal { path, file, lines: places.len(), places, end: all.len() as u64 })
}

/// The live lines of the journal at `path`, found by their `places`.
fn live_lines(path: &Path, places: &Places) -> io::Result<Vec<(Key, Vec<u8>)>> {
    let journal = std::fs::read(path)?;
    places
        .iter()
        .map(|(key, &(offset, len))| {
            let line = journal.get(offset as usize..offset as usize + len).ok_or_else(|| {
                io::Error::new(io::ErrorKind::UnexpectedEof, format!("the journal is shorter than {key:?}'s line"))
            })?;
            Ok((key.clone(), line.to_vec()))
        })
        .collect()
}

/// Keeps `bytes` that cannot be used (`why`) as `<dir>/<name>.<now>`, with a warning.
fn set_aside(dir: &Path, name: &str, bytes: &[u8], why: &str) {
    let target = dir.join(format!("{name}.{}", crate::clock::now_nanos()));
    match std::fs::create_dir_all(dir).and_then(|()| std::fs::write(&target, bytes)) {
        Ok(()) => {
            tracing::warn!(moved_to = %target.display(), why, "a pod or container record cannot be used; set aside")
        }
        Err(e) => tracing::warn!(why, error = %e, "a pod or container record cannot be used, nor set aside"),
    }
}

/// Moves a whole journal that cannot be read out of the way.
fn set_aside_file(path: &Path, dir: &Path) {
    let target = dir.join(format!("journal.{}", crate::clock::now_nanos()));
    if let Err(e) = std::fs::create_dir_all(dir).and_then(|()| std::fs::rename(path, &target)) {
        tracing::warn!(journal = %path.display(), error = %e, "cannot set the unreadable journal aside");
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
            network: None,
            joined: (id == "ccc")
                .then(|| Joined { netns: Some("/run/netns/cni-1".into()), ips: vec!["10.1.0.7".parse().unwrap()] }),
        }
    }

    #[test]
    fn records_read_back_as_written_and_lines_that_cannot_be_used_are_set_aside() {
        let root = tempdir();
        let (records, loaded) = Records::open(&root).unwrap();
        assert!(loaded.sandboxes.is_empty() && loaded.containers.is_empty());
        records.save_sandbox(&sandbox("aaa")).unwrap();
        records.save_sandbox(&sandbox("bbb")).unwrap();
        let mut changed = sandbox("aaa");
        changed.ready = false;
        records.save_sandbox(&changed).unwrap();
        records.save_sandbox(&sandbox("ccc")).unwrap();
        records.delete_sandbox("bbb").unwrap();
        drop(records);
        // A line of another version in the middle, and a last line cut short.
        let journal = root.join("pods/journal");
        let mut bytes = std::fs::read(&journal).unwrap();
        let mut odd = sandbox("ddd");
        odd.version = VERSION + 1;
        let middle = bytes.iter().position(|b| *b == b'\n').unwrap() + 1;
        let mut line = serde_json::to_vec(&Line::Sandbox(Box::new(odd))).unwrap();
        line.push(b'\n');
        bytes.splice(middle..middle, line);
        let mut torn = serde_json::to_vec(&Line::Sandbox(Box::new(sandbox("eee")))).unwrap();
        torn.truncate(torn.len() / 2);
        bytes.extend(torn);
        std::fs::write(&journal, bytes).unwrap();

        let (records, loaded) = Records::open(&root).unwrap();
        let mut sandboxes = loaded.sandboxes;
        sandboxes.sort_by(|a, b| a.id.cmp(&b.id));
        assert_eq!(sandboxes, vec![changed, sandbox("ccc")]);
        let mut set_aside: Vec<String> = std::fs::read_dir(root.join("pods/set-aside"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        set_aside.sort();
        assert_eq!(set_aside.len(), 2, "{set_aside:?}");
        assert!(
            set_aside[0].starts_with("journal-line-2.") && set_aside[1].starts_with("journal-line-7."),
            "{set_aside:?}"
        );
        // Rewritten at start: only the live records are left.
        assert_eq!(std::fs::read(&journal).unwrap().split(|b| *b == b'\n').filter(|l| !l.is_empty()).count(), 2);
        records.delete_sandbox("ccc").unwrap();
        drop(records);
        assert_eq!(Records::open(&root).unwrap().1.sandboxes.len(), 1);
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn a_journal_that_grows_is_rewritten_with_the_live_records() {
        let root = tempdir();
        let (records, _) = Records::open(&root).unwrap();
        for round in 0..3 * COMPACT_SLACK {
            let mut record = sandbox("aaa");
            record.created_at = round as i64;
            records.save_sandbox(&record).unwrap();
        }
        let lines = std::fs::read(root.join("pods/journal")).unwrap().iter().filter(|b| **b == b'\n').count();
        assert!(lines <= 2 + COMPACT_SLACK, "the journal has {lines} lines for one record");
        drop(records);
        let loaded = Records::open(&root).unwrap().1;
        assert_eq!(loaded.sandboxes.len(), 1);
        assert_eq!(loaded.sandboxes[0].created_at, 3 * COMPACT_SLACK as i64 - 1);
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
