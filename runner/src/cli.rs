//! The command line: clap parses it into [`Cli`], [`Cli::validate`] turns that into a
//! [`RunConfig`] that holds only valid, ready-to-use values.

use std::env;
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use clap::{Parser, Subcommand};

use crate::checkpoint::{JobId, Location};
use crate::host::DirMapping;
use crate::human::{parse_duration, parse_size};
use crate::log::LogFormat;
use crate::memory::{self, MaxMemory};
use crate::net::Rule;
use crate::outcome::EXIT_CODES;

/// Runs a batch job compiled to WebAssembly, and stops it cleanly.
///
/// SIGTERM, SIGINT and SIGHUP become a shutdown request the job sees (through the
/// runner:job/lifecycle interface, or runner_job_v1 in a core module); the job saves a
/// checkpoint and returns, and the next run resumes from it. A job that has not
/// returned when the grace period ends is stopped by force, whether it is computing or
/// blocked, and the runner exits with a code that says what happened. A second signal
/// forces the stop at once, and so does SIGQUIT.
#[derive(Debug, Parser)]
#[command(
    name = "runner",
    version,
    override_usage = "runner [OPTIONS] JOB.wasm [ARGS]...\n       runner compile JOB.wasm -o JOB.cwasm\n       runner state show|reset JOB_ID",
    after_help = EXIT_CODES,
    max_term_width = 100,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
pub struct Cli {
    /// Inspect or remove a job's state instead of running a job.
    #[command(subcommand)]
    pub command: Option<Command>,

    /// How the runner's own lines on stderr look: `text` (`runner: ...`; on a terminal
    /// the job's progress shows as a bar) or `json` (one JSON object per line, with
    /// timestamp, level, run_id, job_id, message and fields; the job's stdout and stderr
    /// lines become objects too, marked with their `stream`).
    #[arg(
        long,
        value_name = "FORMAT",
        env = "RUNNER_LOG_FORMAT",
        default_value = "text",
        global = true
    )]
    pub log_format: LogFormat,

    /// How to run the job.
    #[command(flatten)]
    pub run: RunArgs,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show or remove a job's committed state.
    #[command(subcommand)]
    State(StateCommand),
    /// Compile a job ahead of time, to bake it into a container image: `runner
    /// JOB.cwasm` then starts it without compiling. A compiled job only loads in a
    /// runner of the same version and build; another one exits 2 and says so. Its
    /// checkpoints are those of its .wasm.
    Compile(CompileArgs),
}

/// `runner compile`.
#[derive(Debug, clap::Args)]
pub struct CompileArgs {
    /// The job to compile (a component or a core module, as `runner JOB.wasm` takes).
    #[arg(value_name = "JOB.wasm")]
    pub job: PathBuf,

    /// Where to write the compiled job.
    #[arg(short, long, value_name = "JOB.cwasm")]
    pub output: PathBuf,
}

/// `runner state ...`.
#[derive(Debug, Subcommand)]
pub enum StateCommand {
    /// Print the job's committed checkpoint: sequence, size, when and by which module it
    /// was written, its fencing number, the output lengths it records, and who holds the
    /// job's lock.
    Show(StateArgs),
    /// Remove the job's state (both checkpoint generations, the fencing number, the lock
    /// file), after printing what it removes. Refused while a runner holds the job. The
    /// output directory is not touched: empty it before the job runs again.
    Reset(StateArgs),
}

/// The job a `state` subcommand is about.
#[derive(Debug, clap::Args)]
pub struct StateArgs {
    /// The job id (by default a job's id is its file name without the extension).
    #[arg(value_name = "JOB_ID")]
    pub job_id: String,

    /// Where checkpoints are kept: a directory or s3://BUCKET/PREFIX. Default:
    /// $RUNNER_STATE_DIR, else $XDG_STATE_HOME/runner, else ~/.local/state/runner.
    #[arg(long, value_name = "DIR|s3://BUCKET/PREFIX")]
    pub state_dir: Option<PathBuf>,
}

