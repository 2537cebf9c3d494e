//! A container's state machine, as plain data: the phases a container goes
//! through, the transitions between them, and which requests each phase
//! allows. `Container` holds one [`Lifecycle`] under its lock and changes it
//! only through [`Lifecycle::apply`]; nothing else decides what state a
//! container is in.
//!
//! ```text
//!   Created ──Start──▶ Starting ──Started──▶ Running ──Exited──▶ Exited
//!                         │                                        ▲
//!                         └──────────────StartFailed───────────────┘
//!   Running ──Recovered (the daemon restarted)──▶ Exited (255, Error)
//!   Created | Exited ──Remove──▶ (removing: no Start, no second Remove)
//! ```
//!
//! As containerd's CRI plugin does (`internal/cri/store/container/status.go`):
//! a container being started cannot be removed, one being removed cannot be
//! started, and a running one is stopped before it is removed.

use crate::wasm::{Exit, ExitReason};

/// Exit code of a container that was running when the daemon stopped and is
/// found again at its next start: containerd reports 255 for a task it lost
/// (`unknownExitCode` in its CRI plugin's restart recovery).
pub const EXIT_LOST: i32 = 255;

/// The state CRI shows (`ContainerState`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerState {
    Created,
    Running,
    Exited,
    /// CRI's unknown state; no container of ours is ever in it.
    Unknown,
}

/// Where a container is in its life. Times are Unix nanoseconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    Created,
    /// StartContainer is opening the log and building the guest.
    Starting,
    Running {
        started_at: i64,
    },
    /// Ended; `started_at` is 0 for a container that never ran.
    Exited {
        started_at: i64,
        exit: Exit,
    },
}

/// A change of phase, or the start of a removal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    /// StartContainer begins.
    Start,
    /// The guest runs, since `at`.
    Started { at: i64 },
    /// StartContainer failed: the container ends without having run.
    StartFailed(Exit),
    /// The guest ended: recorded by the one exit path (`Pods::record_exit`).
    Exited(Exit),
    /// The daemon restarted while the guest ran: it is gone, at `at`.
    Recovered { at: i64 },
    /// RemoveContainer begins (after a running guest was stopped).
    Remove,
}

/// A transition the phase does not allow, with a description of the phase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub transition: &'static str,
    pub phase: &'static str,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cannot {} a container that is {}", self.transition, self.phase)
    }
}

/// What StopContainer must do in a phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopAction {
    /// Nothing runs: stopping is done (CRI: stop is idempotent).
    Nothing,
    /// End the guest, then wait for its exit to be recorded.
    Kill,
    /// StartContainer is under way: refuse, the caller may retry.
    Refuse,
}

/// A container's phase and whether its removal has begun.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lifecycle {
    pub phase: Phase,
    pub removing: bool,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Self { phase: Phase::Created, removing: false }
    }
}

impl Lifecycle {
    /// The CRI state of the phase.
    pub fn state(&self) -> ContainerState {
        match self.phase {
            Phase::Created | Phase::Starting => ContainerState::Created,
            Phase::Running { .. } => ContainerState::Running,
            Phase::Exited { .. } => ContainerState::Exited,
        }
    }

