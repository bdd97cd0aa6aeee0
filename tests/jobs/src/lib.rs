//! The job the integration tests run. `testjob.wasm MODE [ARG]` picks a behaviour; each
//! mode prints `ready` on stdout once it is in the state the test wants to interrupt.

use std::hint::black_box;
use std::io::{Read, Write};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use guest_sdk::anyhow::{Context, anyhow};
use guest_sdk::{Ctx, Outcome, Result};
use serde::{Deserialize, Serialize};

#[derive(Default, Serialize, Deserialize)]
struct State {
    note: String,
    runs: u32,
    /// The sums of `two-batches`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    sums: Vec<u64>,
    /// Set by `save-nan`.
    #[serde(default, skip_serializing_if = "is_zero")]
    ratio: f64,
}

fn is_zero(value: &f64) -> bool {
    *value == 0.0
}

fn ready() {
    println!("ready");
    std::io::stdout().flush().expect("flush stdout");
}

fn unix_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos())
}

/// What the job saw when the stop request reached it.
fn report_stop(how: &str) {
    let left = guest_sdk::deadline().map_or(-1, |deadline| {
        deadline
            .saturating_duration_since(Instant::now())
            .as_millis() as i64
    });
    println!(
        "stop seen by {how} at unix_ns={} reason={:?} time_left_ms={left}",
        unix_nanos(),
        guest_sdk::stop_reason()
    );
}

fn spin() -> ! {
    let mut x = 1u64;
    loop {
        x = black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
    }
}

/// Allocates and touches memory, 16 MiB at a time, saying so every 64 MiB, until an
/// allocation fails (which aborts).
fn hog() -> ! {
    let mut kept = Vec::new();
    loop {
        kept.push(vec![1u8; 16 << 20]);
        if kept.len() % 4 == 0 {
            println!("allocated {} MiB", kept.len() * 16);
        }
    }
}

