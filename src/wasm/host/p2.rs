//! The host side of a WASI 0.2 component: its context, its resource table
//! and its linker (wasmtime-wasi's WASI 0.2 interfaces).
//!
//! `wasi:sockets` is wasmtime-wasi's, with two changes:
//! - a socket is created inside the guest's pod network namespace (see
//!   `network::netns`), so every bind, listen, connect and accept of the
//!   guest happens there. The two functions that create sockets
//!   (`tcp-create-socket.create-tcp-socket`,
//!   `udp-create-socket.create-udp-socket`) are linked again over
//!   wasmtime-wasi's, as wrappers that run its code inside the namespace;
//! - `ip-name-lookup` is linked again ([`NameLookup`]): names resolve with
//!   the pod's DNS config from inside its namespace (`network::dns`), or as
//!   the node resolves them (`getaddrinfo`, as wasmtime-wasi does) for a
//!   pod without one.
//!
//! The calls that open a descriptor (`open-at`, the two socket creations,
//! `accept`) are held to the instance's open-file limit (`open_files`):
//! each is linked again over wasmtime-wasi's, refusing past the limit and
//! otherwise running wasmtime-wasi's own code.
//!
//! The calls that create, remove or rename through a path, and those that
//! write to or resize a file or give a stream writing it, keep the bounds
//! of file mounts (`file_mount_guard`): linked again over wasmtime-wasi's,
//! they refuse or check what concerns a writable private directory of file
//! mounts and its copies, and run wasmtime-wasi's own code for the rest.

use std::net::IpAddr;
use std::sync::Arc;

use tokio::sync::oneshot;
use wasmtime::StoreContextMut;
use wasmtime::component::{HasData, Resource, ResourceTable, ResourceType};
use wasmtime_wasi::p2::bindings::sockets::network::{self, ErrorCode, IpAddress, IpAddressFamily};
use wasmtime_wasi::p2::bindings::sockets::{tcp_create_socket, udp_create_socket};
use wasmtime_wasi::p2::{SocketError, SocketResult, TcpSocket, UdpSocket};
use wasmtime_wasi::sockets::WasiSocketsCtxView;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use super::file_mount_guard::{CopyStream, P2Guard};
use super::open_files::OpenFiles;
use crate::network::{InNetNs, LookupError, NetNs, PodResolver, dns};

use super::file_mount_guard;
use super::http::PodHttp;
use crate::error::{Error, Result};
use crate::wasm::file_mounts::{Entry, Growth, WritableCopies};
use crate::wasm::layout::Preopen;
use crate::wasm::limits::MemoryLimiter;
use crate::wasm::output::Writer;
use crate::wasm::spec::GuestSpec;

/// What a component's store holds: its WASI context, the table of the
/// resources it holds (streams, descriptors), and its share of the
/// container's usage.
pub(in crate::wasm) struct P2State {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: MemoryLimiter,
    /// `wasi:http`'s context, and where outgoing requests leave from.
    http: WasiHttpCtx,
    http_hooks: PodHttp,
    /// The pod's network namespace its sockets are made in; none: the daemon's
    /// (a hostNetwork pod).
    netns: Option<Arc<NetNs>>,
    /// The pod's name resolution; none: the node's.
    resolver: Option<Arc<PodResolver>>,
    /// What it holds open, against its limit (see `open_files`).
    open_files: OpenFiles,
    /// Its writable file mounts, when it has any (see `file_mount_guard`).
    file_mounts: Option<P2Guard>,
}

impl P2State {
    /// Whether the instance holds as many descriptors as it may (see `open_files`).
    fn at_open_files_limit(&mut self) -> bool {
        self.open_files.at_limit(&mut self.table)
    }

    /// The instance's memory limiter: whether it hit the limit.
    pub(in crate::wasm) fn limiter(&self) -> &MemoryLimiter {
        &self.limiter
    }
}

impl WasiView for P2State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl WasiHttpView for P2State {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView { ctx: &mut self.http, table: &mut self.table, hooks: &mut self.http_hooks }
    }
}