impl StateArgs {
    /// The job id and state location, checked.
    pub fn validate(self) -> Result<(JobId, Location)> {
        let job_id = JobId::new(&self.job_id)?;
        Ok((job_id, state_location(self.state_dir)?))
    }
}

/// `--state-dir` as given, else its default.
fn state_location(given: Option<PathBuf>) -> Result<Location> {
    let path = match given {
        Some(path) => path,
        None => default_state_dir()?,
    };
    Location::parse(path).map_err(|problem| anyhow!("invalid --state-dir: {problem}"))
}

/// How to run a job.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// How long the job has, after a shutdown request, to save its state and return
    /// before it is stopped by force. Keep it shorter than the time your orchestrator
    /// waits before SIGKILL (Kubernetes: terminationGracePeriodSeconds, 30s by default).
    #[arg(long, value_name = "DURATION", env = "RUNNER_GRACE", default_value = "25s",
          value_parser = utf8(parse_duration))]
    pub grace: Duration,

    /// Ask the job to stop after it has run this long (counted from when the job
    /// starts, after it is compiled), then stop it by force after the grace period.
    #[arg(long, value_name = "DURATION", value_parser = utf8(parse_duration))]
    pub timeout: Option<Duration>,

    /// Where checkpoints are kept, one directory per job id. Default: $RUNNER_STATE_DIR,
    /// else $XDG_STATE_HOME/runner, else ~/.local/state/runner. `s3://BUCKET/PREFIX`
    /// keeps them in an S3-compatible bucket instead, so that a job resumes on any node:
    /// credentials and region come from the standard AWS variables (AWS_ACCESS_KEY_ID,
    /// AWS_SECRET_ACCESS_KEY, AWS_REGION, or a web identity), the endpoint from
    /// AWS_ENDPOINT_URL (plain http allowed), and the server must honour conditional
    /// writes (If-Match), which fence a stale owner off.
    #[arg(long, value_name = "DIR|s3://BUCKET/PREFIX")]
    pub state_dir: Option<PathBuf>,

    /// The job's identity: runs with the same id share (and resume from) one checkpoint.
    /// Letters, digits, '.', '_' and '-'. Default: the job file's name without its
    /// extension, followed by `-INDEX` when $JOB_COMPLETION_INDEX is set (in a Kubernetes
    /// Indexed Job each index is its own job).
    #[arg(long, value_name = "ID")]
    pub job_id: Option<String>,

    /// A transactional output directory, at GUEST inside the job (default: the same
    /// path); the job finds its path in $RUNNER_OUTPUT_DIR. At each checkpoint its files
    /// are fsynced and their lengths recorded; a resumed run first cuts them back to those
    /// lengths and removes files created since, so what the job writes there between
    /// checkpoints is neither lost nor duplicated. Files there must be append-only.
    #[arg(long, value_name = "HOST[::GUEST]", value_parser = utf8(parse_dir))]
    pub output: Option<DirMapping>,

    /// How long to wait for the job's lock when another runner holds it (a pod still
    /// terminating while its replacement starts), before giving up with exit 69. Keep it
    /// longer than the grace period of the pod being replaced (Kubernetes'
    /// terminationGracePeriodSeconds, 30s by default), unless the replacement only starts
    /// once the old pod has exited (a Job's podReplacementPolicy: Failed).
    /// With s3:// state, the wait lasts while the owner renews its lease.
    #[arg(long, value_name = "DURATION", env = "RUNNER_LOCK_TIMEOUT", default_value = "60s",
          value_parser = utf8(parse_duration))]
    pub lock_timeout: Duration,

    /// With s3:// state: how long this run's ownership of the job outlives its last
    /// renewal (it renews every third of it). A runner that dies without releasing the
    /// job (SIGKILL, a lost node) keeps the next run waiting this long at most. One that
    /// is only cut off from the bucket fails its saves with `io` meanwhile; once another
    /// run has taken the job over, its next save (or renewal) finds out and stops its job
    /// (`fenced`, exit 69).
    #[arg(long, value_name = "DURATION", env = "RUNNER_LEASE", default_value = "30s",
          value_parser = utf8(parse_lease))]
    pub lease: Duration,

    /// Where compiled jobs are cached, so that only the first run of a job compiles it.
    /// Default: $RUNNER_CACHE_DIR, else $XDG_CACHE_HOME/runner, else ~/.cache/runner.
    /// A damaged or outdated entry is ignored and replaced.
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,

    /// The most the compiled-job cache may hold (512MiB, 2GiB...). A run that adds to it
    /// removes the entries used least recently beyond that (never the one it uses), and
    /// what crashed runners left half-written; a compiled Python job takes some 36 MiB.
    #[arg(long, value_name = "SIZE", env = "RUNNER_CACHE_MAX", default_value = "1GiB",
          value_parser = utf8(parse_size))]
    pub cache_max: u64,

    /// Where to write the run's summary when the runner exits: one JSON object of at most
    /// 4096 bytes (outcome, exit code, stop reason, checkpoint sequence, last progress,
    /// run time). Default: /dev/termination-log, where Kubernetes reads a container's
    /// termination message, when it exists and is writable; /dev/null writes none.
    #[arg(long, value_name = "PATH", env = "RUNNER_TERMINATION_LOG")]
    pub termination_log: Option<PathBuf>,

    /// Serve the run's metrics for Prometheus at http://ADDR/metrics (OpenMetrics text):
    /// progress, checkpoints committed, their bytes and commit times, stop requests by
    /// reason, the run's state and exit code. ADDR is HOST:PORT, IP:PORT or :PORT (every
    /// IPv4 address), for example `:9090`. Off by default.
    #[arg(long, value_name = "ADDR", env = "RUNNER_METRICS_ADDR")]
    pub metrics_addr: Option<String>,

    /// Do not use the compiled-job cache: compile the job on every run.
    #[arg(long, conflicts_with = "cache_dir")]
    pub no_cache: bool,

    /// Start from scratch: remove the job's checkpoints (and, with --output, the output
    /// files) instead of resuming. Needed to run a job whose checkpoints are all unusable;
    /// the runner never starts over on its own.
    #[arg(long)]
    pub start_over: bool,

    /// Give the job a host directory, at GUEST inside the job (default: the same path).
    /// May be repeated. The job sees no other files.
    #[arg(long = "dir", value_name = "HOST[::GUEST]", value_parser = utf8(parse_dir))]
    pub dirs: Vec<DirMapping>,

    /// Set an environment variable for the job; NAME alone passes the runner's own
    /// value. May be repeated. The job sees no other variables, unless --inherit-env.
    #[arg(long = "env", value_name = "NAME[=VALUE]", value_parser = utf8(parse_env))]
    pub envs: Vec<EnvSetting>,

    /// Let the job reach RULE over the network (TCP and UDP through wasi:sockets, HTTP
    /// and HTTPS requests through wasi:http): a
    /// host name (`db.internal`, `*.example.com`), an IP address or a CIDR block
    /// (`10.0.0.0/8`, `[fd00::/8]`), each with `:PORT` or `:FIRST-LAST` or every port,
    /// or `*` for everything. May be repeated; $RUNNER_ALLOW_NET takes a comma-separated
    /// list. Checked on every connect, bind, listen and send; a name lookup is answered
    /// only for the host names listed, and reaches only the addresses it returns.
    /// Without it the job has no network at all.
    #[arg(long = "allow-net", value_name = "RULE", env = "RUNNER_ALLOW_NET",
          value_delimiter = ',', value_parser = utf8(parse_rule))]
    pub allow_net: Vec<Rule>,

    /// The most memory the job may have: its linear memories and tables, all its
    /// instances together (512MiB, 2GiB...); `none` for no limit. A job that asks for
    /// more gets a failed allocation (it traps, exit 134, or fails on its own terms), and
    /// the runner says which limit it hit. Default: in a cgroup with a memory limit (a
    /// container with limits.memory), that limit less 64 MiB for the runner itself (half
    /// of it, up to 128 MiB), so
    /// that the job, not the runner, runs out and the OOM killer is not needed; else none.
    #[arg(long, value_name = "SIZE|none", env = "RUNNER_MAX_MEMORY",
          value_parser = utf8(parse_max_memory))]
    pub max_memory: Option<MemoryFlag>,

    /// Pass the runner's whole environment to the job (a Kubernetes `envFrom`), except
    /// the runner's own settings (RUNNER_*) and the credentials it uses itself (AWS_*),
    /// which a job should not see unless given one by one with --env; --env values win.
    /// Variables that are not UTF-8 are left out.
    #[arg(long)]
    pub inherit_env: bool,

    /// The job, then the arguments it gets: a component of the runner:job/job world, a
    /// WASI 0.2 command component, or a core module (a wasm32-wasip1 program, a job if
    /// it imports runner_job_v1); or a compiled job (`runner compile`). Everything after
    /// the job file goes to the job.
    #[arg(
        value_name = "JOB.wasm [ARGS]",
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    pub job_and_args: Vec<OsString>,
}

