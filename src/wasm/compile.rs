//! Compiled code, cached in memory and on disk.
//!
//! On disk a binary's native code lives at `<cache>/<engine fingerprint>/<digest
//! hex>.cwasm`. The fingerprint hashes everything that makes compiled code
//! incompatible (wasmtime version, target, engine settings), so a changed
//! engine never loads stale code: it misses and compiles again. Keying by the
//! binary's own digest, not the image's, shares code between images that ship
//! the same module.
//!
//! A binary the cache misses is compiled by a worker process into its cache
//! file (`compile_worker`), and loaded from there like any cached code: the
//! daemon memory-maps compiled code and never holds a compiler's heap.
//!
//! A binary is linked against the host's WASI (`host::Linkers`) once it is
//! loaded, so that a program importing what the host does not provide is
//! refused before any container runs it.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::compile_worker::Compiler;
use super::host::Linkers;
use super::host::p1::P1State;
use super::host::p2::P2State;
use crate::digest::Digest;
use crate::error::{Error, Result};

/// What the binary header of a wasm file says it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WasmKind {
    /// A core module (`\0asm` version 1).
    Module,
    /// A component (`\0asm`, version 0x0d, layer 1).
    Component,
}

impl WasmKind {
    /// Reads the 8-byte header: magic, then version and layer.
    pub fn detect(header: &[u8]) -> Option<Self> {
        match header.get(..8)? {
            [0, b'a', b's', b'm', 1, 0, 0, 0] => Some(WasmKind::Module),
            [0, b'a', b's', b'm', _, _, 1, 0] => Some(WasmKind::Component),
            _ => None,
        }
    }
}

/// A binary ready to instantiate: compiled, and its imports resolved against WASI.
pub struct Compiled {
    pub(super) program: Program,
    /// The binary's digest (`sha256:…`).
    pub(super) digest: String,
    /// Its compiled code on disk (absent if it could not be written), which
    /// the engine of served components loads too (see `serving`).
    pub(super) cwasm: PathBuf,
}

pub(super) enum Program {
    /// A WASI preview 1 command module, run through `_start`.
    Module(wasmtime::InstancePre<P1State>),
    /// A WASI 0.2 component: a command, a `wasi:http` service, or both.
    Component(ComponentProgram),
}

/// What a component can be run as: at least one of the two is there.
pub(super) struct ComponentProgram {
    /// Run through its `wasi:cli/run` export.
    pub command: Option<wasmtime_wasi::p2::bindings::CommandPre<P2State>>,
    /// Served, a fresh instance per request, through its
    /// `wasi:http/incoming-handler` export (the `wasi:http/proxy` world).
    pub proxy: Option<wasmtime_wasi_http::p2::bindings::ProxyPre<P2State>>,
}

impl Compiled {
    /// Whether it is a component exporting `wasi:http/incoming-handler`.
    pub fn serves_http(&self) -> bool {
        matches!(&self.program, Program::Component(ComponentProgram { proxy: Some(_), .. }))
    }

    /// Its `wasi:http/proxy` form, if it is a component that serves.
    pub(super) fn proxy(&self) -> Option<wasmtime_wasi_http::p2::bindings::ProxyPre<P2State>> {
        match &self.program {
            Program::Component(component) => component.proxy.clone(),
            Program::Module(_) => None,
        }
    }

    /// Whether it can run as a command (`_start`, or `wasi:cli/run`).
    pub fn runs_as_command(&self) -> bool {
        match &self.program {
            Program::Module(_) => true,
            Program::Component(component) => component.command.is_some(),
        }
    }
}

/// Where a container's compiled code came from; shown in ContainerStatus' verbose info.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ModuleSource {
    /// Compiled for this call.
    Compiled,
    /// Loaded from the on-disk cache (memory-mapped, no compilation).
    DiskCache,
    /// Already loaded by an earlier call.
    Memory,
}

/// The bytes of a binary to compile, when the cache misses.
pub enum WasmSource {
    /// A verified blob of the image store.
    File(PathBuf),
    /// Bytes already read (and hashed) by the caller.
    Bytes(Vec<u8>),
}

enum Loaded {
    Module(wasmtime::Module),
    Component(wasmtime::component::Component),
}

pub(super) struct Cache {
    dir: PathBuf,
    loaded: Mutex<HashMap<String, Arc<Compiled>>>,
    compiler: Compiler,
}

