//! The checks containerd's CRI plugin makes of a request before it acts on
//! it, made the same way wherever the same field comes in (RunPodSandbox,
//! CreateContainer, UpdateContainerResources). Each returns
//! [`Error::InvalidArgument`] naming the request, the field and its value.

#![allow(deprecated)] // seccomp_profile_path and apparmor_profile: deprecated in the CRI, still sent.

use std::path::{Component, Path};

use crate::api;
use crate::error::{Error, Result};

/// The shortest and longest CFS period the kernel takes, in µs
/// (`cpu.cfs_period_us`: 1 ms to 1 s), and the smallest quota (1 ms).
const CFS_PERIOD_US: std::ops::RangeInclusive<i64> = 1_000..=1_000_000;
const MIN_CFS_QUOTA_US: i64 = 1_000;

/// Kernel filesystems a log directory may not be in.
const KERNEL_FILESYSTEMS: [&str; 3] = ["/proc", "/sys", "/dev"];

/// RunPodSandbox: the log directory and the pod's security context.
pub fn sandbox_config(config: &api::PodSandboxConfig) -> Result<()> {
    log_directory(&config.log_directory)?;
    // A pod's name servers are addresses (kubelet validates `dnsConfig` so);
    // its guests' lookups are sent to them.
    for server in config.dns_config.iter().flat_map(|dns| &dns.servers) {
        if server.parse::<std::net::IpAddr>().is_err() {
            return Err(Error::InvalidArgument(format!(
                "RunPodSandbox: dns_config.servers: {} is not an IP address",
                crate::error::quoted(server)
            )));
        }
    }
    if let Some(context) = config.linux.as_ref().and_then(|linux| linux.security_context.as_ref()) {
        user_and_group("RunPodSandbox", context.run_as_user.is_some(), false, context.run_as_group.is_some())?;
        profile("RunPodSandbox", "seccomp", &context.seccomp_profile_path, context.seccomp.as_ref())?;
    }
    Ok(())
}

/// CreateContainer: the container's resources and security context.
pub fn container_config(config: &api::ContainerConfig) -> Result<()> {
    let Some(linux) = &config.linux else { return Ok(()) };
    if let Some(resources) = &linux.resources {
        resources_of("CreateContainer", resources)?;
    }
    if let Some(context) = &linux.security_context {
        user_and_group(
            "CreateContainer",
            context.run_as_user.is_some(),
            !context.run_as_username.is_empty(),
            context.run_as_group.is_some(),
        )?;
        profile("CreateContainer", "seccomp", &context.seccomp_profile_path, context.seccomp.as_ref())?;
        profile("CreateContainer", "apparmor", &context.apparmor_profile, context.apparmor.as_ref())?;
    }
    Ok(())
}

/// The resources of CreateContainer and UpdateContainerResources, checked
/// alike: `memory_limit_in_bytes` is not negative (0 means no limit, as
/// kubelet sends it); a positive `cpu_quota` is at least 1 ms and comes with a
/// period of 1 ms to 1 s, or none (the kernel's 100 ms); `cpu_quota` is not
/// below -1 (-1 is the kernel's "no quota").
pub fn resources_of(request: &str, resources: &api::LinuxContainerResources) -> Result<()> {
    if resources.memory_limit_in_bytes < 0 {
        return Err(Error::InvalidArgument(format!(
            "{request}: resources.memory_limit_in_bytes {} is negative (0 means no limit)",
            resources.memory_limit_in_bytes
        )));
    }
    if resources.cpu_quota < -1 {
        return Err(Error::InvalidArgument(format!(
            "{request}: resources.cpu_quota {} is invalid (a positive number of µs, or 0 or -1 for none)",
            resources.cpu_quota
        )));
    }
    if resources.cpu_quota > 0 {
        if resources.cpu_quota < MIN_CFS_QUOTA_US {
            return Err(Error::InvalidArgument(format!(
                "{request}: resources.cpu_quota {} µs is below the kernel's minimum of {MIN_CFS_QUOTA_US} µs",
                resources.cpu_quota
            )));
        }
        if resources.cpu_period != 0 && !CFS_PERIOD_US.contains(&resources.cpu_period) {
            return Err(Error::InvalidArgument(format!(
                "{request}: resources.cpu_period {} µs is outside the kernel's {} to {} µs",
                resources.cpu_period,
                CFS_PERIOD_US.start(),
                CFS_PERIOD_US.end()
            )));
        }
    }
    Ok(())
}

/// A log directory is empty (no logs) or an absolute, clean path (no `.`,
/// `..`, empty or trailing components: Go's `filepath.Clean` leaves it as it
/// is) outside the kernel's filesystems.
fn log_directory(directory: &str) -> Result<()> {
    if directory.is_empty() {
        return Ok(());
    }
    let refuse = |why: &str| {
        Err(Error::InvalidArgument(format!("RunPodSandbox: log_directory {} {why}", crate::error::quoted(directory))))
    };
    let path = Path::new(directory);
    if !path.is_absolute() {
        return refuse("must be an absolute path");
    }
    let clean = path.components().all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
        && (directory == "/" || !directory.ends_with('/'))
        && !directory.contains("//")
        && !directory.contains("/./");
    if !clean {
        return refuse("must be a clean path (no `.`, `..`, `//` or trailing `/`)");
    }
    if KERNEL_FILESYSTEMS.iter().any(|fs| path.starts_with(fs)) {
        return refuse("is in a kernel filesystem");
    }
    Ok(())
}

