//! The few calls into the kernel that need `unsafe`: raising the open-files
//! limit, syncing a filesystem, mounting a container's root filesystem and
//! unmounting it, making, pinning and entering network namespaces. Everything
//! else goes through std, cap-std or tokio.
//!
//! The filesystem calls block: call them off the async workers.

use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, format!("{} contains a NUL byte", path.display())))
}

/// Raises the soft limit on open files (`RLIMIT_NOFILE`) to the hard limit,
/// as containerd does at start; returns the new soft limit.
///
/// Errors: whatever `getrlimit(2)` or `setrlimit(2)` answer (`EPERM` cannot
/// happen: raising a soft limit up to the hard one needs no privilege).
pub fn raise_open_files_limit() -> io::Result<u64> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into `limit`, which we own and which outlives the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    limit.rlim_cur = limit.rlim_max;
    // SAFETY: setrlimit only reads `limit`, which outlives the call.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(limit.rlim_cur)
}

/// Flushes every dirty page and inode of the filesystem holding `dir` to disk
/// (`syncfs(2)`). The directory is opened for reading, since `syncfs` refuses
/// an `O_PATH` descriptor (EBADF).
pub fn syncfs(dir: &Path) -> io::Result<()> {
    let file = File::open(dir)?;
    // SAFETY: the descriptor belongs to `file`, which stays open for the call.
    if unsafe { libc::syncfs(file.as_raw_fd()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Mounts an overlay at `target` (an existing, empty directory): `lower` read
/// only, every change going to `upper`, with `work` as overlayfs's scratch
/// directory on the same filesystem as `upper` (`mount -t overlay overlay
/// -o lowerdir=…,upperdir=…,workdir=… target`, as containerd's overlay
/// snapshotter does). No setuid bits or device files work through it.
///
/// Errors: `EPERM` when the process may not mount (it lacks CAP_SYS_ADMIN);
/// `InvalidInput` for a path holding `,`, `:` or `\`, which the option string
/// cannot carry; whatever else mount(2) answers (`EINVAL` when the upper
/// directory's filesystem cannot be an overlay's upper layer).
pub fn mount_overlay(lower: &Path, upper: &Path, work: &Path, target: &Path) -> io::Result<()> {
    for path in [lower, upper, work] {
        if path.as_os_str().as_bytes().iter().any(|b| matches!(b, b',' | b':' | b'\\')) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} holds `,`, `:` or `\\`, which an overlay mount option cannot carry", path.display()),
            ));
        }
    }
    let mut options = b"lowerdir=".to_vec();
    options.extend_from_slice(lower.as_os_str().as_bytes());
    options.extend_from_slice(b",upperdir=");
    options.extend_from_slice(upper.as_os_str().as_bytes());
    options.extend_from_slice(b",workdir=");
    options.extend_from_slice(work.as_os_str().as_bytes());
    let options = CString::new(options)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "an overlay path contains a NUL byte"))?;
    let target = c_path(target)?;
    // SAFETY: every pointer is a NUL-terminated string that outlives the call.
    let result = unsafe {
        libc::mount(
            c"overlay".as_ptr(),
            target.as_ptr(),
            c"overlay".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV,
            options.as_ptr().cast(),
        )
    };
    if result != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Detaches the mount at `target` (`umount2(target, MNT_DETACH)`): it is gone
