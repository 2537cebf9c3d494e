//! Exec in a wasm container, and port-forward to a wasm pod. ExecSync runs
//! the program `cmd` names as a new instance in the container's context (see
//! `pods::exec` for what it sees and which program runs), its output kept in
//! memory; Exec and PortForward check the request and answer a URL of the
//! streaming server (`crate::streaming`), which runs them when the client connects.

use std::time::Duration;

use tonic::Status;

use super::Parts;
use crate::api;
use crate::error::Error;
use crate::pods::SandboxState;
use crate::streaming::Pending;
use crate::wasm::{Captured, Stdin};

/// Most bytes of each stream an ExecSync instance's output keeps; the rest
/// is dropped. containerd's `maxStreamSize` (`internal/cri/server/container_execsync.go`).
pub const MAX_EXEC_SYNC_OUTPUT: usize = 16 << 20;

/// Most bytes of stdout and stderr together in an ExecSync answer: the
/// largest gRPC message (16 MiB, kubelet's and the server's limit) less
/// room for the rest of the message. containerd answers up to 16 MiB per
/// stream, which kubelet then refuses as too large; wasmrun cuts the streams
/// so that the answer always arrives (see [`fit`]).
pub const MAX_EXEC_SYNC_ANSWER: usize = crate::server::MAX_MESSAGE - 1024;

/// Runs `cmd` to its end and answers its stdout, stderr (each cut at
/// [`MAX_EXEC_SYNC_OUTPUT`]) and exit code. A `timeout` in seconds (0: none)
/// ends the instance at the deadline and answers DeadlineExceeded, as
/// containerd does ("timeout 1s exceeded"); kubelet reads that code as a
/// probe's timeout. A client that goes away ends the instance (the future
/// is dropped, and with it the exec).
pub(super) async fn exec_sync(parts: &Parts, request: api::ExecSyncRequest) -> Result<api::ExecSyncResponse, Status> {
    let (captured, output) = Captured::new(MAX_EXEC_SYNC_OUTPUT);
    let exec = parts.pods.exec(&request.container_id, request.cmd, Stdin::default(), output).await?;
    let exit = if request.timeout > 0 {
        let timeout = Duration::from_secs(request.timeout as u64);
        match tokio::time::timeout(timeout, exec.wait()).await {
            Ok(exit) => exit,
            Err(_) => {
                exec.kill();
                exec.wait().await;
                return Err(Error::DeadlineExceeded(format!(
                    "exec in container {}: timeout {}s exceeded: the instance was ended",
                    request.container_id, request.timeout
                ))
                .into());
            }
        }
    } else {
        exec.wait().await
    };
    let (stdout, stderr) = fit(captured.stdout(), captured.stderr(), MAX_EXEC_SYNC_ANSWER);
    if captured.truncated() || stdout.len() + stderr.len() == MAX_EXEC_SYNC_ANSWER {
        tracing::debug!(container = %request.container_id, "ExecSync output cut to {MAX_EXEC_SYNC_ANSWER} bytes");
    }
    Ok(api::ExecSyncResponse { stdout, stderr, exit_code: exit.code })
}

/// Checks an Exec request as kubelet's streaming server and containerd do
/// (InvalidArgument: `tty` with `stderr`, none of stdin, stdout and stderr,
/// an empty `cmd`; NotFound; FailedPrecondition: not running) and answers a
/// single-use URL for it.
pub(super) async fn exec(parts: &Parts, request: api::ExecRequest) -> Result<api::ExecResponse, Status> {
    let streams = (request.tty, request.stdin, request.stdout, request.stderr);
    let container = streamed_container(parts, "Exec", &request.container_id, streams)?;
    if request.cmd.first().is_none_or(String::is_empty) {
        return Err(Status::invalid_argument(format!(
            "Exec in container {}: cmd is empty; its first element names the program",
            container.id
        )));
    }
    let url = parts.streaming.url(Pending::Exec(api::ExecRequest { container_id: container.id.clone(), ..request }))?;
    Ok(api::ExecResponse { url })
}

