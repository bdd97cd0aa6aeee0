//! A plain WASI preview 1 program, as `wasmtime run` runs it: `core-command.wasm [MODE
//! [ARG...]]`. It imports nothing of the runner's, so it cannot see a stop request.

use std::io::Read;
use std::time::Duration;

use common::{ready, spin};

mod common;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |i: usize| args.get(i).map(String::as_str).unwrap_or("");
    match arg(1) {
        "" => println!("hello from a wasip1 program"),
        "args" => println!("{}", args[2..].join("|")),
        "env" => match std::env::var(arg(2)) {
            Ok(value) => println!("{}={value}", arg(2)),
            Err(_) => println!("{} is not set", arg(2)),
        },
        // Reads the file ARG2 and writes it, upper-cased, to ARG3.
        "copy" => {
            let text = std::fs::read_to_string(arg(2)).expect("read the input");
            std::fs::write(arg(3), text.to_uppercase()).expect("write the output");
            println!("copied {} bytes", text.len());
        }
        "stderr" => eprintln!("to stderr"),
        "exit" => std::process::exit(arg(2).parse().expect("an exit code")),
        // Rust's panic in wasm32-wasip1 aborts: a trap.
        "trap" => panic!("the program panicked on purpose"),
        "hog" => {
            let mut kept = Vec::new();
            loop {
                kept.push(vec![1u8; 16 << 20]);
                println!("allocated {} MiB", kept.len() * 16);
            }
        }
        // Echoes stdin's lines, numbered, to its end.
        "stdin" => {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .expect("read stdin");
            for (n, line) in text.lines().enumerate() {
                println!("{}: {line}", n + 1);
            }
        }
        // Prints `ready`, then computes, sleeps (poll_oneoff) or reads stdin without end.
        "spin" => {
            ready();
            spin();
        }
        "sleep" => {
            ready();
            std::thread::sleep(Duration::from_secs(3600));
        }
        "read" => {
            ready();
            let mut byte = [0];
            let read = std::io::stdin().read(&mut byte).expect("read stdin");
            println!("read {read} bytes");
        }
        other => {
            eprintln!("unknown mode `{other}`");
            std::process::exit(2)
        }
    }
}