/// from the tree at once, and freed when nothing uses it any more.
/// Errors: `EINVAL` when `target` is not a mount point, `EPERM` without
/// CAP_SYS_ADMIN.
pub fn unmount(target: &Path) -> io::Result<()> {
    let target = c_path(target)?;
    // SAFETY: `target` is a NUL-terminated string that outlives the call.
    if unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The mount points at or below `dir`, deepest first (so they can be
/// unmounted in that order), from `/proc/self/mountinfo`.
pub fn mounts_under(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mountinfo = std::fs::read("/proc/self/mountinfo")?;
    let mut found =
        parse_mount_points(&mountinfo).into_iter().filter(|point| point.starts_with(dir)).collect::<Vec<_>>();
    found.sort_by_key(|point| std::cmp::Reverse(point.components().count()));
    found.dedup();
    Ok(found)
}

/// The mount point (fifth field) of each line of a mountinfo file, with the
/// kernel's octal escapes (`\040` for a space, `\011`, `\012`, `\134`) undone.
fn parse_mount_points(mountinfo: &[u8]) -> Vec<PathBuf> {
    mountinfo
        .split(|&b| b == b'\n')
        .filter_map(|line| line.split(|&b| b == b' ').nth(4))
        .map(|field| PathBuf::from(OsStr::from_bytes(&unescape(field))))
        .collect()
}

fn unescape(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        let octal = field.get(i + 1..i + 4).filter(|digits| field[i] == b'\\' && digits.iter().all(u8::is_ascii_digit));
        match octal.and_then(|digits| u8::from_str_radix(std::str::from_utf8(digits).ok()?, 8).ok()) {
            Some(byte) => {
                out.push(byte);
                i += 4;
            }
            None => {
                out.push(field[i]);
                i += 1;
            }
        }
    }
    out
}

// Network namespaces (`network::netns`). Each call changes or reads the
// calling thread only: on Linux a thread has a network namespace of its own,
// and the sockets it creates belong to the namespace it is in then.

/// Moves the calling thread into a new network namespace, which holds only a
/// loopback interface, down (`unshare(CLONE_NEWNET)`).
///
/// Errors: `EPERM` without CAP_SYS_ADMIN; `ENOMEM`/`ENOSPC` past the
/// kernel's limit on namespaces (`user.max_net_namespaces`).
pub fn unshare_network() -> io::Result<()> {
    // SAFETY: unshare takes no pointers.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Moves the calling thread into the network namespace `namespace` refers to
/// (a file of `/proc/<pid>/ns/net` or a bind mount of one), with
/// `setns(fd, CLONE_NEWNET)`.
///
/// Errors: `EINVAL` when the file is not a network namespace; `EPERM`
/// without CAP_SYS_ADMIN.
pub fn enter_network(namespace: &File) -> io::Result<()> {
    // SAFETY: the descriptor belongs to `namespace`, which stays open for the call.
    if unsafe { libc::setns(namespace.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Bind-mounts `source` on `target`, an existing file or directory
/// (`mount --bind source target`). A namespace file of `/proc` bound this
/// way keeps the namespace alive after its last process is gone, as
/// `ip netns add` and containerd pin theirs.
///
/// Errors: `EPERM` without CAP_SYS_ADMIN; `ENOENT` when either path is missing.
pub fn bind_mount(source: &Path, target: &Path) -> io::Result<()> {
    let (source, target) = (c_path(source)?, c_path(target)?);
    // SAFETY: both paths are NUL-terminated strings that outlive the call;
    // a bind mount reads neither the type nor the data argument.
    let result =
        unsafe { libc::mount(source.as_ptr(), target.as_ptr(), std::ptr::null(), libc::MS_BIND, std::ptr::null()) };
    if result != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sets the loopback interface `lo` of the calling thread's network namespace
/// up (`SIOCGIFFLAGS`, then `SIOCSIFFLAGS` with `IFF_UP`), as `ip link set lo
/// up` does; the kernel gives it 127.0.0.1/8 and ::1 then.
///
/// Errors: whatever `socket(2)` or `ioctl(2)` answer (`EPERM` without CAP_NET_ADMIN).
pub fn set_loopback_up() -> io::Result<()> {
    // SAFETY: socket takes no pointers; the descriptor is owned by `socket` below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new descriptor that nothing else owns.
    let socket = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    // SAFETY: ifreq is plain old data, for which all zeroes is a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (slot, byte) in request.ifr_name.iter_mut().zip(b"lo\0") {
        *slot = *byte as libc::c_char;
    }
    // SAFETY: both ioctls read and write one ifreq, which we own and which
    // outlives the calls; the descriptor stays open for them.
    unsafe {
        if libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFFLAGS, &mut request) != 0 {
            return Err(io::Error::last_os_error());
        }
        request.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(socket.as_raw_fd(), libc::SIOCSIFFLAGS, &request) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

// The calling thread's scheduling and CPU clock (the guest executor's threads,
// `wasm::limits`). Neither blocks: both are fine on an async worker.

/// Sets the niceness of the calling thread to `nice` (-20 … 19; higher runs
/// less), with `setpriority(PRIO_PROCESS, gettid(), nice)`: on Linux,
/// niceness is per thread, so only the calling thread changes.
///
/// Errors: `EACCES` when lowering the niceness without CAP_SYS_NICE.
pub fn set_thread_nice(nice: i32) -> io::Result<()> {
    // SAFETY: gettid and setpriority take no pointers and touch no memory of ours.
    let result = unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, nice) };
    if result != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The CPU time the calling thread has used so far, user and system, in
/// nanoseconds (`clock_gettime(CLOCK_THREAD_CPUTIME_ID)`). Never fails on
/// Linux; 0 if it ever did.
pub fn thread_cpu_nanos() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec, into `ts`, which we own and
    // which outlives the call.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } != 0 {
        return 0;
    }
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_mount_points_from_mountinfo() {
        let mountinfo = b"22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/vda rw\n\
            98 22 0:50 / /run/wasmrun/containers/a\\040b/rootfs rw - overlay overlay rw,lowerdir=/x\n\
            99 22 0:51 / /run/wasmrun/containers/c/rootfs rw - overlay overlay rw\n";
        assert_eq!(
            parse_mount_points(mountinfo),
            [
                PathBuf::from("/"),
                PathBuf::from("/run/wasmrun/containers/a b/rootfs"),
                PathBuf::from("/run/wasmrun/containers/c/rootfs")
            ]
        );
    }

    #[test]
    fn raises_the_open_files_limit_to_the_hard_limit() {
        let raised = raise_open_files_limit().expect("raising RLIMIT_NOFILE");
        let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: as in raise_open_files_limit.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) }, 0);
        assert_eq!((limit.rlim_cur, limit.rlim_max), (raised, raised));
    }

    #[test]
    fn syncs_a_directory() {
        syncfs(&std::env::temp_dir()).expect("syncfs of the temporary directory");
    }

    #[test]
    fn refuses_overlay_paths_the_options_cannot_carry() {
        let dir = std::env::temp_dir();
        let error = mount_overlay(Path::new("/a:b"), &dir, &dir, &dir).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidInput, "{error}");
    }
}
