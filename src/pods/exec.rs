//! Exec in a wasm container (CRI `ExecSync`, `Exec`): a program run as a new
//! instance in the context of a running container.
//!
//! The instance sees what the container's guest sees: its environment,
//! working directory, root filesystem and mounts (preopens of the same host
//! directories, so it reads and writes the running guest's files), and the
//! pod's network namespace and DNS. Its memory and CPU are charged to the
//! container's [`Usage`](crate::wasm::Usage), so they count in its stats and
//! are held to its memory limit and CPU quota. It is ended with the container
//! (`Container::end`), or when its [`Exec`] is dropped.
//!
//! `cmd[0]` names the program (see [`Program`]); a name that is no program
//! ends at once with a shell's exit codes, 127 or 126, and the reason on stderr.

use std::path::Path;
use std::sync::Arc;

use super::{Container, Pods};
use crate::error::{Error, Result};
use crate::wasm::{Compiled, Exit, ExitReason, ExitWaiter, Output, Stdin};

/// Exit code of an exec whose `cmd[0]` names no program, as a shell reports
/// a command not found.
pub const EXIT_NOT_FOUND: i32 = 127;
/// Exit code of an exec whose `cmd[0]` names a file that cannot run (not
/// WebAssembly, or a component that is no command), as a shell reports a file
/// it cannot execute.
pub const EXIT_CANNOT_EXECUTE: i32 = 126;

/// What `cmd[0]` of an exec names.
enum Program {
    /// A program to run: the container's own, when `cmd[0]` is its argv[0],
    /// the file name of its argv[0] or of its image's module with or without
    /// `.wasm`, or the container's name; else, in a compat image, the WebAssembly file at
    /// `cmd[0]` (absolute, or relative to the working directory, as the
    /// container's own argv[0] is found).
    Run(Arc<Compiled>),
    /// Exit code and the line for stderr.
    Fails(i32, String),
}

/// An exec under way. Dropping it ends its instance if it still runs (a
/// client that went away leaves nothing running).
pub struct Exec {
    container: Arc<Container>,
    state: State,
}

enum State {
    Running {
        id: u64,
        waiter: ExitWaiter,
    },
    /// Ended before it ran (`program not found`).
    Ended(Exit),
}

impl Exec {
    /// Waits for the exec's end, its output written. Cancel-safe.
    pub async fn wait(&self) -> Exit {
        match &self.state {
            State::Running { waiter, .. } => waiter.clone().wait().await,
            State::Ended(exit) => exit.clone(),
        }
    }

    /// Ends the instance now (a deadline passed); [`Exec::wait`] then
    /// returns its exit (137, `stopped`).
    pub fn kill(&self) {
        if let State::Running { id, .. } = self.state {
            self.container.end_exec(id);
        }
    }
}

impl Drop for Exec {
    fn drop(&mut self) {
        self.kill();
    }
}

impl Pods {
    /// Runs `cmd` in running container `container_id` (see the module's
    /// docs), its stdin read from `stdin`, its stdout and stderr written to `output`. Returns once the
    /// instance runs (or has ended without running); wait for its end with
    /// [`Exec::wait`].
    ///
    /// Errors: NotFound for an unknown container; InvalidArgument for an
    /// empty `cmd` or a mount that cannot be opened; FailedPrecondition when
    /// the container is not running (as containerd's "container is in
    /// CONTAINER_EXITED state").
    pub async fn exec(&self, container_id: &str, cmd: Vec<String>, stdin: Stdin, output: Output) -> Result<Exec> {
        let container = self.container(container_id)?;
        let Some(argv0) = cmd.first().filter(|argv0| !argv0.is_empty()) else {
            return Err(Error::InvalidArgument(format!(
                "exec in container {}: cmd is empty; its first element names the program",
                container.id
            )));
        };
        container.require_running("exec")?;
        // A running container's program was compiled at its start.
        let Some(own) = container.compiled.get().cloned() else {
            return Err(Error::internal(
                format!("exec in container {}", container.id),
                anyhow::anyhow!("a running container has no compiled program"),
            ));
        };
        let sandbox = self.pod(&container.pod_id)?;
        let program = match self.exec_program(&container, own, argv0).await? {
            Program::Run(compiled) => compiled,
            Program::Fails(code, message) => {
                output.finish_with_error(format!("{message}\n").as_bytes()).await;
                let exit = Exit { code, reason: ExitReason::Error, message, finished_at: crate::clock::now_nanos() };
                return Ok(Exec { container, state: State::Ended(exit) });
            }
        };
        let mut spec = container.guest_spec(&sandbox.network);
        spec.argv = cmd;
        spec.stdin = stdin;
        // Its own copies of file mounts: the guest's are the guest's, and
        // only what the exec changes is copied back to the host file.
        let scratch = spec.scratch_dir.as_ref().map(|dir| dir.join("execs").join(super::new_id()));
        spec.scratch_dir = scratch.clone();
        let guest = self.engine.run_command(program, spec, container.usage.clone(), output).await?;
        let waiter = guest.waiter();
        let id = container.add_exec(guest)?;
        // The one place an exec's end is seen: forgotten by the container,
        // its copies of file mounts removed.
        let (ended, ended_waiter) = (container.clone(), waiter.clone());
        tokio::spawn(async move {
            ended_waiter.wait().await;
            ended.end_exec(id);
            if let Some(scratch) = scratch.filter(|_| !ended.mounts.is_empty()) {
                remove_scratch(&scratch).await;
            }
        });
        tracing::debug!(container = %container.id, exec = id, "exec started");
        Ok(Exec { container, state: State::Running { id, waiter } })
    }

