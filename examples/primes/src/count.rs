//! The counting itself, apart from the job around it, so that the benchmark
//! (`bench/`) runs this very code natively and as a plain WASI command.

/// Whether `n` is prime, by trial division by 2, 3 and the numbers 6k ± 1.
pub fn is_prime(n: u64) -> bool {
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
