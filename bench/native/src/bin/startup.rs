//! `startup STDERR_FILE PROGRAM [ARGS...]`: runs PROGRAM once with stdout on a pipe and
//! prints `FIRST_NS EXIT_NS MAXRSS_KIB STATUS`: the nanoseconds from spawning it to the
//! first byte of its output and to its exit, its peak resident set size (`ru_maxrss`)
//! and its exit status, then the output itself on the following lines.
//!
//! Why a native program: a child's `ru_maxrss` also counts the memory of the process
//! that spawned it (it shares or copies that memory until it execs), so a process
//! spawned by the Python harness would carry Python's tens of MiB. This program is a few
//! MiB, well below what it measures; and the timing leaves out its own start.

use std::fs::File;
use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, ExitCode, Stdio};
use std::time::Instant;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("startup: {message}");
            ExitCode::from(2)
        }
    }
}

fn run() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [stderr_path, program, program_args @ ..] = args.as_slice() else {
        return Err("usage: startup STDERR_FILE PROGRAM [ARGS...]".into());
    };
    let stderr = File::create(stderr_path)
        .map_err(|error| format!("cannot create {stderr_path}: {error}"))?;
    let start = Instant::now();
    let mut child = Command::new(program)
        .args(program_args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .map_err(|error| format!("cannot start {program}: {error}"))?;
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let mut output = vec![0; 65536];
    let first_len = stdout.read(&mut output).unwrap_or(0);
    let first = start.elapsed();
    output.truncate(first_len);
    let _ = stdout.read_to_end(&mut output);
    let status = child
        .wait()
        .map_err(|error| format!("cannot wait for {program}: {error}"))?;
    let exited = start.elapsed();
    // No output at all: the first output is the exit.
    let first = if first_len == 0 { exited } else { first };
    let code = status
        .code()
        .or_else(|| status.signal().map(|signal| 128 + signal))
        .unwrap_or(-1);
    println!(
        "{} {} {} {code}",
        first.as_nanos(),
        exited.as_nanos(),
        children_max_rss_kib()?
    );
    print!("{}", String::from_utf8_lossy(&output));
    Ok(())
}

/// The peak RSS of the children waited for, in KiB: here, of the one child.
#[expect(unsafe_code, reason = "getrusage(2) has no safe wrapper in std")]
fn children_max_rss_kib() -> Result<i64, String> {
    // SAFETY: rusage is plain old data, for which all zeroes is a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: the pointer is to a live local of the right type.
    if unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) } != 0 {
        return Err(format!("getrusage: {}", std::io::Error::last_os_error()));
    }
    Ok(usage.ru_maxrss)
}
