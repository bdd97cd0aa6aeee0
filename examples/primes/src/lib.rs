//! `primes.wasm [LIMIT]`: counts the primes below LIMIT by trial division, a
//! deliberately CPU-bound job. It checkpoints about once a second, and when stopped and
//! run again it resumes and prints the same line an uninterrupted run prints:
//! `primes below LIMIT: COUNT`.

use std::time::Duration;

use guest_sdk::{Ctx, Outcome, Result, anyhow::bail};

/// About 20 seconds on a 2-core machine of 2026.
const DEFAULT_LIMIT: u64 = 70_000_000;
/// Numbers checked between two looks at the shutdown flag: about a millisecond of
/// work near the default limit.
const CHUNK: u64 = 1_000;

#[derive(Default, guest_sdk::serde::Serialize, guest_sdk::serde::Deserialize)]
#[serde(crate = "guest_sdk::serde")]
struct State {
    limit: u64,
    next: u64,
    count: u64,
}

fn run(ctx: &mut Ctx<State>) -> Result<Outcome> {
    let limit = match std::env::args().nth(1) {
        Some(arg) => arg
            .parse()
            .map_err(|_| guest_sdk::anyhow::anyhow!("LIMIT `{arg}` is not a whole number"))?,
        None => DEFAULT_LIMIT,
    };
    if ctx.resumed() {
        if ctx.state.limit != limit {
            bail!(
                "the checkpoint counts primes below {}, not {limit}: use another --job-id",
                ctx.state.limit
            );
        }
        eprintln!(
            "primes: resuming at {} with {} primes found",
            ctx.state.next, ctx.state.count
        );
    } else {
        ctx.state.limit = limit;
    }
    while ctx.state.next < limit {
        if ctx.should_stop() {
            return ctx.suspend();
        }
        let end = limit.min(ctx.state.next + CHUNK);
        ctx.state.count += (ctx.state.next..end).filter(|&n| is_prime(n)).count() as u64;
        ctx.state.next = end;
        ctx.progress(end, Some(limit));
        ctx.checkpoint_every(Duration::from_secs(1))?;
    }
    println!("primes below {limit}: {}", ctx.state.count);
    Ok(Outcome::Completed)
}

fn is_prime(n: u64) -> bool {
    if n < 4 {
        return n >= 2;
    }
    if n.is_multiple_of(2) || n.is_multiple_of(3) {
        return false;
    }
    let mut d = 5;
    while d * d <= n {
        if n.is_multiple_of(d) || n.is_multiple_of(d + 2) {
            return false;
        }
        d += 6;
    }
    true
}

guest_sdk::job!(run);
