//! `runner`: parse, run, report the outcome and map it to an exit code. Nothing else.

use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use runner::artifact::WriteGate;
use runner::cli::{Cli, Command, CompileArgs, StateCommand};
use runner::outcome::StopReason;
use runner::shutdown::Shutdown;
use runner::summary::{Report, RunStatus, TerminationLog};
use runner::{Outcome, signals};
use signal_hook_tokio::Signals;

fn main() -> ExitCode {
    let code = run_main();
    // The last lines, which a stalled stderr must not hold up beyond a bound.
    runner::log::drain(runner::log::LAST_LINES_WAIT);
    code
}

fn run_main() -> ExitCode {
    // Before anything else, even the runtime: a stop signal from now on waits for its
    // handler instead of killing the runner.
    let held = signals::hold();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            // --help and --version exit 0, usage errors 2. An error goes through the
            // runner's queue for stderr, which a stalled stderr does not block.
            if error.use_stderr() {
                let rendered = if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
                    error.render().ansi().to_string()
                } else {
                    error.render().to_string()
                };
                runner::log::write_raw(&rendered);
            } else {
                let _ = error.print();
            }
            // Not for --help, --version, or help shown for a missing subcommand.
            if error.use_stderr()
                && error.kind() != clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            {
                runner::summary::usage_error(&error.render().to_string());
            }
            return ExitCode::from(u8::try_from(error.exit_code()).unwrap_or(2));
        }
    };
    runner::log::init(cli.log_format);
    // The run's status and summary exist from here, so that even a run that fails
    // before its job starts leaves a summary.
    let status = Arc::new(RunStatus::new(
        std::env::var_os("ARGO_PROGRESS_FILE")
            .filter(|path| !path.is_empty())
            .map(Into::into),
    ));
    let report = Arc::new(Report::new(
        Arc::clone(&status),
        TerminationLog::new(cli.run.termination_log.clone()),
    ));
    let fail =
        |error: anyhow::Error| ExitCode::from(report.finish(&Outcome::Failed(error), None, None));

    let held = match held {
        Ok(held) => held,
        Err(error) => {
            return fail(anyhow::anyhow!(
                "cannot block signals until their handlers exist: {error}"
            ));
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => return fail(anyhow::anyhow!("cannot start the async runtime: {error}")),
    };
    // Handlers before anything else: as PID 1, a signal with no handler is dropped.
    let installed = runtime
        .block_on(async { signals::install() })
        .and_then(|signals| held.release().map(|()| signals));
    let signals = match installed {
        Ok(signals) => signals,
        Err(error) => return fail(anyhow::anyhow!("cannot install signal handlers: {error}")),
    };
    match cli.command {
        Some(Command::State(command)) => return state_command(command, &runtime, signals),
        Some(Command::Compile(args)) => return compile_command(args, &runtime, signals),
        None => {}
    }
    let config = match cli.run.validate() {
        Ok(config) => config,
        Err(error) => return fail(error),
    };
    report.set_job_id(config.job_id.as_str());
    runner::log::set_job_id(config.job_id.as_str());
    let shutdown = Shutdown::new(config.grace);
    if let Some(addr) = &config.metrics_addr {
        let served = runner::metrics::serve(
            addr,
            config.job_id.as_str(),
            Arc::clone(&status),
            Arc::clone(&shutdown),
        );
        match served {
            Ok(local) => tracing::info!("metrics at http://{local}/metrics"),
            Err(error) => return fail(error),
        }
    }
    shutdown.on_stuck_exit({
        let report = Arc::clone(&report);
        move |reason, said| report.finish_stuck(reason, said)
    });
    runtime.spawn(signals::forward(signals, shutdown.clone()));
    let outcome = runtime.block_on(runner::run(config, shutdown.clone(), status));
    // Do not wait for blocked work (a read of stdin, a commit cut off by a forced stop):
    // whatever it was, the job's committed state is already whole.
    runtime.shutdown_background();
    let asked = shutdown.current().map(|request| request.reason);
    ExitCode::from(report.finish(&outcome, asked, None))
}

fn state_command(
    command: StateCommand,
    runtime: &tokio::runtime::Runtime,
    mut signals: Signals,
) -> ExitCode {
    let (args, act): (_, fn(&_, &_, &_) -> _) = match command {
        StateCommand::Show(args) => (args, runner::state::show),
        StateCommand::Reset(args) => (args, runner::state::reset),
    };
    let (job_id, location) = match args.validate() {
        Ok(valid) => valid,
        Err(error) => return say(Outcome::Failed(error)),
    };
    let handle = runtime.handle().clone();
    let done = signals::unless_stopped(runtime, &mut signals, move || {
        act(&location, &job_id, &handle)
    });
    match done {
        Ok(Ok(text)) => {
            use std::io::Write as _;
            let _ = std::io::stdout().lock().write_all(text.as_bytes());
            ExitCode::SUCCESS
        }
        Ok(Err(error)) => match error.downcast::<runner::state::Owned>() {
            Ok(owned) => say(Outcome::Locked(owned.0)),
            Err(error) => say(Outcome::Failed(error)),
        },
        Err(reason) => stopped("runner state", reason),
    }
}

fn compile_command(
    args: CompileArgs,
    runtime: &tokio::runtime::Runtime,
    mut signals: Signals,
) -> ExitCode {
    let gate = Arc::new(WriteGate::default());
    let done = signals::unless_stopped(runtime, &mut signals, {
        let (job, output, gate) = (args.job.clone(), args.output.clone(), Arc::clone(&gate));
        move || match runner::engine::compile_to_file(&job, &output, &gate) {
            Some(written) => written,
            None => Err(anyhow::anyhow!("stopped before writing")),
        }
    });
    match done {
        Ok(Ok(bytes)) => {
            tracing::info!(
                "compiled `{}` to `{}` ({bytes} bytes)",
                args.job.display(),
                args.output.display()
            );
            ExitCode::SUCCESS
        }
        Ok(Err(error)) => say(Outcome::Failed(error)),
        Err(reason) => {
            // A write that went through just before the stop is not left behind: the
            // command did not succeed.
            if gate.close() {
                let _ = std::fs::remove_file(&args.output);
            }
            stopped("runner compile", reason)
        }
    }
}

/// A subcommand stopped by a signal: it says so and exits as a forced stop does.
fn stopped(what: &str, reason: StopReason) -> ExitCode {
    let code = Outcome::Forced(reason).exit_code();
    tracing::warn!(
        "received {}: {what} stopped, and wrote nothing (exit {code})",
        reason.cause()
    );
    ExitCode::from(code)
}

/// The end of a subcommand: its error on stderr, and its exit code. A subcommand that
/// runs writes no termination log: it is not a run of a job.
fn say(outcome: Outcome) -> ExitCode {
    if let Some(message) = outcome.message() {
        tracing::error!("{message}");
    }
    ExitCode::from(outcome.exit_code())
}
