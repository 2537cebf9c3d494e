//! ExecSync of a wasm container: the program `cmd` names run as a new
//! instance in the container's context (see `pods::exec` for what it sees
//! and which program runs), its output kept in memory.

use std::time::Duration;

use tonic::Status;

use super::Parts;
use crate::api;
use crate::error::Error;
use crate::wasm::Captured;

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
    let exec = parts.pods.exec(&request.container_id, request.cmd, output).await?;
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