/// The prefixes of the variables `--inherit-env` keeps from the job: the runner's own
/// settings, and the credentials it uses for a bucket (the AWS SDK's variables).
const NOT_INHERITED: [&str; 2] = ["RUNNER_", "AWS_"];

/// The runner's environment as `--inherit-env` gives it to the job: without the
/// variables of [`NOT_INHERITED`], those that are not UTF-8, and those `settings` set.
fn inherited_env(settings: &[EnvSetting]) -> Vec<(String, String)> {
    env::vars_os()
        .filter_map(|(name, value)| Some((name.into_string().ok()?, value.into_string().ok()?)))
        .filter(|(name, _)| {
            !NOT_INHERITED.iter().any(|prefix| name.starts_with(prefix))
                && !settings.iter().any(|setting| setting.name == *name)
        })
        .collect()
}

fn parse_rule(text: &str) -> Result<Rule, String> {
    text.trim().parse()
}

/// `--max-memory` as given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryFlag {
    /// At most this many bytes.
    Bytes(u64),
    /// `none`: no limit, not even the cgroup's.
    Unlimited,
}

fn parse_max_memory(text: &str) -> Result<MemoryFlag, String> {
    if text == "none" {
        return Ok(MemoryFlag::Unlimited);
    }
    match parse_size(text)? {
        0 => Err("0 leaves the job no memory (`none` sets no limit)".to_owned()),
        bytes => Ok(MemoryFlag::Bytes(bytes)),
    }
}

