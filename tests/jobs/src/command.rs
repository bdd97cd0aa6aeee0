//! A plain `wasi:cli/command`, as `wasmtime run` runs it: `command.wasm [MODE [ARG]]`.
//! It cannot see the runner's stop request.

use std::io::Write;
use std::time::Duration;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        None => println!("hello from a wasi:cli/command"),
        // Prints `ready`, then computes, or sleeps, without end.
        Some(mode @ ("spin" | "sleep")) => {
            println!("ready");
            std::io::stdout().flush().expect("flush stdout");
            if mode == "sleep" {
                std::thread::sleep(Duration::from_secs(3600));
            }
            let mut x = 1u64;
            loop {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
        }
        Some("exit") => {
            std::process::exit(args.get(2).and_then(|code| code.parse().ok()).unwrap_or(0))
        }
        Some(other) => {
            eprintln!("unknown mode `{other}`");
            std::process::exit(2)
        }
    }
}