/// containerd refuses a group without a user: "user group is specified
/// without user".
fn user_and_group(request: &str, has_user: bool, has_username: bool, has_group: bool) -> Result<()> {
    if has_group && !has_user && !has_username {
        return Err(Error::InvalidArgument(format!(
            "{request}: security_context.run_as_group is set without run_as_user or run_as_username \
             (a group needs a user, as containerd requires)"
        )));
    }
    Ok(())
}

/// A seccomp or AppArmor profile, as containerd reads it: the deprecated path
/// field is empty, `runtime/default`, `docker/default` (seccomp),
/// `unconfined`, or `localhost/<profile>`; the SecurityProfile message with
/// type Localhost names its profile in `localhost_ref`.
fn profile(request: &str, kind: &str, path: &str, profile: Option<&api::SecurityProfile>) -> Result<()> {
    let known =
        matches!(path, "" | "runtime/default" | "unconfined") || (kind == "seccomp" && path == "docker/default");
    if !known && path.strip_prefix("localhost/").is_none_or(str::is_empty) {
        return Err(Error::InvalidArgument(format!(
            "{request}: {kind} profile {} is invalid: it must be runtime/default, unconfined or localhost/<profile>",
            crate::error::quoted(path)
        )));
    }
    if let Some(profile) = profile {
        let localhost = api::security_profile::ProfileType::Localhost as i32;
        if profile.profile_type == localhost && profile.localhost_ref.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "{request}: the {kind} profile is of type Localhost and names no profile (localhost_ref is empty)"
            )));
        }
        if api::security_profile::ProfileType::try_from(profile.profile_type).is_err() {
            return Err(Error::InvalidArgument(format!(
                "{request}: the {kind} profile type {} is unknown",
                profile.profile_type
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(result: Result<()>) -> Option<String> {
        match result {
            Ok(()) => None,
            Err(Error::InvalidArgument(message)) => Some(message),
            Err(other) => panic!("not InvalidArgument: {other:?}"),
        }
    }

    #[test]
    fn log_directories_must_be_absolute_clean_and_outside_kernel_filesystems() {
        for good in ["", "/", "/var/log/pods/ns_name_uid", "/tmp/x.y/z"] {
            assert_eq!(code(log_directory(good)), None, "{good}");
        }
        for bad in [
            "var/log",
            "./x",
            "/var/../etc",
            "/var/./log",
            "/var//log",
            "/var/log/",
            "/proc/self",
            "/sys",
            "/dev/shm/x",
        ] {
            assert!(code(log_directory(bad)).is_some(), "{bad} was accepted");
        }
    }

    #[test]
    fn resources_are_checked_alike_for_create_and_update() {
        let ok = api::LinuxContainerResources { memory_limit_in_bytes: 0, cpu_quota: -1, ..Default::default() };
        assert_eq!(code(resources_of("X", &ok)), None);
        let quota = api::LinuxContainerResources { cpu_quota: 50_000, cpu_period: 100_000, ..Default::default() };
        assert_eq!(code(resources_of("X", &quota)), None);
        for bad in [
            api::LinuxContainerResources { memory_limit_in_bytes: -1, ..Default::default() },
            api::LinuxContainerResources { cpu_quota: -2, ..Default::default() },
            api::LinuxContainerResources { cpu_quota: 999, ..Default::default() },
            api::LinuxContainerResources { cpu_quota: 5_000, cpu_period: 999, ..Default::default() },
            api::LinuxContainerResources { cpu_quota: 5_000, cpu_period: 1_000_001, ..Default::default() },
        ] {
            assert!(code(resources_of("X", &bad)).is_some(), "{bad:?}");
        }
    }

    #[test]
    fn a_group_needs_a_user_and_profiles_are_read_as_containerd_reads_them() {
        assert!(code(user_and_group("X", false, false, true)).is_some());
        assert_eq!(code(user_and_group("X", true, false, true)), None);
        assert_eq!(code(user_and_group("X", false, true, true)), None);
        for good in ["", "runtime/default", "docker/default", "unconfined", "localhost/profile.json"] {
            assert_eq!(code(profile("X", "seccomp", good, None)), None, "{good}");
        }
        for bad in ["profile.json", "/abs/profile.json", "localhost/", "docker/other"] {
            assert!(code(profile("X", "seccomp", bad, None)).is_some(), "{bad}");
        }
        assert!(code(profile("X", "apparmor", "docker/default", None)).is_some());
        let empty_ref = api::SecurityProfile { profile_type: 2, localhost_ref: String::new() };
        assert!(code(profile("X", "seccomp", "", Some(&empty_ref))).is_some());
    }
}