/// wasmtime-wasi's WASI 0.2 interfaces (async), with sockets created in the
/// guest's namespace, and wasmtime-wasi-http's `wasi:http` (its outgoing
/// requests sent from that namespace too, see `host::http`).
pub(in crate::wasm) fn linker(engine: &wasmtime::Engine) -> wasmtime::Result<wasmtime::component::Linker<P2State>> {
    let mut linker = wasmtime::component::Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
    linker.allow_shadowing(true);
    tcp_create_socket::add_to_linker::<P2State, PodSockets>(&mut linker, PodSockets::view)?;
    udp_create_socket::add_to_linker::<P2State, PodSockets>(&mut linker, PodSockets::view)?;
    link_name_lookup(&mut linker)?;
    link_open_files_limit(&mut linker)?;
    link_file_mounts(&mut linker)?;
    linker.allow_shadowing(false);
    Ok(linker)
}

/// The interfaces of `open-at` and `accept`, as wasmtime-wasi names them
/// (imports of earlier 0.2 versions are served by them, by semver).
const FILESYSTEM_TYPES: &str = "wasi:filesystem/types@0.2.12";
const SOCKETS_TCP: &str = "wasi:sockets/tcp@0.2.12";

/// Defines `open-at` and `accept` over wasmtime-wasi's: past the open-file
/// limit they fail (`quota`, `new-socket-limit`: see `open_files`) before
/// anything is opened; else wasmtime-wasi's own code runs.
fn link_open_files_limit(linker: &mut wasmtime::component::Linker<P2State>) -> wasmtime::Result<()> {
    use wasmtime_wasi::p2::bindings::filesystem::types::{self as fs, HostDescriptor as _};
    use wasmtime_wasi::p2::bindings::sockets::tcp::HostTcpSocket as _;
    use wasmtime_wasi::{filesystem::WasiFilesystemView as _, sockets::WasiSocketsView as _};
    type OpenAt = (Resource<fs::Descriptor>, fs::PathFlags, String, fs::OpenFlags, fs::DescriptorFlags);
    linker.instance(FILESYSTEM_TYPES)?.func_wrap_async(
        "[method]descriptor.open-at",
        |mut store: StoreContextMut<'_, P2State>, (this, path_flags, path, open_flags, flags): OpenAt| {
            Box::new(async move {
                let state = store.data_mut();
                if state.at_open_files_limit() {
                    return Ok((Err(fs::ErrorCode::Quota),));
                }
                // In a private directory of file mounts: only a mounted name may be created.
                let entry = match (&state.file_mounts, state.table.get(&this)) {
                    (Some(guard), Ok(dir)) => guard.entry(dir, &path),
                    _ => None,
                };
                if entry.is_some_and(|(_, entry)| {
                    open_flags.contains(fs::OpenFlags::CREATE) && !matches!(entry, Entry::Copy(_))
                }) {
                    return Ok((Err(fs::ErrorCode::Access),));
                }
                let opened = state.filesystem().open_at(this, path_flags, path, open_flags, flags).await;
                if let Ok(descriptor) = opened.as_ref().map(|fd| state.table.get(fd)) {
                    let descriptor = descriptor?;
                    state.open_files.opened(descriptor);
                    if let (Some(guard), Some((dir, entry))) = (&mut state.file_mounts, entry) {
                        guard.opened(dir, entry, descriptor);
                    }
                }
                Ok((as_guest_result(opened, |error| error.downcast())?,))
            })
        },
    )?;
    linker.instance(SOCKETS_TCP)?.func_wrap(
        "[method]tcp-socket.accept",
        |mut store: StoreContextMut<'_, P2State>, (this,): (Resource<TcpSocket>,)| {
            let state = store.data_mut();
            if state.at_open_files_limit() {
                return Ok((Err(ErrorCode::NewSocketLimit),));
            }
            let accepted = state.sockets().accept(this);
            if let Ok((socket, ..)) = &accepted {
                state.open_files.made(socket.rep());
            }
            Ok((as_guest_result(accepted, |error| error.downcast())?,))
        },
    )?;
    Ok(())
}

