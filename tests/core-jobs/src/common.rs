//! What both programs do alike.

use std::io::Write;

/// Prints `ready`, for the tests to wait for.
pub fn ready() {
    println!("ready");
    std::io::stdout().flush().expect("flush stdout");
}

/// Computes without end, never calling the host.
pub fn spin() -> ! {
    let mut x = 1u64;
    loop {
        x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
    }
}
