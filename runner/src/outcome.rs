//! How a run ended, why a stop was asked, and the exit code that says so. This is the
//! only place that knows the numbers; `--help` and the README print [`EXIT_CODES`].

/// The exit codes, as `--help` shows them.
pub const EXIT_CODES: &str = "\
Exit codes:
  0        the job completed (now, or in an earlier run: a completed job is not run again)
  1        the job returned an error
  2        usage error, invalid job, unusable state, or runner failure before the job ran
  69       another runner owns the job: its lock was not free within --lock-timeout, or a
           newer runner took the job over while this one ran (the job was stopped at once)
  74       the job's state could not be reached before the job ran, for a reason that may
           pass (an S3 endpoint unreachable, timing out, or answering 5xx or 429; a state
           directory whose file system fails with a transport error): run again later
  75       suspended: the job stopped on request after saving its state (a core module
           job: it exited 75), or the stop came before the job started; run again to
           resume
  124      stopped by force after --timeout ran out
  129      stopped by force after SIGHUP (the grace ran out, or a second signal came)
  130      stopped by force after SIGINT (the grace ran out, or a second signal came)
  131      stopped at once, with no grace, after SIGQUIT
  143      stopped by force after SIGTERM (the grace ran out, or a second signal came)
  134      the job trapped (panic, unreachable, out of memory, stack overflow)
  n        the job exited with code n (wasi:cli/exit, or proc_exit in a core module)
After a forced stop the last checkpoint the job committed stands.";

/// Why the runner is stopping the job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// SIGTERM.
    Terminate,
    /// SIGINT.
    Interrupt,
    /// SIGHUP.
    Hangup,
    /// SIGQUIT: a request to stop at once (and, for a process that keeps its default
    /// action, to dump core), with no grace.
    Quit,
    /// The runner's `--timeout` ran out.
    Timeout,
    /// Another runner took the job over: this one may not save any more, so the job is
    /// stopped at once.
    Fenced,
}

impl StopReason {
    /// Every reason, in the order of the metrics.
    pub const ALL: [StopReason; 6] = [
        StopReason::Terminate,
        StopReason::Interrupt,
        StopReason::Hangup,
        StopReason::Quit,
        StopReason::Timeout,
        StopReason::Fenced,
    ];

    /// The signal's name, or `--timeout`.
    pub fn cause(self) -> &'static str {
        match self {
            StopReason::Terminate => "SIGTERM",
            StopReason::Interrupt => "SIGINT",
            StopReason::Hangup => "SIGHUP",
            StopReason::Quit => "SIGQUIT",
            StopReason::Timeout => "--timeout",
            StopReason::Fenced => "another runner took the job over",
        }
    }

    /// The reason's name in the run's summary.
    pub fn name(self) -> &'static str {
        match self {
            StopReason::Terminate => "SIGTERM",
            StopReason::Interrupt => "SIGINT",
            StopReason::Hangup => "SIGHUP",
            StopReason::Quit => "SIGQUIT",
            StopReason::Timeout => "timeout",
            StopReason::Fenced => "fenced",
        }
    }
}

/// How a run ended.
#[derive(Debug)]
pub enum Outcome {
    /// `run` returned `completed`.
    Completed,
    /// The job completed in an earlier run, and is not run again; what to say.
    AlreadyCompleted(String),
    /// `run` returned `suspended`.
    Suspended,
    /// The stop came before the job started (while it compiled, or waited for its
    /// lock): nothing ran.
    NotStarted,
    /// `run` returned an error.
    JobFailed(String),
    /// The job was stopped by force; the reason is what forced it.
    Forced(StopReason),
    /// The job trapped.
    Trapped(String),
    /// The job called `wasi:cli/exit`.
    Exited(i32),
    /// Another runner holds the job's lock, and did not release it in time.
    Locked(String),
    /// The job could not be run: bad usage, an invalid job, an unusable state directory
    /// or a runner failure.
    Failed(anyhow::Error),
    /// The job could not be run because its state could not be reached, for a reason
    /// that may pass: a failure of the infrastructure, not of the job or the command.
    Unavailable(anyhow::Error),
}

