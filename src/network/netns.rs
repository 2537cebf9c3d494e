//! Network namespaces: made and pinned for a pod, opened by their path
//! whoever made them, and entered by the thread that creates a guest's socket.
//!
//! A pod's namespace is pinned by a bind mount of `/proc/thread-self/ns/net`
//! on a file (`<state>/netns/<pod id>`), as `ip netns add` and containerd pin
//! theirs, so it outlives the thread that made it and the CNI plugins can
//! be handed its path (`CNI_NETNS`).
//!
//! A socket belongs to the namespace its creating thread is in at `socket(2)`
//! time, and keeps it for its life: binds, listens, connects and accepted
//! sockets all happen there. So a guest's sockets are made by entering its
//! pod's namespace around the creation only ([`NetNs::enter`], [`InNetNs`]),
//! on whichever thread runs the guest, and returning to the daemon's own
//! namespace at once.

use std::fs::File;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

/// An open network namespace: a pod's, or one another runtime made.
#[derive(Debug)]
pub struct NetNs {
    file: File,
}

impl NetNs {
    /// Opens the namespace pinned at `path` (a bind mount of a namespace
    /// file, or `/proc/<pid>/ns/net`). The namespace lives at least as long
    /// as this value. Errors: whatever opening the file answers (`NotFound`
    /// once it is unpinned).
    pub fn open(path: &Path) -> io::Result<Self> {
        Ok(Self { file: File::open(path)? })
    }

    /// Moves the calling thread into this namespace until the returned guard
    /// is dropped, which moves it back to the daemon's own namespace. Hold the
    /// guard only across synchronous code: a task that awaits with it held
    /// would leave its worker thread in the pod's namespace for other tasks.
    ///
    /// Errors: `setns(2)`'s (`EPERM` without CAP_SYS_ADMIN).
    pub fn enter(&self) -> io::Result<Entered> {
        let home = daemon_namespace()?;
        crate::sys::enter_network(&self.file)?;
        Ok(Entered { home })
    }
}

/// A thread inside a pod's namespace; dropping it moves the thread back.
#[must_use = "the thread goes back to the daemon's namespace when this is dropped"]
pub struct Entered {
    home: &'static File,
}

impl Drop for Entered {
    fn drop(&mut self) {
        if let Err(error) = crate::sys::enter_network(self.home) {
            // Cannot happen for a namespace file held open; if it ever did,
            // this thread would go on making every later guest's sockets in
            // another pod's namespace. Nothing is safe to run after that.
            eprintln!("wasmrun: cannot return a thread to the daemon's network namespace: {error}; aborting");
            std::process::abort();
        }
    }
}

/// The daemon's own network namespace: that of its main thread, which never
/// leaves it (`/proc/self/ns/net` names the main thread's), opened once.
fn daemon_namespace() -> io::Result<&'static File> {
    static HOME: OnceLock<File> = OnceLock::new();
    if let Some(home) = HOME.get() {
        return Ok(home);
    }
    let file = File::open("/proc/self/ns/net")?;
    Ok(HOME.get_or_init(|| file))
}

pin_project_lite::pin_project! {
    /// A future polled inside a namespace: each poll runs on a thread moved
    /// into `netns` for that poll only (nothing else runs on the thread
    /// meanwhile). With no namespace, polled as it is, in the daemon's.
    pub struct InNetNs<F> {
        netns: Option<Arc<NetNs>>,
        #[pin]
        inner: F,
    }
}

impl<F> InNetNs<F> {
    pub fn new(netns: Option<Arc<NetNs>>, inner: F) -> Self {
        Self { netns, inner }
    }
}

impl<F: Future> Future for InNetNs<F> {
    /// The inner future's output, or the error of entering the namespace.
    type Output = io::Result<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let _inside = match this.netns.as_deref().map(NetNs::enter).transpose() {
            Ok(inside) => inside,
            Err(error) => return Poll::Ready(Err(error)),
        };
        this.inner.poll(cx).map(Ok)
    }
}

/// Makes a new network namespace with its loopback interface up and pins it
/// at `path` (an empty file is created there), on a thread of its own that
/// ends once it is pinned, so no thread of the daemon changes namespace.
///
/// Errors: `AlreadyExists` when `path` exists; `EPERM` without
/// CAP_SYS_ADMIN; the kernel's limit on namespaces. Nothing is left at
/// `path` after an error.
pub async fn create(path: PathBuf) -> io::Result<()> {
    let (done, result) = tokio::sync::oneshot::channel();
    std::thread::Builder::new().name("netns-create".into()).spawn(move || {
        let _ = done.send(create_here(&path));
    })?;
    result.await.map_err(|_| io::Error::other("the thread making a network namespace ended early"))?
}