/// Defines over wasmtime-wasi's the calls that could add an entry to a
/// writable private directory of file mounts, remove one or rename one
/// (`access` there), and those that write to or resize a file or give a
/// stream writing it (a copy's are checked against the cap first, ENOSPC
/// past it; its streams are [`CopyStream`]s). See `file_mount_guard`.
fn link_file_mounts(linker: &mut wasmtime::component::Linker<P2State>) -> wasmtime::Result<()> {
    use wasmtime_wasi::filesystem::WasiFilesystemView as _;
    use wasmtime_wasi::p2::DynOutputStream;
    use wasmtime_wasi::p2::bindings::filesystem::types::{self as fs, HostDescriptor as _};
    type Descriptor = Resource<fs::Descriptor>;
    let mut instance = linker.instance(FILESYSTEM_TYPES)?;
    // `refuse_in_private_dir!(name, (arguments: types), [directory arguments], method)`.
    macro_rules! refuse_in_private_dir {
        ($name:literal, ($($arg:ident: $ty:ty),*), [$($dir:ident),*], $method:ident) => {
            instance.func_wrap_async(
                $name,
                |mut store: StoreContextMut<'_, P2State>, ($($arg,)*): ($($ty,)*)| {
                    Box::new(async move {
                        let state = store.data_mut();
                        if state.in_private_dir(&[$(&$dir),*]) {
                            return Ok((Err(fs::ErrorCode::Access),));
                        }
                        let done = state.filesystem().$method($($arg),*).await;
                        Ok((as_guest_result(done, |error| error.downcast())?,))
                    })
                },
            )?;
        };
    }
    refuse_in_private_dir!("[method]descriptor.create-directory-at", (this: Descriptor, path: String), [this],
        create_directory_at);
    refuse_in_private_dir!("[method]descriptor.unlink-file-at", (this: Descriptor, path: String), [this],
        unlink_file_at);
    refuse_in_private_dir!("[method]descriptor.remove-directory-at", (this: Descriptor, path: String), [this],
        remove_directory_at);
    refuse_in_private_dir!("[method]descriptor.symlink-at", (this: Descriptor, old_path: String, new_path: String),
        [this], symlink_at);
    refuse_in_private_dir!("[method]descriptor.rename-at",
        (this: Descriptor, old_path: String, new_descriptor: Descriptor, new_path: String), [this, new_descriptor],
        rename_at);
    // A link out of a private directory would be a way to write a copy that the guard does not know.
    refuse_in_private_dir!("[method]descriptor.link-at",
        (this: Descriptor, old_path_flags: fs::PathFlags, old_path: String, new_descriptor: Descriptor,
            new_path: String), [this, new_descriptor], link_at);

    instance.func_wrap_async(
        "[method]descriptor.write",
        |mut store: StoreContextMut<'_, P2State>, (this, buffer, offset): (Descriptor, Vec<u8>, u64)| {
            Box::new(async move {
                let state = store.data_mut();
                let _lock = match state.copy_of(&this) {
                    Some((copies, copy, _)) if !buffer.is_empty() => {
                        let end = offset.saturating_add(buffer.len() as u64);
                        match copies.reserve(copy, Growth::To(end)).await {
                            Ok(lock) => Some(lock),
                            Err(error) => return Ok((Err(file_mount_guard::p2_error(&error)),)),
                        }
                    }
                    _ => None,
                };
                let written = state.filesystem().write(this, buffer, offset).await;
                Ok((as_guest_result(written, |error| error.downcast())?,))
            })
        },
    )?;
    instance.func_wrap_async(
        "[method]descriptor.set-size",
        |mut store: StoreContextMut<'_, P2State>, (this, size): (Descriptor, u64)| {
            Box::new(async move {
                let state = store.data_mut();
                let _lock = match state.copy_of(&this) {
                    Some((copies, copy, _)) => match copies.reserve(copy, Growth::To(size)).await {
                        Ok(lock) => Some(lock),
                        Err(error) => return Ok((Err(file_mount_guard::p2_error(&error)),)),
                    },
                    None => None,
                };
                let done = state.filesystem().set_size(this, size).await;
                Ok((as_guest_result(done, |error| error.downcast())?,))
            })
        },
    )?;
    // The streams writing a copy: where they write is known once, here.
    fn copy_stream(
        state: &mut P2State,
        this: &Descriptor,
        position: Option<u64>,
    ) -> Option<wasmtime::Result<Result<Resource<DynOutputStream>, fs::ErrorCode>>> {
        let (copies, copy, file) = state.copy_of(this)?;
        if file.perms.write_not_permitted() {
            return Some(Ok(Err(fs::ErrorCode::NotPermitted)));
        }
        let stream: DynOutputStream = Box::new(CopyStream::new(&file, copies, copy, position));
        Some(state.table.push(stream).map(Ok).map_err(wasmtime::Error::from))
    }
    instance.func_wrap(
        "[method]descriptor.write-via-stream",
        |mut store: StoreContextMut<'_, P2State>, (this, offset): (Descriptor, u64)| {
            let state = store.data_mut();
            if let Some(stream) = copy_stream(state, &this, Some(offset)) {
                return Ok((stream?,));
            }
            let stream = state.filesystem().write_via_stream(this, offset);
            Ok((as_guest_result(stream, |error| error.downcast())?,))
        },
    )?;
    instance.func_wrap(
        "[method]descriptor.append-via-stream",
        |mut store: StoreContextMut<'_, P2State>, (this,): (Descriptor,)| {
            let state = store.data_mut();
            if let Some(stream) = copy_stream(state, &this, None) {
                return Ok((stream?,));
            }
            let stream = state.filesystem().append_via_stream(this);
            Ok((as_guest_result(stream, |error| error.downcast())?,))
        },
    )?;
    Ok(())
}