    /// What `argv0` names in `container` (see [`Program`]); `own` is the
    /// container's compiled program.
    async fn exec_program(&self, container: &Container, own: Arc<Compiled>, argv0: &str) -> Result<Program> {
        let own_argv0 = container.process.argv.first().map(String::as_str).unwrap_or_default();
        let name = container.config.metadata.as_ref().map(|metadata| metadata.name.as_str()).unwrap_or_default();
        if argv0 == name || names_own_program(argv0, &[own_argv0, &container.image.module_path]) {
            return Ok(if own.runs_as_command() { Program::Run(own) } else { cannot_run_as_command(argv0) });
        }
        let found = match self.programs.find_program(&container.image, argv0, &container.process.working_dir).await {
            Ok(found) => found,
            Err(Error::InvalidArgument(why)) | Err(Error::FailedPrecondition(why)) => {
                return Ok(Program::Fails(EXIT_CANNOT_EXECUTE, format!("{argv0}: cannot execute: {why}")));
            }
            Err(e) => return Err(e),
        };
        Ok(match found {
            Some(compiled) if compiled.runs_as_command() => Program::Run(compiled),
            Some(_) => cannot_run_as_command(argv0),
            None => Program::Fails(EXIT_NOT_FOUND, format!("{argv0}: program not found")),
        })
    }
}

fn cannot_run_as_command(argv0: &str) -> Program {
    Program::Fails(
        EXIT_CANNOT_EXECUTE,
        format!("{argv0}: cannot execute: a component that exports no `wasi:cli/run` (it only serves)"),
    )
}

/// Whether `argv0` names the container's own program: one of `own` (its
/// argv[0], its image's module path) as given, or a bare name equal to its
/// file name, either with or without `.wasm` (`app`, `app.wasm` for
/// `/bin/app.wasm` or for `app`).
fn names_own_program(argv0: &str, own: &[&str]) -> bool {
    let stem = |name: &str| name.strip_suffix(".wasm").unwrap_or(name).to_owned();
    own.iter().filter(|own| !own.is_empty()).any(|own| {
        let name = Path::new(own).file_name().and_then(|name| name.to_str()).unwrap_or_default();
        argv0 == *own || (!argv0.contains('/') && !argv0.is_empty() && stem(argv0) == stem(name))
    })
}

async fn remove_scratch(dir: &Path) {
    match tokio::fs::remove_dir_all(dir).await {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => tracing::warn!(dir = %dir.display(), %error, "removing an exec's copies of file mounts"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_own_program_is_named_by_path_file_name_or_stem() {
        let own = ["/app/server.wasm", "/app/server.wasm"];
        for argv0 in ["/app/server.wasm", "server.wasm", "server"] {
            assert!(names_own_program(argv0, &own), "{argv0}");
        }
        for argv0 in ["sh", "/bin/server.wasm/", "app/server", "", "/server"] {
            assert!(!names_own_program(argv0, &own), "{argv0}");
        }
        // An artifact run as `app` (its command, or its repository's name).
        for argv0 in ["app", "app.wasm"] {
            assert!(names_own_program(argv0, &["app", ""]), "{argv0}");
        }
        assert!(!names_own_program("/app", &["app", ""]));
        assert!(!names_own_program("hello", &["", ""]));
    }
}