    /// The phase in words, for messages.
    pub fn describe(&self) -> &'static str {
        match (&self.phase, self.removing) {
            (_, true) => "being removed",
            (Phase::Created, _) => "created",
            (Phase::Starting, _) => "starting",
            (Phase::Running { .. }, _) => "running",
            (Phase::Exited { .. }, _) => "exited",
        }
    }

    /// Whether StartContainer may begin: only a created container not being removed.
    pub fn can_start(&self) -> bool {
        matches!(self.phase, Phase::Created) && !self.removing
    }

    /// What StopContainer does.
    pub fn stop_action(&self) -> StopAction {
        match self.phase {
            Phase::Running { .. } => StopAction::Kill,
            Phase::Starting => StopAction::Refuse,
            Phase::Created | Phase::Exited { .. } => StopAction::Nothing,
        }
    }

    /// Whether the removal may begin: not while starting or running (the
    /// guest is stopped first), and only once.
    pub fn can_remove(&self) -> bool {
        matches!(self.phase, Phase::Created | Phase::Exited { .. }) && !self.removing
    }

    /// Applies `transition`, or says why the phase does not allow it (and changes nothing).
    pub fn apply(&mut self, transition: Transition) -> Result<(), Refused> {
        let refused = |name| Refused { transition: name, phase: self.describe() };
        let next = match (&self.phase, transition) {
            (_, Transition::Start) if !self.can_start() => return Err(refused("start")),
            (_, Transition::Start) => Phase::Starting,
            (Phase::Starting, Transition::Started { at }) => Phase::Running { started_at: at },
            (Phase::Starting, Transition::StartFailed(exit)) => Phase::Exited { started_at: 0, exit },
            (Phase::Running { started_at }, Transition::Exited(exit)) => {
                Phase::Exited { started_at: *started_at, exit }
            }
            (Phase::Running { started_at }, Transition::Recovered { at }) => Phase::Exited {
                started_at: *started_at,
                exit: Exit {
                    code: EXIT_LOST,
                    reason: ExitReason::Error,
                    message: "the container runtime (wasmrun) restarted while the container ran; its guest is gone"
                        .into(),
                    finished_at: at,
                },
            },
            (_, Transition::Remove) if !self.can_remove() => return Err(refused("remove")),
            (_, Transition::Remove) => {
                self.removing = true;
                return Ok(());
            }
            (_, Transition::Started { .. }) => return Err(refused("mark as started")),
            (_, Transition::StartFailed(_)) => return Err(refused("fail the start of")),
            (_, Transition::Exited(_)) => return Err(refused("record the exit of")),
            (_, Transition::Recovered { .. }) => return Err(refused("recover")),
        };
        self.phase = next;
        Ok(())
    }

    /// The exit, once ended.
    pub fn exit(&self) -> Option<&Exit> {
        match &self.phase {
            Phase::Exited { exit, .. } => Some(exit),
            _ => None,
        }
    }

    /// When the guest started running; 0 before, or if it never ran.
    pub fn started_at(&self) -> i64 {
        match self.phase {
            Phase::Running { started_at } | Phase::Exited { started_at, .. } => started_at,
            _ => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exit(code: i32) -> Exit {
        Exit { code, reason: ExitReason::Error, message: String::new(), finished_at: 9 }
    }

    fn life(phase: Phase, removing: bool) -> Lifecycle {
        Lifecycle { phase, removing }
    }

    /// Every phase (and being removed) against every transition: what it becomes, or that it is refused.
    #[test]
    fn every_transition() {
        let created = || Phase::Created;
        let starting = || Phase::Starting;
        let running = || Phase::Running { started_at: 5 };
        let exited = || Phase::Exited { started_at: 5, exit: exit(1) };
        let transitions = || {
            [
                Transition::Start,
                Transition::Started { at: 5 },
                Transition::StartFailed(exit(128)),
                Transition::Exited(exit(1)),
                Transition::Recovered { at: 9 },
                Transition::Remove,
            ]
        };
        // One row per starting point; one column per transition above: the
        // lifecycle after it, or None when refused.
        let table: Vec<(Lifecycle, [Option<Lifecycle>; 6])> = vec![
            (
                life(created(), false),
                [Some(life(starting(), false)), None, None, None, None, Some(life(created(), true))],
            ),
            (
                life(starting(), false),
                [
                    None,
                    Some(life(running(), false)),
                    Some(life(Phase::Exited { started_at: 0, exit: exit(128) }, false)),
                    None,
                    None,
                    None,
                ],
            ),
            (
                life(running(), false),
                [
                    None,
                    None,
                    None,
                    Some(life(exited(), false)),
                    Some(life(
                        Phase::Exited {
                            started_at: 5,
                            exit: Exit {
                                code: EXIT_LOST,
                                reason: ExitReason::Error,
                                message: "the container runtime (wasmrun) restarted while the container ran; its \
                                          guest is gone"
                                    .into(),
                                finished_at: 9,
                            },
                        },
                        false,
                    )),
                    None,
                ],
            ),
            (life(exited(), false), [None, None, None, None, None, Some(life(exited(), true))]),
            (life(created(), true), [None, None, None, None, None, None]),
            (life(exited(), true), [None, None, None, None, None, None]),
        ];
        for (from, expected) in table {
            for (transition, expected) in transitions().into_iter().zip(expected) {
                let mut lifecycle = from.clone();
                let result = lifecycle.apply(transition.clone());
                match expected {
                    Some(to) => {
                        assert_eq!(result, Ok(()), "{from:?} + {transition:?}");
                        assert_eq!(lifecycle, to, "{from:?} + {transition:?}");
                    }
                    None => {
                        assert!(result.is_err(), "{from:?} + {transition:?} should be refused");
                        assert_eq!(lifecycle, from, "a refused {transition:?} changed {from:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn what_each_phase_allows_and_shows() {
        let rows = [
            (life(Phase::Created, false), ContainerState::Created, true, StopAction::Nothing, true),
            (life(Phase::Starting, false), ContainerState::Created, false, StopAction::Refuse, false),
            (life(Phase::Running { started_at: 1 }, false), ContainerState::Running, false, StopAction::Kill, false),
            (
                life(Phase::Exited { started_at: 1, exit: exit(0) }, false),
                ContainerState::Exited,
                false,
                StopAction::Nothing,
                true,
            ),
            (life(Phase::Created, true), ContainerState::Created, false, StopAction::Nothing, false),
        ];
        for (lifecycle, state, start, stop, remove) in rows {
            assert_eq!(lifecycle.state(), state, "{lifecycle:?}");
            assert_eq!(lifecycle.can_start(), start, "{lifecycle:?}");
            assert_eq!(lifecycle.stop_action(), stop, "{lifecycle:?}");
            assert_eq!(lifecycle.can_remove(), remove, "{lifecycle:?}");
        }
    }

    #[test]
    fn a_refusal_names_the_phase() {
        let mut running = life(Phase::Running { started_at: 1 }, false);
        let refused = running.apply(Transition::Start).unwrap_err();
        assert_eq!(refused.to_string(), "cannot start a container that is running");
    }
}