#[guest_sdk::job]
fn run(ctx: &mut Ctx<State>) -> Result<Outcome> {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_default();
    let arg = args.next();
    let arg2 = args.next();
    ctx.state().runs += 1;
    match mode.as_str() {
        // Prints the state it loaded, then completes.
        "show" => {
            let state = ctx.state();
            println!("note={} runs={}", state.note, state.runs - 1);
            drop(state);
            Ok(Outcome::Completed)
        }
        // Blocks on the shutdown pollable, then saves and suspends.
        "wait" => {
            ready();
            guest_sdk::wait_for_shutdown();
            report_stop("pollable");
            ctx.state().note = "suspended after wait".into();
            ctx.suspend()
        }
        // Saves raw states of ARG and ARG2 bytes, says how each went, then waits for the
        // request (the test reads the runner's memory meanwhile) and suspends, saving
        // nothing more.
        "save-sizes" => {
            for size in [&arg, &arg2] {
                let size: usize = size.as_deref().unwrap_or("0").parse()?;
                let result = guest_sdk::save_bytes(&vec![7; size]);
                println!("save of {size} bytes: {result:?}");
            }
            ready();
            guest_sdk::wait_for_shutdown();
            Ok(Outcome::Suspended)
        }
        // Sees the request on the pollable, then ignores it: sleeps an hour, or spins.
        "linger" => {
            ready();
            guest_sdk::wait_for_shutdown();
            report_stop("pollable");
            match arg.as_deref() {
                Some("spin") => spin(),
                _ => std::thread::sleep(Duration::from_secs(3600)),
            }
            Ok(Outcome::Completed)
        }
        // Sees the request, takes two seconds to wind down, then saves and suspends.
        "slow-suspend" => {
            ready();
            guest_sdk::wait_for_shutdown();
            report_stop("pollable");
            std::thread::sleep(Duration::from_secs(2));
            ctx.state().note = "suspended slowly".into();
            ctx.suspend()
        }
        // Computes, checking the flag, then saves and suspends.
        "flag" => {
            ready();
            let mut x = 0u64;
            while !ctx.should_stop() {
                x = black_box(x.wrapping_add(1));
            }
            report_stop("flag");
            ctx.state().note = "suspended after flag".into();
            ctx.suspend()
        }
        // Commit a checkpoint, then compute forever, sleep an hour, or read stdin to its
        // end, without looking at the request.
        "spin" | "sleep" | "stdin" => {
            ctx.state().note = format!("saved before {mode}");
            ctx.checkpoint()?;
            ready();
            match mode.as_str() {
                "spin" => spin(),
                "sleep" => std::thread::sleep(Duration::from_secs(3600)),
                _ => {
                    let mut input = Vec::new();
                    std::io::stdin().read_to_end(&mut input)?;
                }
            }
            println!("{mode} ended");
            Ok(Outcome::Completed)
        }
        // Commits a checkpoint, then writes to stdout without end (the test does not
        // read it, so the job blocks in a write), ignoring the request.
        "flood" => {
            ctx.state().note = "saved before flooding".into();
            ctx.checkpoint()?;
            let line = "x".repeat(1023);
            loop {
                match arg.as_deref() {
                    Some("stderr") => eprintln!("{line}"),
                    _ => println!("{line}"),
                }
            }
        }
        // Saves a small state, then on the request tries to save ARG bytes and prints
        // what the save returned; a failed save makes the job give up with an error.
        "save-on-stop" => {
            ctx.state().note = "before".into();
            ctx.checkpoint()?;
            ready();
            guest_sdk::wait_for_shutdown();
            ctx.state().note = "x".repeat(arg.as_deref().unwrap_or("0").parse()?);
            match ctx.checkpoint() {
                Ok(()) => {
                    println!("save: ok");
                    Ok(Outcome::Suspended)
                }
                Err(error) => {
                    println!("save: {error}");
                    Err(anyhow!(error).context("the final save failed; giving up"))
                }
            }
        }
        // Saves every 20 ms until a save fails.
        "save-every" => {
            ctx.state().note = "saved by save-every".into();
            ctx.checkpoint()?;
            ready();
            loop {
                std::thread::sleep(Duration::from_millis(20));
                ctx.checkpoint()?;
            }
        }
        // Sums 0..ARG twice, in two batches one after the other, saving every 100 ms;
        // before each batch it suspends if asked to stop. With `wait` as a third
        // argument it first waits for the request, so that it suspends before either
        // batch runs.
        "two-batches" => {
            let n: u64 = arg.as_deref().unwrap_or("0").parse()?;
            ctx.state().sums.resize(2, 0);
            ready();
            if arg2.as_deref() == Some("wait") {
                guest_sdk::wait_for_shutdown();
            }
            for part in 0..2 {
                if ctx.should_stop() {
                    return ctx.suspend();
                }
                for i in ctx.batch(0..n).save_every(Duration::from_millis(100)) {
                    ctx.state().sums[part] += i?;
                }
            }
            println!("sums {:?}", ctx.state().sums);
            Ok(Outcome::Completed)
        }
        // Walks 0..ARG dropping the batch's errors, `Stopped` among them (which job code
        // should never do), then returns `Completed`.
        "swallow" => {
            let n: u64 = arg.as_deref().unwrap_or("0").parse()?;
            ready();
            for i in ctx.batch(0..n).flatten() {
                ctx.state().runs = black_box(i as u32);
            }
            Ok(Outcome::Completed)
        }
        // Saves, then tries to save a NaN (which JSON cannot hold) and prints what the
        // save returned.
        "save-nan" => {
            ctx.state().note = "before".into();
            ctx.checkpoint()?;
            ctx.state().ratio = f64::NAN;
            match ctx.checkpoint() {
                Ok(()) => println!("save: ok"),
                Err(error) => println!("save: {:#}", anyhow!(error)),
            }
            Ok(Outcome::Completed)
        }
        // Appends `line N` for N in 1..=ARG to out.txt in the output directory through
        // a `BufWriter` of its own (the mistake `ctx.output` exists to avoid), in a batch
        // that saves every 100 lines.
        "own-bufwriter" => {
            let dir = std::env::var("RUNNER_OUTPUT_DIR")?;
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(std::path::Path::new(&dir).join("out.txt"))?;
            let mut out = std::io::BufWriter::new(file);
            let lines: u64 = arg.as_deref().unwrap_or("0").parse()?;
            for line in ctx.batch(1..=lines).save_every_items(100) {
                writeln!(out, "line {}", line?)?;
            }
            out.flush()?;
            Ok(Outcome::Completed)
        }
        // What sequence.wasm writes (the lines 1 to ARG, about 3 ms a line, saving every
        // 100), one unbuffered write per line: the lines after a save are on the file
        // at once, for the tests of what the runner undoes.
        "unbuffered" => {
            let dir = std::env::var("RUNNER_OUTPUT_DIR")?;
            let mut out = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(std::path::Path::new(&dir).join("out.txt"))?;
            let lines: u64 = arg.as_deref().unwrap_or("0").parse()?;
            let start = Instant::now();
            let mut first = None;
            for line in ctx.batch(1..=lines).save_every_items(100) {
                let line = line?;
                out.write_all(format!("{line}\n").as_bytes())?;
                let first = *first.get_or_insert(line);
                let due = start + Duration::from_millis(3 * (line + 1 - first));
                guest_sdk::sleep(due.saturating_duration_since(Instant::now()));
            }
            Ok(Outcome::Completed)
        }
        // Waits on a timer of 50 ms with `wait_for`, then (after `ready`) on one of an
        // hour, which only the stop request cuts short; says what woke it each time.
        "wait-for" => {
            use guest_sdk::__private::wasi::clocks::monotonic_clock::subscribe_duration;
            let woke = |woken: Option<usize>| match woken {
                Some(index) => println!("woken by pollable {index}"),
                None => println!("woken by the stop request"),
            };
            woke(guest_sdk::wait_for(&[&subscribe_duration(50_000_000)]));
            ready();
            woke(guest_sdk::wait_for(&[&subscribe_duration(
                3_600_000_000_000,
            )]));
            ctx.suspend()
        }
        // Appends ARG2 and a line break to ARG in the output directory, through
        // `ctx.output`, and completes.
        "output" => {
            let mut out = ctx.output(arg.as_deref().unwrap_or_default())?;
            writeln!(out, "{}", arg2.unwrap_or_default())?;
            Ok(Outcome::Completed)
        }
        // Reads the file ARG and prints its length.
        "read" => {
            let path = arg.unwrap_or_default();
            let bytes = std::fs::read(&path).with_context(|| format!("cannot read {path}"))?;
            println!("{} bytes", bytes.len());
            Ok(Outcome::Completed)
        }
        // Reports progress 3 of 10 and commits two checkpoints, then waits for the request;
        // on it, says so and stays two seconds (to be seen stopping), then suspends.
        "metrics" => {
            ctx.progress(3, 10);
            for note in ["first", "second"] {
                ctx.state().note = note.into();
                ctx.checkpoint()?;
            }
            ready();
            guest_sdk::wait_for_shutdown();
            report_stop("pollable");
            std::thread::sleep(Duration::from_secs(2));
            ctx.suspend()
        }
        // Writes ARG lines of 100 bytes to stdout (to stderr with ARG2 `stderr`), through
        // std's own buffering, and completes.
        "lines" => {
            let times: u64 = arg.as_deref().unwrap_or("100000").parse()?;
            let line = format!("{}\n", "x".repeat(99));
            let (mut out, mut err) = (std::io::stdout().lock(), std::io::stderr().lock());
            let to: &mut dyn Write = match arg2.as_deref() {
                Some("stderr") => &mut err,
                _ => &mut out,
            };
            for _ in 0..times {
                to.write_all(line.as_bytes())?;
            }
            Ok(Outcome::Completed)
        }
        // Reports progress ARG times, as fast as it can, and completes.
        "progress" => {
            let times: u64 = arg.as_deref().unwrap_or("1000000").parse()?;
            for done in 0..=times {
                ctx.progress(done, times);
            }
            Ok(Outcome::Completed)
        }
        // Writes what JSON logs must carry whole and in order: lines on both streams in
        // turn, a line in two writes, a long line of two-byte characters, bytes that are
        // not UTF-8, stderr lines around a progress report, and a last line with no end.
        "mixed-output" => {
            let (mut out, mut err) = (std::io::stdout(), std::io::stderr());
            for n in 1..=2 {
                writeln!(out, "out {n}")?;
                writeln!(err, "err {n}")?;
            }
            write!(out, "par")?;
            out.flush()?;
            writeln!(out, "tial")?;
            writeln!(out, "a{}", "é".repeat(10_000))?;
            err.write_all(b"bad \xff\xfe byte \\ here\n")?;
            writeln!(err, "before progress")?;
            ctx.progress(1, Some(2));
            writeln!(err, "after progress")?;
            write!(out, "no newline at the end")?;
            out.flush()?;
            Ok(Outcome::Completed)
        }
        "error" => Err(anyhow!("the disk is on fire").context("cannot write the report")),
        "trap" => panic!("the job panicked on purpose"),
        // The network through std (wasi-libc's sockets): says how each use went.
        // Connects to ARG, ARG2 times (default once), each connection closed at once.
        "net-connect" => {
            let address = arg.unwrap_or_default();
            let times: u32 = arg2.as_deref().unwrap_or("1").parse()?;
            let mut made = 0;
            for _ in 0..times {
                match std::net::TcpStream::connect(&address) {
                    Ok(_) => made += 1,
                    Err(error) => {
                        println!("connect to {address} failed: {error}");
                        break;
                    }
                }
            }
            if made > 0 {
                println!("connected to {address} {made} times");
            }
            Ok(Outcome::Completed)
        }
        "net-lookup" => {
            let host = arg.unwrap_or_default();
            match std::net::ToSocketAddrs::to_socket_addrs(&(host.as_str(), 80)) {
                Ok(found) => println!("lookup of {host}: {} addresses", found.count()),
                Err(error) => println!("lookup of {host} failed: {error}"),
            }
            Ok(Outcome::Completed)
        }
        "net-udp" => {
            let address = arg.unwrap_or_default();
            let sent = std::net::UdpSocket::bind("0.0.0.0:0")
                .and_then(|socket| socket.send_to(b"datagram", &address));
            match sent {
                Ok(_) => println!("sent to {address}"),
                Err(error) => println!("send to {address} failed: {error}"),
            }
            Ok(Outcome::Completed)
        }
        // Connects, then blocks reading a socket the other end never writes to.
        "net-read" => {
            let mut stream = std::net::TcpStream::connect(arg.unwrap_or_default())?;
            ready();
            let mut buffer = [0; 16];
            let read = stream.read(&mut buffer)?;
            println!("read {read} bytes");
            Ok(Outcome::Completed)
        }
        // Allocates and touches memory without end, 16 MiB at a time.
        "hog" => hog(),
        "exit" => guest_sdk::exit(arg.as_deref().unwrap_or("0").parse()?),
        "std-exit" =>
        {
            #[expect(clippy::exit, reason = "the test checks what std's exit reports")]
            std::process::exit(arg.as_deref().unwrap_or("0").parse()?)
        }
        "args" => {
            println!("args={:?}", std::env::args().collect::<Vec<_>>());
            println!("env={:?}", std::env::vars().collect::<Vec<_>>());
            Ok(Outcome::Completed)
        }
        other => Err(anyhow!("unknown mode `{other}`")),
    }
}