/// An `--env` setting as given: a value, or a name to pass from the runner's environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvSetting {
    name: String,
    value: Option<String>,
}

/// Everything a run needs, validated.
#[derive(Debug)]
pub struct RunConfig {
    /// The job file.
    pub job: PathBuf,
    /// The job's arguments; the first is the job file's name.
    pub args: Vec<String>,
    /// The grace period after a shutdown request.
    pub grace: Duration,
    /// The runner's own deadline for the job.
    pub timeout: Option<Duration>,
    /// Where checkpoints are kept.
    pub state: Location,
    /// The job's identity in the state directory.
    pub job_id: JobId,
    /// Preopened directories.
    pub dirs: Vec<DirMapping>,
    /// The job's environment.
    pub env: Vec<(String, String)>,
    /// The transactional output directory.
    pub output: Option<DirMapping>,
    /// How long to wait for the job's lock.
    pub lock_timeout: Duration,
    /// The run's lease on a job kept in a bucket.
    pub lease: Duration,
    /// Whether to discard the job's checkpoints.
    pub start_over: bool,
    /// Where compiled jobs are cached; `None`: no cache.
    pub cache_dir: Option<PathBuf>,
    /// The most the cache may hold, in bytes.
    pub cache_max: u64,
    /// Where to serve metrics, if anywhere.
    pub metrics_addr: Option<String>,
    /// The most memory the job may have, if it is limited.
    pub max_memory: Option<MaxMemory>,
    /// What the job may reach over the network.
    pub allow_net: Vec<Rule>,
}