impl Cache {
    /// The cache under `root` for `engine`'s settings; binaries it misses are compiled by `compiler`.
    pub fn new(engine: &wasmtime::Engine, root: &Path, compiler: Compiler) -> Result<Self> {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let fingerprint = format!("{:016x}", hasher.finish());
        let dir = root.join(&fingerprint);
        std::fs::create_dir_all(&dir).map_err(|e| Error::internal(format!("creating {}", dir.display()), e))?;
        // Code compiled by another engine configuration can never be loaded again.
        for stale in std::fs::read_dir(root).into_iter().flatten().flatten() {
            if stale.file_name() != fingerprint.as_str() && stale.path().is_dir() {
                tracing::info!(dir = %stale.path().display(), "removing compiled code of another engine configuration");
                let _ = std::fs::remove_dir_all(stale.path());
            }
        }
        Ok(Self { dir, loaded: Mutex::new(HashMap::new()), compiler })
    }

    pub async fn get_or_compile(
        &self,
        engine: &wasmtime::Engine,
        linkers: &Linkers,
        digest: &str,
        kind: WasmKind,
        source: WasmSource,
    ) -> Result<(Arc<Compiled>, ModuleSource)> {
        if let Some(compiled) = self.loaded.lock().unwrap().get(digest) {
            return Ok((compiled.clone(), ModuleSource::Memory));
        }
        let hex = Digest::try_from(digest)?.hex().to_string();
        let cached = self.dir.join(format!("{hex}.cwasm"));
        let load = || {
            let (engine, owned_digest, cached) = (engine.clone(), digest.to_owned(), cached.clone());
            async move {
                tokio::task::spawn_blocking(move || load_cached(&engine, &owned_digest, kind, &cached))
                    .await
                    .map_err(|e| Error::internal(format!("loading the compiled code of {digest}"), e))
            }
        };
        let (loaded, from) = match load().await? {
            Some(loaded) => (loaded, ModuleSource::DiskCache),
            None => {
                self.compile(engine, digest, &hex, kind, source, &cached).await?;
                let loaded = load().await?.ok_or_else(|| {
                    Error::internal(
                        format!("loading the compiled code of {digest}"),
                        anyhow::anyhow!("{} is not loadable right after its compilation", cached.display()),
                    )
                })?;
                (loaded, ModuleSource::Compiled)
            }
        };

        let linked = match loaded {
            Loaded::Module(module) => link_module(linkers, digest, &module).map(Program::Module),
            Loaded::Component(component) => link_component(linkers, digest, &component).map(Program::Component),
        };
        let program = match linked {
            Ok(program) => program,
            Err(e) => {
                // Linking depends on the binary alone: no image can ever run
                // it, so its compiled code must not outlive the refusal.
                let _ = tokio::fs::remove_file(&cached).await;
                return Err(e);
            }
        };
        let compiled = Arc::new(Compiled { program, digest: digest.to_owned(), cwasm: cached });
        let compiled = self.loaded.lock().unwrap().entry(digest.to_owned()).or_insert(compiled).clone();
        Ok((compiled, from))
    }

    /// Compiles `source` into `cached` with the cache's compiler; bytes
    /// given in memory are written beside it first, for the worker to read.
    async fn compile(
        &self,
        engine: &wasmtime::Engine,
        digest: &str,
        hex: &str,
        kind: WasmKind,
        source: WasmSource,
        cached: &Path,
    ) -> Result<()> {
        let (wasm, temporary) = match source {
            WasmSource::File(path) => (path, false),
            WasmSource::Bytes(bytes) => {
                let path = self.dir.join(format!("{hex}.wasm.tmp{}", rand::random::<u32>()));
                tokio::fs::write(&path, &bytes)
                    .await
                    .map_err(|e| Error::internal(format!("writing {digest} to {} to compile it", path.display()), e))?;
                (path, true)
            }
        };
        let compiled = self.compiler.compile(engine, digest, kind, &wasm, cached).await;
        if temporary {
            let _ = tokio::fs::remove_file(&wasm).await;
        }
        compiled
    }

    /// Drops a binary from memory and disk; running guests keep their own reference.
    pub async fn evict(&self, digest: &str) {
        self.loaded.lock().unwrap().remove(digest);
        if let Ok(digest) = Digest::try_from(digest) {
            let _ = tokio::fs::remove_file(self.dir.join(format!("{}.cwasm", digest.hex()))).await;
        }
    }
}