impl P2State {
    /// Whether any of `descriptors` is a writable private directory of file mounts.
    fn in_private_dir(&self, descriptors: &[&Resource<wasmtime_wasi::filesystem::Descriptor>]) -> bool {
        let Some(guard) = &self.file_mounts else {
            return false;
        };
        descriptors.iter().any(|fd| self.table.get(fd).is_ok_and(|descriptor| guard.dir(descriptor).is_some()))
    }

    /// When `descriptor` is a copy of a file mount: the container's copies,
    /// which copy, and its host file.
    fn copy_of(
        &self,
        descriptor: &Resource<wasmtime_wasi::filesystem::Descriptor>,
    ) -> Option<(Arc<WritableCopies>, usize, wasmtime_wasi::filesystem::File)> {
        let guard = self.file_mounts.as_ref()?;
        let (copy, file) = guard.copy(self.table.get(descriptor).ok()?)?;
        Some((guard.copies().clone(), copy, file))
    }
}

/// A wasmtime-wasi result as a guest gets it: the value or its error code;
/// an error that is a trap (`downcast` fails) stays one.
fn as_guest_result<T, E, C>(
    result: Result<T, E>,
    downcast: impl FnOnce(E) -> wasmtime::Result<C>,
) -> wasmtime::Result<Result<T, C>> {
    match result {
        Ok(value) => Ok(Ok(value)),
        Err(error) => downcast(error).map(Err),
    }
}

/// The `wasi:sockets/ip-name-lookup` interface as wasmtime-wasi names it
/// (imports of earlier 0.2 versions are served by it, by semver).
const IP_NAME_LOOKUP: &str = "wasi:sockets/ip-name-lookup@0.2.12";

/// Defines `ip-name-lookup` over wasmtime-wasi's: `resolve-addresses` starts
/// a [`NameLookup`]; its stream gives the addresses one by one, and a
/// pollable for when they are there.
fn link_name_lookup(linker: &mut wasmtime::component::Linker<P2State>) -> wasmtime::Result<()> {
    let mut instance = linker.instance(IP_NAME_LOOKUP)?;
    instance.resource("resolve-address-stream", ResourceType::host::<NameLookup>(), |mut store, rep| {
        store.data_mut().table.delete(Resource::<NameLookup>::new_own(rep))?;
        Ok(())
    })?;
    instance.func_wrap(
        "resolve-addresses",
        |mut store: StoreContextMut<'_, P2State>, (network, name): (Resource<wasmtime_wasi::p2::Network>, String)| {
            let state = store.data_mut();
            // The network resource is the capability to look names up.
            state.table.get(&network)?;
            // A lookup may hold sockets (the pod resolver's queries) until it is dropped.
            if state.at_open_files_limit() {
                return Ok((Err(ErrorCode::NewSocketLimit),));
            }
            let lookup = state.table.push(NameLookup::start(state.resolver.clone(), name))?;
            state.open_files.made(lookup.rep());
            Ok((Ok::<_, ErrorCode>(lookup),))
        },
    )?;
    instance.func_wrap(
        "[method]resolve-address-stream.resolve-next-address",
        |mut store: StoreContextMut<'_, P2State>, (this,): (Resource<NameLookup>,)| {
            Ok((store.data_mut().table.get_mut(&this)?.next_address(),))
        },
    )?;
    instance.func_wrap(
        "[method]resolve-address-stream.subscribe",
        |mut store: StoreContextMut<'_, P2State>, (this,): (Resource<NameLookup>,)| {
            Ok((wasmtime_wasi::p2::subscribe(&mut store.data_mut().table, this)?,))
        },
    )?;
    Ok(())
}