/// Checks an Attach request as [`exec`] does (but for `cmd`) and answers a
/// single-use URL attaching to the running guest.
pub(super) async fn attach(parts: &Parts, request: api::AttachRequest) -> Result<api::AttachResponse, Status> {
    let streams = (request.tty, request.stdin, request.stdout, request.stderr);
    let container = streamed_container(parts, "Attach", &request.container_id, streams)?;
    let url =
        parts.streaming.url(Pending::Attach(api::AttachRequest { container_id: container.id.clone(), ..request }))?;
    Ok(api::AttachResponse { url })
}

/// The running container `id` a `call` (Exec, Attach) streams with, after
/// kubelet's checks of the streams asked for, `(tty, stdin, stdout, stderr)` (`validateExecRequest`,
/// `validateAttachRequest`): InvalidArgument for `tty` with `stderr` (no
/// multiplexing) or no stream at all; NotFound; FailedPrecondition when it
/// is not running (containerd's check).
fn streamed_container(
    parts: &Parts,
    call: &str,
    id: &str,
    (tty, stdin, stdout, stderr): (bool, bool, bool, bool),
) -> Result<std::sync::Arc<crate::pods::Container>, Status> {
    if tty && stderr {
        return Err(Status::invalid_argument(format!("{call}: tty and stderr cannot both be true")));
    }
    if !stdin && !stdout && !stderr {
        return Err(Status::invalid_argument(format!("{call}: one of stdin, stdout, or stderr must be set")));
    }
    let container = parts.pods.container(id)?;
    container.require_running(call)?;
    Ok(container)
}

/// Checks that the pod exists and is ready (FailedPrecondition otherwise,
/// as containerd) and answers a single-use URL forwarding `port` (each
/// 1–65535; none: the client's `ports` query) inside the pod's network namespace.
pub(super) async fn port_forward(
    parts: &Parts,
    request: api::PortForwardRequest,
) -> Result<api::PortForwardResponse, Status> {
    let sandbox = parts.pods.pod(&request.pod_sandbox_id)?;
    if let Some(bad) = request.port.iter().find(|port| !(1..=65535).contains(*port)) {
        return Err(Status::invalid_argument(format!("PortForward to pod {}: port {bad} is not 1–65535", sandbox.id)));
    }
    if sandbox.state() != SandboxState::Ready {
        return Err(Error::FailedPrecondition(format!(
            "pod sandbox {} is not ready: cannot forward a port to it",
            sandbox.id
        ))
        .into());
    }
    let request = api::PortForwardRequest { pod_sandbox_id: sandbox.id.clone(), ..request };
    let url = parts.streaming.url(Pending::PortForward(request))?;
    Ok(api::PortForwardResponse { url })
}

/// `stdout` and `stderr` cut to `max` bytes together: stderr keeps up to
/// half of `max`, stdout the rest, and either gets the other's unused room.
fn fit(mut stdout: Vec<u8>, mut stderr: Vec<u8>, max: usize) -> (Vec<u8>, Vec<u8>) {
    if stdout.len() + stderr.len() > max {
        stderr.truncate(stderr.len().min(max / 2).max(max.saturating_sub(stdout.len())));
        stdout.truncate(max - stderr.len());
    }
    (stdout, stderr)
}

#[cfg(test)]
mod tests {
    use super::fit;

    #[test]
    fn output_is_cut_to_fit_one_answer() {
        let lens = |(out, err): (Vec<u8>, Vec<u8>)| (out.len(), err.len());
        assert_eq!(lens(fit(vec![1; 3], vec![2; 4], 10)), (3, 4));
        assert_eq!(lens(fit(vec![1; 30], vec![], 10)), (10, 0));
        assert_eq!(lens(fit(vec![], vec![2; 30], 10)), (0, 10));
        assert_eq!(lens(fit(vec![1; 30], vec![2; 30], 10)), (5, 5));
        assert_eq!(lens(fit(vec![1; 2], vec![2; 30], 10)), (2, 8));
        assert_eq!(lens(fit(vec![1; 30], vec![2; 2], 10)), (8, 2));
        assert_eq!(fit(b"abc".to_vec(), b"defg".to_vec(), 5), (b"abc".to_vec(), b"de".to_vec()));
    }
}
