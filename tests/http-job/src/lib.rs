//! `httpjob.wasm URL [wait|block]`: a job that sends a GET for URL through `wasi:http`
//! and prints the response's status and body. It prints `ready` once the request is
//! sent; then it waits for the response or the stop request (`wait`, the default: on
//! the stop it says so and suspends), or for the response alone (`block`: the
//! deadline stops it).

use std::io::Write;

use guest_sdk::{Ctx, Outcome, Result};

mod http;

#[guest_sdk::job]
fn run(ctx: &mut Ctx) -> Result<Outcome> {
    let mut args = std::env::args().skip(1);
    let url = args.next().unwrap_or_default();
    let pending = match http::get(&url) {
        Ok(pending) => pending,
        Err(error) => {
            println!("request failed: {error}");
            return Ok(Outcome::Completed);
        }
    };
    println!("ready");
    std::io::stdout().flush()?;
    if args.next().as_deref() == Some("block") {
        pending.subscribe().block();
    } else if guest_sdk::wait_for(&[&pending.subscribe()]).is_none() {
        println!("stop seen while waiting for the response");
        return ctx.suspend();
    }
    match http::read(&pending) {
        Ok((status, body)) => {
            println!("status {status}, {} bytes", body.len());
            println!("{}", String::from_utf8_lossy(&body).trim_end());
        }
        Err(error) => println!("request failed: {error}"),
    }
    Ok(Outcome::Completed)
}