/// One `resolve-addresses` call: the lookup runs as a task of its own (on the
/// guest executor), which the stream waits for without blocking the guest.
pub(in crate::wasm) struct NameLookup {
    answer: oneshot::Receiver<Result<Vec<IpAddr>, LookupError>>,
    addresses: Option<Result<std::vec::IntoIter<IpAddr>, ErrorCode>>,
    task: tokio::task::AbortHandle,
}

impl NameLookup {
    /// Starts looking `name` up with `resolver`, or as the node does without one.
    fn start(resolver: Option<Arc<PodResolver>>, name: String) -> Self {
        let (send, answer) = oneshot::channel();
        let task = tokio::spawn(async move {
            let _ = send.send(dns::lookup(resolver.as_deref(), &name).await);
        });
        Self { answer, addresses: None, task: task.abort_handle() }
    }

    /// The next address, none when all were given, `would-block` while the
    /// lookup runs, or why it failed.
    fn next_address(&mut self) -> Result<Option<IpAddress>, ErrorCode> {
        if self.addresses.is_none() {
            match self.answer.try_recv() {
                Ok(found) => self.settle(Some(found)),
                Err(oneshot::error::TryRecvError::Empty) => return Err(ErrorCode::WouldBlock),
                Err(oneshot::error::TryRecvError::Closed) => self.settle(None),
            }
        }
        match self.addresses.as_mut().expect("settled above") {
            Ok(addresses) => Ok(addresses.next().map(IpAddress::from)),
            Err(code) => Err(*code),
        }
    }

    /// Keeps the lookup's answer (none: its task ended without one).
    fn settle(&mut self, found: Option<Result<Vec<IpAddr>, LookupError>>) {
        self.addresses = Some(match found {
            Some(Ok(addresses)) => Ok(addresses.into_iter()),
            Some(Err(LookupError::InvalidName)) => Err(ErrorCode::InvalidArgument),
            Some(Err(LookupError::NoAddress)) => Err(ErrorCode::NameUnresolvable),
            Some(Err(LookupError::Temporary)) => Err(ErrorCode::TemporaryResolverFailure),
            None => Err(ErrorCode::PermanentResolverFailure),
        });
    }
}

impl Drop for NameLookup {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[wasmtime_wasi::async_trait]
impl wasmtime_wasi::p2::Pollable for NameLookup {
    async fn ready(&mut self) {
        if self.addresses.is_none() {
            let found = (&mut self.answer).await.ok();
            self.settle(found);
        }
    }
}

/// The socket-creating functions of `wasi:sockets`, run in a namespace.
struct PodSockets;

/// wasmtime-wasi's sockets view of a store, the namespace to make sockets
/// in, and the instance's open-file limit.
struct PodSocketsView<'a> {
    sockets: WasiSocketsCtxView<'a>,
    netns: Option<&'a Arc<NetNs>>,
    open_files: &'a mut OpenFiles,
}

impl PodSocketsView<'_> {
    /// `new-socket-limit` (WASI's EMFILE) when the instance holds as many descriptors as it may.
    fn check_open_files(&mut self) -> SocketResult<()> {
        if self.open_files.at_limit(self.sockets.table) {
            return Err(ErrorCode::NewSocketLimit.into());
        }
        Ok(())
    }

    /// Counts a socket just made, when it was.
    fn made<T>(&mut self, made: SocketResult<Resource<T>>) -> SocketResult<Resource<T>> {
        if let Ok(socket) = &made {
            self.open_files.made(socket.rep());
        }
        made
    }
}