fn link_module(linkers: &Linkers, digest: &str, module: &wasmtime::Module) -> Result<wasmtime::InstancePre<P1State>> {
    match module.get_export("_start") {
        Some(wasmtime::ExternType::Func(ty)) if ty.params().len() == 0 && ty.results().len() == 0 => {}
        _ => {
            return Err(Error::InvalidArgument(format!(
                "module {digest} has no `_start` function to run: a WASI command module exports `_start: () -> ()`"
            )));
        }
    }
    linkers.module.instantiate_pre(module).map_err(|e| {
        let missing = missing_module_imports(&linkers.module, module);
        if missing.is_empty() {
            return Error::InvalidArgument(format!(
                "module {digest} cannot be linked: {e:#} (wasmrun provides WASI preview 1, `wasi_snapshot_preview1`)"
            ));
        }
        Error::FailedPrecondition(format!(
            "module {digest} imports {}, which wasmrun does not provide (a module can import WASI preview 1 only: \
             `wasi_snapshot_preview1`)",
            missing.join(", ")
        ))
    })
}

/// Every import of `module` that `linker` lacks, named like `function `env::f``;
/// empty when linking fails for another reason (an import of the wrong type).
fn missing_module_imports(linker: &wasmtime::Linker<P1State>, module: &wasmtime::Module) -> Vec<String> {
    // wasmtime reports one unknown import at a time: stand in for each on a
    // copy of the linker, to find the next.
    let mut linker = linker.clone();
    let mut missing = Vec::new();
    for _ in 0..module.imports().len() {
        let Err(e) = linker.instantiate_pre(module) else { break };
        let Some(unknown) = e.downcast_ref::<wasmtime::UnknownImportError>() else { break };
        let ty = unknown.ty();
        let kind = match &ty {
            wasmtime::ExternType::Func(_) => "function",
            wasmtime::ExternType::Global(_) => "global",
            wasmtime::ExternType::Table(_) => "table",
            wasmtime::ExternType::Memory(_) => "memory",
            wasmtime::ExternType::Tag(_) => "tag",
        };
        missing.push(format!("{kind} `{}::{}`", unknown.module(), unknown.name()));
        // Only a function can be stood in for without a store.
        let wasmtime::ExternType::Func(ty) = ty else { break };
        let (module_name, name) = (unknown.module().to_owned(), unknown.name().to_owned());
        if linker.func_new(&module_name, &name, ty, |_, _, _| wasmtime::bail!("not provided")).is_err() {
            break;
        }
    }
    missing
}

fn link_component(
    linkers: &Linkers,
    digest: &str,
    component: &wasmtime::component::Component,
) -> Result<ComponentProgram> {
    let pre = linkers.component.instantiate_pre(component).map_err(|e| {
        let missing = missing_component_imports(&linkers.component, component);
        if missing.is_empty() {
            return Error::InvalidArgument(format!(
                "component {digest} cannot be linked: {e:#} (wasmrun provides the WASI 0.2 interfaces)"
            ));
        }
        Error::FailedPrecondition(format!(
            "component {digest} imports {}, which wasmrun does not provide (a component can import the WASI 0.2 \
             interfaces only: wasi:cli, wasi:clocks, wasi:filesystem, wasi:http, wasi:io, wasi:random, wasi:sockets)",
            missing.join(", ")
        ))
    })?;
    let command = wasmtime_wasi::p2::bindings::CommandPre::new(pre.clone());
    let proxy = wasmtime_wasi_http::p2::bindings::ProxyPre::new(pre);
    match (command, proxy) {
        (Err(command), Err(proxy)) => Err(Error::InvalidArgument(format!(
            "component {digest} exports neither `wasi:cli/run` ({command:#}) nor `wasi:http/incoming-handler` \
             ({proxy:#}): wasmrun runs WASI command components and serves `wasi:http/proxy` components"
        ))),
        (command, proxy) => Ok(ComponentProgram { command: command.ok(), proxy: proxy.ok() }),
    }
}