fn create_here(path: &Path) -> io::Result<()> {
    std::fs::OpenOptions::new().write(true).create_new(true).open(path)?;
    let made = (|| {
        crate::sys::unshare_network()?;
        crate::sys::set_loopback_up()?;
        crate::sys::bind_mount(Path::new("/proc/thread-self/ns/net"), path)
    })();
    if made.is_err() {
        let _ = std::fs::remove_file(path);
    }
    made
}

/// Namespaces made ahead of the pods that will take them: making one (a
/// thread unsharing, loopback up, a bind mount) costs about 1.3 ms, most of
/// it in the kernel, and namespaces made together wait for each other
/// (`cargo bench -- net-start`). A RunPodSandbox that finds one ready only
/// pins it again at the pod's path (a bind mount); its pool pin is removed
/// and the pool refilled in the background.
///
/// Pooled namespaces are pinned under their own directory, which is
/// emptied when the pool is made: what an earlier daemon left there was
/// never given to a pod.
#[derive(Debug)]
pub struct Pool {
    dir: PathBuf,
    size: usize,
    ready: std::sync::Mutex<Vec<PathBuf>>,
    refilling: std::sync::atomic::AtomicBool,
    next: std::sync::atomic::AtomicU64,
}

impl Pool {
    /// A pool of up to `size` namespaces pinned in `dir` (0: none kept, each
    /// pod's made when it is run), emptied of an earlier daemon's. Blocking.
    /// Call [`Pool::refill`] to fill it.
    ///
    /// Errors: `dir` cannot be made or emptied.
    pub fn new(dir: PathBuf, size: usize) -> io::Result<Self> {
        std::fs::create_dir_all(&dir)?;
        for entry in std::fs::read_dir(&dir)? {
            remove(&entry?.path())?;
        }
        Ok(Self {
            dir,
            size,
            ready: std::sync::Mutex::new(Vec::new()),
            refilling: std::sync::atomic::AtomicBool::new(false),
            next: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// A new namespace pinned at `path`: a pooled one pinned there when one is
    /// ready (its pool pin removed, and the pool refilled, in the
    /// background), else one made now.
    ///
    /// Errors: as [`create`]; a pooled namespace that cannot be moved is
    /// removed, and one is made instead.
    pub async fn take(self: &Arc<Self>, path: PathBuf) -> io::Result<()> {
        let pooled = self.ready.lock().unwrap().pop();
        self.refill();
        if let Some(pooled) = pooled {
            let moved = crate::blocking::in_place(|| pin_again(&pooled, &path));
            match moved {
                Ok(()) => {
                    // An unmount may wait for the kernel's RCU grace period:
                    // off the pod's path (BENCHMARKS.md, `net-start`).
                    tokio::task::spawn_blocking(move || {
                        if let Err(error) = remove(&pooled) {
                            tracing::warn!(%error, pooled = %pooled.display(), "cannot unpin a pooled network namespace");
                        }
                    });
                    return Ok(());
                }
                Err(error) => {
                    tracing::warn!(%error, pooled = %pooled.display(), "cannot move a pooled network namespace; making one");
                    let _ = crate::blocking::in_place(|| remove(&pooled));
                }
            }
        }
        create(path).await
    }

    /// Fills the pool up to its size, one namespace at a time, in a task of
    /// its own (at most one such task runs); returns at once.
    pub fn refill(self: &Arc<Self>) {
        use std::sync::atomic::Ordering;
        if self.size == 0 || self.refilling.swap(true, Ordering::AcqRel) {
            return;
        }
        let pool = self.clone();
        tokio::spawn(async move {
            loop {
                while pool.ready.lock().unwrap().len() < pool.size {
                    let path = pool.dir.join(pool.next.fetch_add(1, Ordering::Relaxed).to_string());
                    if let Err(error) = create(path.clone()).await {
                        tracing::warn!(%error, "cannot make a network namespace ahead of a pod");
                        pool.refilling.store(false, Ordering::Release);
                        return;
                    }
                    pool.ready.lock().unwrap().push(path);
                }
                pool.refilling.store(false, Ordering::Release);
                // A take between the last check and the store above found the
                // flag set and left the refill to this task: check again.
                let short = pool.ready.lock().unwrap().len() < pool.size;
                if !short || pool.refilling.swap(true, Ordering::AcqRel) {
                    return;
                }
            }
        });
    }

    /// Unpins and removes every namespace ready now (those a refill makes
    /// later are kept); failures are logged. Blocking.
    pub fn empty(&self) {
        for path in std::mem::take(&mut *self.ready.lock().unwrap()) {
            if let Err(error) = remove(&path) {
                tracing::warn!(%error, path = %path.display(), "cannot remove a pooled network namespace");
            }
        }
    }

    /// How many namespaces are ready now.
    #[cfg(test)]
    fn ready(&self) -> usize {
        self.ready.lock().unwrap().len()
    }
}

/// Pins the namespace pinned at `from` at `to` too (a new file). Nothing is
/// left at `to` on an error.
fn pin_again(from: &Path, to: &Path) -> io::Result<()> {
    std::fs::OpenOptions::new().write(true).create_new(true).open(to)?;
    if let Err(error) = crate::sys::bind_mount(from, to) {
        let _ = std::fs::remove_file(to);
        return Err(error);
    }
    Ok(())
}

/// Unpins the namespace at `path` and removes the file; the namespace ends
/// once no process, socket or open file holds it. A path that is not pinned,
/// or is gone, is fine. Blocking: call it off the async workers.
///
/// Errors: whatever unmounting answers other than "not a mount point", or
/// removing the file other than "not found".
pub fn remove(path: &Path) -> io::Result<()> {
    match crate::sys::unmount(path) {
        Err(e) if !matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOENT)) => return Err(e),
        _ => {}
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Needs root (CAP_SYS_ADMIN), as the daemon does; the suite runs as root.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_pinned_namespace_is_entered_and_left_around_a_socket() {
        let dir = std::env::temp_dir().join(format!("wasmrun-netns-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("pod");
        create(path.clone()).await.expect("making a namespace (needs root)");
        assert_eq!(create(path.clone()).await.unwrap_err().kind(), io::ErrorKind::AlreadyExists);
        let netns = Arc::new(NetNs::open(&path).unwrap());
        // A namespace is known by its inode.
        use std::os::unix::fs::MetadataExt;
        let current = || std::fs::metadata("/proc/thread-self/ns/net").unwrap().ino();
        let (own, pod) = (current(), netns.file.metadata().unwrap().ino());
        assert_ne!(own, pod);
        // A listener on the same port in the pod and here: two namespaces.
        let here = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = here.local_addr().unwrap().port();
        let inside = InNetNs::new(Some(netns.clone()), async {
            assert_eq!(current(), pod);
            std::net::TcpListener::bind(("127.0.0.1", port))
        })
        .await
        .unwrap()
        .expect("loopback is up in the pod's namespace and the port is free there");
        assert_eq!(current(), own, "back home after the poll");
        drop((inside, here, netns));
        remove(&path).unwrap();
        remove(&path).unwrap();
        assert!(!path.exists());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_pooled_namespace_is_moved_to_the_pod_and_the_pool_refilled() {
        use std::os::unix::fs::MetadataExt;
        let dir = std::env::temp_dir().join(format!("wasmrun-netns-pool-{}", rand::random::<u64>()));
        let pool_dir = dir.join("pool");
        std::fs::create_dir_all(&pool_dir).unwrap();
        // What an earlier daemon left is removed.
        create(pool_dir.join("left")).await.unwrap();
        let pool = Arc::new(Pool::new(pool_dir.clone(), 2).unwrap());
        assert_eq!(std::fs::read_dir(&pool_dir).unwrap().count(), 0);
        pool.refill();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while pool.ready() < 2 {
            assert!(std::time::Instant::now() < deadline, "the pool was not filled");
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        let pooled_inode = std::fs::metadata(pool.ready.lock().unwrap().last().unwrap()).unwrap().ino();
        let pod = dir.join("pod");
        pool.take(pod.clone()).await.unwrap();
        // The pod got the pooled namespace itself, and it works: loopback is up.
        assert_eq!(std::fs::metadata(&pod).unwrap().ino(), pooled_inode);
        let netns = Arc::new(NetNs::open(&pod).unwrap());
        InNetNs::new(Some(netns), async { std::net::TcpListener::bind("127.0.0.1:0") }).await.unwrap().unwrap();
        // Refilled, and the taken one's pool pin removed.
        while pool.ready() < 2 || std::fs::read_dir(&pool_dir).unwrap().count() != 2 {
            assert!(std::time::Instant::now() < deadline, "the pool was not refilled");
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        // An empty pool makes one at once.
        let empty = Arc::new(Pool::new(dir.join("none"), 0).unwrap());
        empty.take(dir.join("pod2")).await.unwrap();
        assert!(NetNs::open(&dir.join("pod2")).is_ok());
        for path in [pod, dir.join("pod2")] {
            remove(&path).unwrap();
        }
        drop(Pool::new(pool_dir, 0).unwrap());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
