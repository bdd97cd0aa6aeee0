//! `count-primes LIMIT`: the primes example's counting code (examples/primes/src/count.rs)
//! in a plain loop, with no job around it. The benchmark builds it natively and as a
//! `wasi:cli/command` component, and prints the example's line:
//! `primes below LIMIT: COUNT`.

#[path = "../../../../examples/primes/src/count.rs"]
mod count;

fn main() {
    let limit: u64 = match std::env::args().nth(1).map(|arg| arg.parse()) {
        Some(Ok(limit)) => limit,
        _ => {
            eprintln!("usage: count-primes LIMIT");
            std::process::exit(2)
        }
    };
    let mut primes = 0u64;
    for n in 0..limit {
        if count::is_prime(n) {
            primes += 1;
        }
    }
    println!("primes below {limit}: {primes}");
}