impl RunArgs {
    /// Checks the parsed command line against the environment and builds a
    /// [`RunConfig`].
    pub fn validate(self) -> Result<RunConfig> {
        let mut job_and_args = self.job_and_args.into_iter();
        let job = PathBuf::from(job_and_args.next().context("no job file given")?);
        let name = job
            .file_name()
            .with_context(|| format!("job path `{}` names no file", job.display()))?
            .to_str()
            .with_context(|| format!("job file name `{}` is not UTF-8", job.display()))?
            .to_owned();
        let mut args = vec![name];
        for arg in job_and_args {
            args.push(
                arg.into_string().map_err(|arg| {
                    anyhow!("job argument `{}` is not UTF-8", arg.to_string_lossy())
                })?,
            );
        }

        let job_id = match self.job_id {
            Some(id) => JobId::new(&id).context("invalid --job-id")?,
            None => default_job_id(&job, env::var_os("JOB_COMPLETION_INDEX").as_deref())?,
        };
        let state = state_location(self.state_dir)?;
        if let Some(output) = &self.output
            && state.local_dir().is_none()
        {
            bail!(
                "--output `{}` keeps the job's files on this node, where a run resumed on \
                 another node would not find them: it needs a local --state-dir, not `{state}`",
                output.host.display()
            );
        }

        let mut env = if self.inherit_env {
            inherited_env(&self.envs)
        } else {
            Vec::with_capacity(self.envs.len())
        };
        for setting in self.envs {
            let value = match setting.value {
                Some(value) => value,
                None => env::var(&setting.name).with_context(|| {
                    format!(
                        "--env {0}: {0} is not set (or not UTF-8) in the runner's environment",
                        setting.name
                    )
                })?,
            };
            env.push((setting.name, value));
        }
        if let Some(output) = &self.output {
            env.push(("RUNNER_OUTPUT_DIR".to_owned(), output.guest.clone()));
        }
        let cache_dir = if self.no_cache {
            None
        } else {
            self.cache_dir.or_else(default_cache_dir)
        };
        check_dirs(
            &self.dirs,
            self.output.as_ref(),
            &state,
            cache_dir.as_deref(),
        )?;

        Ok(RunConfig {
            job,
            args,
            grace: self.grace,
            timeout: self.timeout,
            state,
            job_id,
            dirs: self.dirs,
            env,
            output: self.output,
            lock_timeout: self.lock_timeout,
            lease: self.lease,
            start_over: self.start_over,
            cache_dir,
            cache_max: self.cache_max,
            metrics_addr: self.metrics_addr,
            allow_net: self.allow_net,
            max_memory: match self.max_memory {
                Some(MemoryFlag::Bytes(bytes)) => Some(MaxMemory {
                    bytes,
                    source: memory::Source::Flag,
                }),
                Some(MemoryFlag::Unlimited) => None,
                None => memory::cgroup_limit().map(MaxMemory::from_cgroup),
            },
        })
    }
}

/// The job file's name without its extension, and `-INDEX` in an Indexed Job (`index`:
/// $JOB_COMPLETION_INDEX).
fn default_job_id(job: &Path, index: Option<&OsStr>) -> Result<JobId> {
    let stem = job.file_stem().and_then(|stem| stem.to_str()).unwrap_or("");
    let id = match index.filter(|index| !index.is_empty()) {
        None => stem.to_owned(),
        Some(index) => match index.to_str() {
            Some(index) if index.bytes().all(|byte| byte.is_ascii_digit()) => {
                format!("{stem}-{index}")
            }
            _ => bail!(
                "JOB_COMPLETION_INDEX `{}` is not a number: unset it, or pass --job-id",
                index.to_string_lossy()
            ),
        },
    };
    JobId::new(&id).with_context(|| {
        format!("cannot use the job file's name `{stem}` as its id: pass --job-id")
    })
}

