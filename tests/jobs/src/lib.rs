//! The job the integration tests run. `testjob.wasm MODE [ARG]` picks a behaviour; each
//! mode prints `ready` on stdout once it is in the state the test wants to interrupt.

use std::hint::black_box;
use std::io::{Read, Write};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use guest_sdk::{Ctx, Outcome, Result, anyhow::anyhow};

#[derive(Default, guest_sdk::serde::Serialize, guest_sdk::serde::Deserialize)]
#[serde(crate = "guest_sdk::serde")]
struct State {
    note: String,
    runs: u32,
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
    let left = guest_sdk::time_left().map_or(-1, |left| left.as_millis() as i64);
    println!(
        "stop seen by {how} at unix_ns={} reason={:?} time_left_ms={left}",
        unix_nanos(),
        guest_sdk::stop_reason()
    );
}

fn run(ctx: &mut Ctx<State>) -> Result<Outcome> {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_default();
    let arg = args.next();
    ctx.state.runs += 1;
    match mode.as_str() {
        // Prints the state it loaded, then completes.
        "show" => {
            println!("note={} runs={}", ctx.state.note, ctx.state.runs - 1);
            Ok(Outcome::Completed)
        }
        // Blocks on the shutdown pollable, then saves and suspends.
        "wait" => {
            ready();
            guest_sdk::wait_for_shutdown();
            report_stop("pollable");
            ctx.state.note = "suspended after wait".into();
            ctx.suspend()
        }
        // Sees the request on the pollable, then ignores it and sleeps an hour.
        "linger" => {
            ready();
            guest_sdk::wait_for_shutdown();
            report_stop("pollable");
            std::thread::sleep(Duration::from_secs(3600));
            Ok(Outcome::Completed)
        }
        // Computes, checking the flag, then saves and suspends.
        "flag" => {
            ready();
            let mut x = 0u64;
            while !ctx.should_stop() {
                x = black_box(x.wrapping_add(1));
            }
            report_stop("flag");
            ctx.state.note = "suspended after flag".into();
            ctx.suspend()
        }
        // Commits a checkpoint, then computes forever without looking at the request.
        "spin" => {
            ctx.state.note = "saved before spinning".into();
            ctx.checkpoint()?;
            ready();
            let mut x = 1u64;
            loop {
                x = black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
        }
        // Sleeps an hour in a host call, ignoring the request.
        "sleep" => {
            ready();
            std::thread::sleep(Duration::from_secs(3600));
            println!("slept");
            Ok(Outcome::Completed)
        }
        // Reads stdin to its end, ignoring the request.
        "stdin" => {
            ready();
            let mut input = Vec::new();
            std::io::stdin().read_to_end(&mut input)?;
            println!("read {} bytes", input.len());
            Ok(Outcome::Completed)
        }
        "error" => Err(anyhow!("the disk is on fire").context("cannot write the report")),
        "trap" => panic!("the job panicked on purpose"),
        "exit" => guest_sdk::exit(arg.as_deref().unwrap_or("0").parse()?),
        "std-exit" => std::process::exit(arg.as_deref().unwrap_or("0").parse()?),
        "args" => {
            println!("args={:?}", std::env::args().collect::<Vec<_>>());
            println!("env={:?}", std::env::vars().collect::<Vec<_>>());
            Ok(Outcome::Completed)
        }
        other => Err(anyhow!("unknown mode `{other}`")),
    }
}

guest_sdk::job!(run);