impl Outcome {
    /// The process exit code for this outcome.
    pub fn exit_code(&self) -> u8 {
        match self {
            Outcome::Completed | Outcome::AlreadyCompleted(_) => 0,
            Outcome::JobFailed(_) => 1,
            Outcome::Failed(_) => 2,
            Outcome::Locked(_) | Outcome::Forced(StopReason::Fenced) => 69,
            Outcome::Unavailable(_) => 74,
            Outcome::Suspended | Outcome::NotStarted => 75,
            Outcome::Forced(StopReason::Timeout) => 124,
            // 128 + signal number, as a shell reports a process killed by that signal.
            Outcome::Forced(StopReason::Hangup) => 128 + 1,
            Outcome::Forced(StopReason::Quit) => 128 + 3,
            Outcome::Forced(StopReason::Interrupt) => 128 + 2,
            Outcome::Forced(StopReason::Terminate) => 128 + 15,
            Outcome::Trapped(_) => 134,
            // A process exit status keeps the low 8 bits, as POSIX `exit` does.
            Outcome::Exited(code) => (*code & 0xff) as u8,
        }
    }

    /// The outcome's name in the run's summary.
    pub fn name(&self) -> &'static str {
        match self {
            Outcome::Completed => "completed",
            Outcome::AlreadyCompleted(_) => "already-completed",
            Outcome::Suspended => "suspended",
            Outcome::NotStarted => "not-started",
            Outcome::JobFailed(_) => "job-error",
            Outcome::Forced(_) => "stopped-by-force",
            Outcome::Trapped(_) => "trapped",
            Outcome::Exited(_) => "exited",
            Outcome::Locked(_) => "locked",
            Outcome::Failed(_) => "error",
            Outcome::Unavailable(_) => "unavailable",
        }
    }

    /// The line the runner prints on stderr when the run ends, if any.
    pub fn message(&self) -> Option<String> {
        match self {
            Outcome::Completed | Outcome::Exited(_) => None,
            Outcome::AlreadyCompleted(message) => Some(message.clone()),
            Outcome::Suspended => {
                Some("job suspended: its state is saved; run it again to resume (exit 75)".into())
            }
            Outcome::NotStarted => Some(
                "job not started: the stop came before it ran, and its state is as it was; \
                 run it again to start it (exit 75)"
                    .into(),
            ),
            Outcome::JobFailed(message) => Some(format!("job failed: {message}")),
            Outcome::Forced(StopReason::Fenced) => Some(format!(
                "job stopped: another runner has taken it over, and its checkpoints stand \
                 (exit {})",
                self.exit_code()
            )),
            Outcome::Locked(message) => Some(format!("error: {message}")),
            Outcome::Forced(reason) => Some(format!(
                "job stopped by force after {}; its last checkpoint stands (exit {})",
                reason.cause(),
                self.exit_code()
            )),
            Outcome::Trapped(message) => Some(format!("job trapped: {message}")),
            Outcome::Failed(error) => Some(format!("error: {error:#}")),
            Outcome::Unavailable(error) => Some(format!(
                "error: {error:#} (this may pass: run the job again later; exit {})",
                self.exit_code()
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_match_the_documented_table() {
        let cases = [
            (Outcome::Completed, 0),
            (Outcome::AlreadyCompleted("x".into()), 0),
            (Outcome::JobFailed("x".into()), 1),
            (Outcome::Failed(anyhow::anyhow!("x")), 2),
            (Outcome::Locked("x".into()), 69),
            (Outcome::Forced(StopReason::Fenced), 69),
            (Outcome::Unavailable(anyhow::anyhow!("x")), 74),
            (Outcome::Suspended, 75),
            (Outcome::NotStarted, 75),
            (Outcome::Forced(StopReason::Timeout), 124),
            (Outcome::Forced(StopReason::Hangup), 129),
            (Outcome::Forced(StopReason::Quit), 131),
            (Outcome::Forced(StopReason::Interrupt), 130),
            (Outcome::Forced(StopReason::Terminate), 143),
            (Outcome::Trapped("x".into()), 134),
            (Outcome::Exited(3), 3),
            (Outcome::Exited(256 + 7), 7),
        ];
        for (outcome, code) in cases {
            assert_eq!(outcome.exit_code(), code, "{outcome:?}");
            let documented = format!("\n  {code:<9}");
            assert!(
                matches!(outcome, Outcome::Exited(_)) || EXIT_CODES.contains(&documented),
                "exit code {code} is not in EXIT_CODES"
            );
        }
    }
}