/// Every import of `component` that `linker` has nothing under, named like
/// `interface `example:missing/greeter@1.0.0``; empty when linking fails for
/// another reason (an import that wasmrun provides, of another type).
fn missing_component_imports(
    linker: &wasmtime::component::Linker<P2State>,
    component: &wasmtime::component::Component,
) -> Vec<String> {
    let engine = component.engine();
    let ty = component.component_type();
    let imports: Vec<(&str, wasmtime::component::types::ComponentItem)> =
        ty.imports(engine).map(|(name, import)| (name, import.ty)).collect();
    // wasmtime stops at the first import it cannot satisfy and names it (in
    // backquotes) in its outermost message: stand in for each on a copy of the
    // linker, to find the next.
    let mut linker = linker.clone();
    let mut missing = Vec::new();
    for _ in 0..imports.len() {
        let Err(e) = linker.instantiate_pre(component) else { break };
        let failed = e.to_string();
        let Some((name, item)) = imports.iter().find(|(name, _)| failed.contains(&format!("`{name}`"))) else {
            break;
        };
        // An import that wasmrun provides, but of another type, is not missing:
        // then wasmtime ends on a type mismatch, not on a missing implementation.
        if !e.root_cause().to_string().ends_with("implementation is missing") {
            break;
        }
        if stand_in(&mut linker.root(), engine, name, item).is_err() {
            break;
        }
        missing.push(format!("{} `{name}`", component_item_kind(item)));
    }
    missing
}

/// Defines `name` in `linker` as something of `item`'s type that does nothing.
fn stand_in(
    linker: &mut wasmtime::component::LinkerInstance<'_, P2State>,
    engine: &wasmtime::Engine,
    name: &str,
    item: &wasmtime::component::types::ComponentItem,
) -> wasmtime::Result<()> {
    use wasmtime::component::types::ComponentItem;
    match item {
        ComponentItem::ComponentFunc(_) => linker.func_new(name, |_, _, _, _| wasmtime::bail!("not provided")),
        ComponentItem::Resource(_) => {
            linker.resource(name, wasmtime::component::ResourceType::host::<()>(), |_, _| Ok(()))
        }
        ComponentItem::ComponentInstance(instance) => {
            let mut inner = linker.instance(name)?;
            for (export, item) in instance.exports(engine) {
                stand_in(&mut inner, engine, export, &item.ty)?;
            }
            Ok(())
        }
        ComponentItem::Type(_) => Ok(()),
        ComponentItem::CoreFunc(_) | ComponentItem::Module(_) | ComponentItem::Component(_) => {
            wasmtime::bail!("cannot stand in for a {}", component_item_kind(item))
        }
    }
}

fn component_item_kind(item: &wasmtime::component::types::ComponentItem) -> &'static str {
    use wasmtime::component::types::ComponentItem;
    match item {
        ComponentItem::ComponentFunc(_) => "function",
        ComponentItem::CoreFunc(_) => "core function",
        ComponentItem::Module(_) => "module",
        ComponentItem::Component(_) => "component",
        ComponentItem::ComponentInstance(_) => "interface",
        ComponentItem::Type(_) => "type",
        ComponentItem::Resource(_) => "resource",
    }
}