fn default_state_dir() -> Result<PathBuf> {
    let non_empty = |name| env::var_os(name).filter(|value| !value.is_empty());
    if let Some(dir) = non_empty("RUNNER_STATE_DIR") {
        return Ok(dir.into());
    }
    if let Some(dir) = non_empty("XDG_STATE_HOME") {
        return Ok(PathBuf::from(dir).join("runner"));
    }
    if let Some(home) = non_empty("HOME") {
        return Ok(PathBuf::from(home).join(".local/state/runner"));
    }
    bail!("no state directory: pass --state-dir or set RUNNER_STATE_DIR")
}

/// $RUNNER_CACHE_DIR, else $XDG_CACHE_HOME/runner, else ~/.cache/runner; `None` (no
/// cache) when none of them is set.
fn default_cache_dir() -> Option<PathBuf> {
    let non_empty = |name| env::var_os(name).filter(|value| !value.is_empty());
    non_empty("RUNNER_CACHE_DIR")
        .map(PathBuf::from)
        .or_else(|| non_empty("XDG_CACHE_HOME").map(|dir| PathBuf::from(dir).join("runner")))
        .or_else(|| non_empty("HOME").map(|home| PathBuf::from(home).join(".cache/runner")))
}

/// A lease: at least a second, so that renewing it (every third of it) stays far from
/// a request's round trip; at most a day.
fn parse_lease(text: &str) -> Result<Duration, String> {
    let lease = parse_duration(text)?;
    if !(Duration::from_secs(1)..=Duration::from_secs(86_400)).contains(&lease) {
        return Err(format!("a lease of `{text}` is not between 1s and 1day"));
    }
    Ok(lease)
}

/// `parse` for a value that may not be UTF-8, so that the error names the argument
/// (clap's own for a value that is not UTF-8 names none).
fn utf8<T: Clone + Send + Sync + 'static>(
    parse: fn(&str) -> Result<T, String>,
) -> impl clap::builder::TypedValueParser<Value = T> {
    use clap::builder::TypedValueParser as _;
    clap::builder::OsStringValueParser::new().try_map(move |value: OsString| match value.to_str() {
        Some(text) => parse(text),
        None => Err(format!("`{}` is not UTF-8", value.to_string_lossy())),
    })
}

/// Refuses `--dir`s that give the job one guest path twice (the later would hide the
/// earlier), or that give it the state directory or the compiled-job cache (the job
/// could rewrite its own or another job's checkpoints, or what the runner loads).
fn check_dirs(
    dirs: &[DirMapping],
    output: Option<&DirMapping>,
    state: &Location,
    cache: Option<&Path>,
) -> Result<()> {
    let all: Vec<(&str, &DirMapping)> = dirs
        .iter()
        .map(|dir| ("--dir", dir))
        .chain(output.map(|output| ("--output", output)))
        .collect();
    for (i, (flag, dir)) in all.iter().enumerate() {
        let guest = dir.guest.trim_end_matches('/');
        if let Some((other_flag, other)) = all[..i]
            .iter()
            .find(|(_, other)| other.guest.trim_end_matches('/') == guest)
        {
            bail!(
                "{other_flag} `{}` and {flag} `{}` both give the job `{}`: give each a guest path \
                 of its own (HOST::GUEST)",
                other.host.display(),
                dir.host.display(),
                dir.guest
            );
        }
    }
    let runner_dirs = [
        state.local_dir().map(|dir| ("--state-dir", dir)),
        cache.map(|dir| ("the compiled-job cache", dir)),
    ];
    for dir in dirs {
        let host = resolved(&dir.host);
        for (what, runner_dir) in runner_dirs.iter().flatten() {
            let runner_dir = resolved(runner_dir);
            if host.starts_with(&runner_dir) || runner_dir.starts_with(&host) {
                bail!(
                    "--dir `{}` overlaps {what} `{}`: the job must not see the runner's own \
                     files (give --dir a narrower directory, or keep them elsewhere)",
                    dir.host.display(),
                    runner_dir.display()
                );
            }
        }
    }
    Ok(())
}

