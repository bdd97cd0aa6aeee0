//! `runner`: parse, run, map the outcome to an exit code. Nothing else.

use std::process::ExitCode;

use clap::Parser;
use runner::cli::{Cli, Command, CompileArgs, StateCommand};
use runner::shutdown::Shutdown;
use runner::{Outcome, signals};

fn main() -> ExitCode {
    // Before anything else, even the runtime: a stop signal from now on waits for its
    // handler instead of killing the runner.
    let held = match signals::hold() {
        Ok(held) => held,
        Err(error) => {
            return report(Outcome::Failed(anyhow::anyhow!(
                "cannot block signals until their handlers exist: {error}"
            )));
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            return report(Outcome::Failed(anyhow::anyhow!(
                "cannot start the async runtime: {error}"
            )));
        }
    };
    // Handlers before anything else: as PID 1, a signal with no handler is dropped.
    let installed = runtime
        .block_on(async { signals::install() })
        .and_then(|signals| held.release().map(|()| signals));
    let signals = match installed {
        Ok(signals) => signals,
        Err(error) => {
            return report(Outcome::Failed(anyhow::anyhow!(
                "cannot install signal handlers: {error}"
            )));
        }
    };
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            // --help and --version exit 0, usage errors 2.
            let _ = error.print();
            return ExitCode::from(u8::try_from(error.exit_code()).unwrap_or(2));
        }
    };
    match cli.command {
        Some(Command::State(command)) => return state_command(command),
        Some(Command::Compile(args)) => return compile_command(&args),
        None => {}
    }
    let outcome = match cli.run.validate() {
        Ok(config) => {
            let shutdown = Shutdown::new(config.grace);
            runtime.spawn(signals::forward(signals, shutdown.clone()));
            runtime.block_on(runner::run(config, shutdown))
        }
        Err(error) => Outcome::Failed(error),
    };
    // Do not wait for blocked work (a read of stdin, a commit cut off by a forced stop):
    // whatever it was, the job's committed state is already whole.
    runtime.shutdown_background();
    report(outcome)
}

fn state_command(command: StateCommand) -> ExitCode {
    let (args, act): (_, fn(&_, &_) -> _) = match command {
        StateCommand::Show(args) => (args, runner::state::show),
        StateCommand::Reset(args) => (args, runner::state::reset),
    };
    match args
        .validate()
        .and_then(|(job_id, state_dir)| act(&state_dir, &job_id))
    {
        Ok(text) => {
            use std::io::Write as _;
            let _ = std::io::stdout().lock().write_all(text.as_bytes());
            ExitCode::SUCCESS
        }
        Err(error) => match error.downcast::<runner::state::Owned>() {
            Ok(owned) => report(Outcome::Locked(owned.0)),
            Err(error) => report(Outcome::Failed(error)),
        },
    }
}

fn compile_command(args: &CompileArgs) -> ExitCode {
    match runner::engine::compile_to_file(&args.job, &args.output) {
        Ok(bytes) => {
            runner::print_line(format_args!(
                "compiled `{}` to `{}` ({bytes} bytes)",
                args.job.display(),
                args.output.display()
            ));
            ExitCode::SUCCESS
        }
        Err(error) => report(Outcome::Failed(error)),
    }
}

fn report(outcome: Outcome) -> ExitCode {
    if let Some(message) = outcome.message() {
        runner::print_line(format_args!("{message}"));
    }
    ExitCode::from(outcome.exit_code())
}