/// The code compiled earlier into `cached`, memory-mapped; None when there
/// is none, or it cannot be loaded (then it is removed, to be compiled again).
/// Blocks on the file: call it off the async workers.
fn load_cached(engine: &wasmtime::Engine, digest: &str, kind: WasmKind, cached: &Path) -> Option<Loaded> {
    if !cached.is_file() {
        return None;
    }
    // SAFETY: the file was written by `serialize` of an engine with this same
    // fingerprint (the worker's engine has the daemon's settings; wasmtime
    // checks the settings again as it loads), and published by an atomic
    // rename, so it is whole.
    let loaded = match kind {
        WasmKind::Module => unsafe { wasmtime::Module::deserialize_file(engine, cached) }.map(Loaded::Module),
        WasmKind::Component => {
            unsafe { wasmtime::component::Component::deserialize_file(engine, cached) }.map(Loaded::Component)
        }
    };
    match loaded {
        Ok(loaded) => Some(loaded),
        Err(e) => {
            tracing::warn!(%digest, path = %cached.display(), error = %format!("{e:#}"), "discarding unusable compiled code");
            let _ = std::fs::remove_file(cached);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn linkers() -> (wasmtime::Engine, Linkers) {
        let engine = wasmtime::Engine::default();
        let linkers = Linkers::new(&engine).unwrap();
        (engine, linkers)
    }

    fn module(engine: &wasmtime::Engine, wat: &str) -> wasmtime::Module {
        wasmtime::Module::new(engine, wat::parse_str(wat).unwrap()).unwrap()
    }

    fn component(engine: &wasmtime::Engine, wat: &str) -> wasmtime::component::Component {
        wasmtime::component::Component::new(engine, wat::parse_str(wat).unwrap()).unwrap()
    }

    #[test]
    fn every_missing_module_import_is_named() {
        let (engine, linkers) = linkers();
        let module = module(
            &engine,
            r#"(module
                (import "wasi_snapshot_preview1" "proc_exit" (func (param i32)))
                (import "env" "first" (func))
                (import "other" "second" (func (param i64) (result f32)))
                (import "env" "memory" (memory 1))
                (func (export "_start")))"#,
        );
        assert_eq!(
            missing_module_imports(&linkers.module, &module),
            ["function `env::first`", "function `other::second`", "memory `env::memory`"]
        );
        let Err(Error::FailedPrecondition(message)) = link_module(&linkers, "sha256:m", &module) else {
            panic!("a module with missing imports must be refused as FailedPrecondition");
        };
        assert_eq!(
            message,
            "module sha256:m imports function `env::first`, function `other::second`, memory `env::memory`, which \
             wasmrun does not provide (a module can import WASI preview 1 only: `wasi_snapshot_preview1`)"
        );
    }

    #[test]
    fn a_wasi_import_of_the_wrong_type_is_not_a_missing_one() {
        let (engine, linkers) = linkers();
        let module = module(
            &engine,
            r#"(module
                (import "wasi_snapshot_preview1" "proc_exit" (func (param i64)))
                (func (export "_start")))"#,
        );
        assert!(missing_module_imports(&linkers.module, &module).is_empty());
        let Err(Error::InvalidArgument(message)) = link_module(&linkers, "sha256:m", &module) else {
            panic!("a module importing WASI with the wrong type is invalid");
        };
        assert!(message.starts_with("module sha256:m cannot be linked: "), "{message}");
        assert!(message.contains("proc_exit"), "{message}");
    }

    #[test]
    fn every_missing_component_import_is_named() {
        let (engine, linkers) = linkers();
        let component = component(
            &engine,
            r#"(component
                (import "wasi:random/random@0.2.0" (instance (export "get-random-u64" (func (result u64)))))
                (import "example:missing/greeter@1.0.0" (instance
                    (export "greeting" (type (sub resource)))
                    (export "greet" (func (param "times" u32) (result u32)))))
                (import "example:missing/other@0.1.0" (instance (export "f" (func))))
                (import "top-level" (func)))"#,
        );
        assert_eq!(
            missing_component_imports(&linkers.component, &component),
            [
                "interface `example:missing/greeter@1.0.0`",
                "interface `example:missing/other@0.1.0`",
                "function `top-level`"
            ]
        );
        let Err(Error::FailedPrecondition(message)) = link_component(&linkers, "sha256:c", &component) else {
            panic!("a component with missing imports must be refused as FailedPrecondition");
        };
        assert!(
            message.starts_with(
                "component sha256:c imports interface `example:missing/greeter@1.0.0`, interface \
                 `example:missing/other@0.1.0`, function `top-level`, which wasmrun does not provide"
            ),
            "{message}"
        );
    }

    #[test]
    fn a_wasi_interface_of_the_wrong_type_is_not_a_missing_one() {
        let (engine, linkers) = linkers();
        // wasmrun provides `wasi:random/random@0.2.x`, whose function returns a u64.
        let component = component(
            &engine,
            r#"(component
                (import "wasi:random/random@0.2.0" (instance (export "get-random-u64" (func (result u32))))))"#,
        );
        assert!(missing_component_imports(&linkers.component, &component).is_empty());
        let Err(Error::InvalidArgument(message)) = link_component(&linkers, "sha256:c", &component) else {
            panic!("a component importing WASI with the wrong type is invalid");
        };
        assert!(message.starts_with("component sha256:c cannot be linked: "), "{message}");
        assert!(message.contains("wasi:random/random@0.2.0"), "{message}");
    }

    #[test]
    fn detects_modules_and_components() {
        assert_eq!(WasmKind::detect(b"\0asm\x01\0\0\0rest"), Some(WasmKind::Module));
        assert_eq!(WasmKind::detect(b"\0asm\x0d\0\x01\0"), Some(WasmKind::Component));
        assert_eq!(WasmKind::detect(b"\0asm"), None);
        assert_eq!(WasmKind::detect(b"not wasm at all"), None);
    }
}