/// `path` as the file system resolves it, as far as it exists; absolute in any case.
fn resolved(path: &Path) -> PathBuf {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
    let existing = absolute
        .ancestors()
        .find_map(|ancestor| Some((ancestor, ancestor.canonicalize().ok()?)));
    match existing {
        Some((ancestor, canonical)) => match absolute.strip_prefix(ancestor) {
            Ok(rest) => canonical.join(rest),
            Err(_) => canonical,
        },
        None => absolute,
    }
}

fn parse_dir(text: &str) -> Result<DirMapping, String> {
    let (host, guest) = match text.split_once("::") {
        Some((host, guest)) => (host, guest),
        None => (text, text),
    };
    if host.is_empty() || guest.is_empty() {
        return Err(format!("`{text}` is not HOST or HOST::GUEST"));
    }
    Ok(DirMapping {
        host: host.into(),
        guest: guest.into(),
    })
}

fn parse_env(text: &str) -> Result<EnvSetting, String> {
    let (name, value) = match text.split_once('=') {
        Some((name, value)) => (name, Some(value.to_owned())),
        None => (text, None),
    };
    if name.is_empty() {
        return Err(format!("`{text}` is not NAME or NAME=VALUE"));
    }
    Ok(EnvSetting {
        name: name.into(),
        value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn verify_cli() {
        Cli::command().debug_assert();
    }

    #[test]
    fn dirs_and_envs() {
        assert_eq!(
            parse_dir("/data::/input"),
            Ok(DirMapping {
                host: "/data".into(),
                guest: "/input".into()
            })
        );
        assert_eq!(parse_dir("data").map(|d| d.guest), Ok("data".into()));
        assert!(parse_dir("::/x").is_err());
        assert_eq!(
            parse_env("A=b=c"),
            Ok(EnvSetting {
                name: "A".into(),
                value: Some("b=c".into())
            })
        );
        assert!(parse_env("=x").is_err());
    }

    #[test]
    fn everything_after_the_job_goes_to_the_job() {
        let cli = Cli::try_parse_from(["runner", "--grace", "1s", "job.wasm", "--grace", "x"])
            .expect("parses");
        assert_eq!(cli.run.grace, Duration::from_secs(1));
        assert_eq!(cli.run.job_and_args, ["job.wasm", "--grace", "x"]);
        let config = Cli::try_parse_from(["runner", "--state-dir", "/s", "dir/my-job.wasm", "a"])
            .expect("parses")
            .run
            .validate()
            .expect("valid");
        assert_eq!(config.args, ["my-job.wasm", "a"]);
        assert_eq!(config.job_id.as_str(), "my-job");
    }

    #[test]
    fn an_indexed_job_s_index_is_part_of_its_default_id() {
        let id = |index: Option<&str>| {
            default_job_id(Path::new("/jobs/primes.wasm"), index.map(OsStr::new))
                .map(|id| id.as_str().to_owned())
                .map_err(|error| format!("{error:#}"))
        };
        assert_eq!(id(None).as_deref(), Ok("primes"));
        assert_eq!(id(Some("")).as_deref(), Ok("primes"));
        assert_eq!(id(Some("7")).as_deref(), Ok("primes-7"));
        let error = id(Some("7; rm")).expect_err("not a number");
        assert!(error.contains("JOB_COMPLETION_INDEX `7; rm`"), "{error}");
    }

    #[test]
    fn state_subcommands_and_jobs_named_like_them() {
        let cli = Cli::try_parse_from(["runner", "state", "show", "job", "--state-dir", "/s"])
            .expect("parses");
        assert!(matches!(
            cli.command,
            Some(Command::State(StateCommand::Show(StateArgs { ref job_id, .. }))) if job_id == "job"
        ));
        let cli = Cli::try_parse_from(["runner", "./state", "show"]).expect("parses");
        assert!(cli.command.is_none());
        assert_eq!(cli.run.job_and_args, ["./state", "show"]);
        assert!(Cli::try_parse_from(["runner"]).is_err());
    }
}