impl HasData for PodSockets {
    type Data<'a> = PodSocketsView<'a>;
}

impl PodSockets {
    fn view(state: &mut P2State) -> PodSocketsView<'_> {
        PodSocketsView {
            sockets: WasiSocketsCtxView { ctx: state.wasi.sockets(), table: &mut state.table },
            netns: state.netns.as_ref(),
            open_files: &mut state.open_files,
        }
    }
}

/// A trap for a namespace the guest's thread could not enter: a fault of the
/// host (`setns` refused), never of the guest.
fn not_entered(error: std::io::Error) -> SocketError {
    SocketError::trap(wasmtime::format_err!("cannot enter the pod's network namespace to make a socket: {error}"))
}

/// The error conversions every `wasi:sockets` interface needs: wasmtime-wasi's.
impl network::Host for PodSocketsView<'_> {
    fn convert_error_code(&mut self, error: SocketError) -> wasmtime::Result<ErrorCode> {
        network::Host::convert_error_code(&mut self.sockets, error)
    }

    fn network_error_code(&mut self, error: Resource<wasmtime::Error>) -> wasmtime::Result<Option<ErrorCode>> {
        network::Host::network_error_code(&mut self.sockets, error)
    }
}

impl network::HostNetwork for PodSocketsView<'_> {
    fn drop(&mut self, this: Resource<wasmtime_wasi::p2::Network>) -> wasmtime::Result<()> {
        network::HostNetwork::drop(&mut self.sockets, this)
    }
}

impl tcp_create_socket::Host for PodSocketsView<'_> {
    fn create_tcp_socket(&mut self, family: IpAddressFamily) -> SocketResult<Resource<TcpSocket>> {
        self.check_open_files()?;
        let _inside = self.netns.map(|netns| netns.enter()).transpose().map_err(not_entered)?;
        let made = tcp_create_socket::Host::create_tcp_socket(&mut self.sockets, family);
        self.made(made)
    }
}

impl udp_create_socket::Host for PodSocketsView<'_> {
    async fn create_udp_socket(&mut self, family: IpAddressFamily) -> SocketResult<Resource<UdpSocket>> {
        self.check_open_files()?;
        let netns = self.netns.cloned();
        let made = InNetNs::new(netns, udp_create_socket::Host::create_udp_socket(&mut self.sockets, family))
            .await
            .map_err(not_entered)?;
        self.made(made)
    }
}

/// A store for one component instance started with `spec`, `preopens` and
/// the output writers, its memory charged to `usage` under `limiter`
/// (`MemoryLimiter::new` or `MemoryLimiter::per_instance`).
///
/// Errors: InvalidArgument naming a mount that cannot be opened. Opens
/// directories: call it off the async workers when there are any.
pub(in crate::wasm) fn store(
    engine: &wasmtime::Engine,
    spec: &GuestSpec,
    preopens: &[Preopen],
    (stdout, stderr): (Writer, Writer),
    limiter: MemoryLimiter,
) -> Result<wasmtime::Store<P2State>> {
    let mut wasi = super::wasi_builder(spec, preopens, stdout, stderr)?;
    // Every address of the pod's namespace (or the node's, for a hostNetwork
    // pod), as a process in a Linux container has them.
    wasi.inherit_network().allow_tcp(true).allow_udp(true).allow_ip_name_lookup(true);
    let open_files = OpenFiles::new(limiter.usage().max_open_files(), preopens.len());
    let mut wasi = wasi.build();
    let mut table = ResourceTable::new();
    let file_mounts = P2Guard::new(wasi.filesystem(), &mut table, preopens, limiter.usage().file_mount_max_bytes())
        .map_err(|e| Error::internal("giving a component its file mounts", anyhow::anyhow!("{e:#}")))?;
    let state = P2State {
        wasi,
        table,
        limiter,
        http: WasiHttpCtx::new(),
        http_hooks: PodHttp { netns: spec.netns.clone(), resolver: spec.resolver.clone() },
        netns: spec.netns.clone(),
        resolver: spec.resolver.clone(),
        open_files,
        file_mounts,
    };
    Ok(super::new_store(engine, state, |state| &mut state.limiter))
}
