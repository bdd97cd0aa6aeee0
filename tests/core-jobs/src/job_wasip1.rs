//! The job itself: wasm32-wasip1 only, where the imports link.
#![expect(unsafe_code, reason = "the ABI's imports are foreign functions")]

use std::time::{Duration, Instant};

use crate::common::{ready, spin};

#[link(wasm_import_module = "runner_job_v1")]
unsafe extern "C" {
    safe fn shutdown_requested() -> i32;
    safe fn shutdown_reason() -> i32;
    safe fn deadline() -> i64;
    safe fn wait_shutdown(timeout_ns: i64) -> i32;
    safe fn checkpoint_size() -> i64;
    fn checkpoint_load(ptr: *mut u8, len: i32) -> i32;
    fn checkpoint_save(ptr: *const u8, len: i32) -> i32;
    safe fn error_len() -> i32;
    fn error_copy(ptr: *mut u8, len: i32) -> i32;
    safe fn progress(done: i64, total: i64);
}

const SUSPENDED: i32 = 75;

/// The last failure's message.
fn error() -> String {
    let mut message = vec![0; error_len() as usize];
    // SAFETY: `message` is ours, and as long as the length given.
    let copied = unsafe { error_copy(message.as_mut_ptr(), message.len() as i32) };
    message.truncate(copied.max(0) as usize);
    String::from_utf8_lossy(&message).into_owned()
}

/// The last saved state, if any.
fn load() -> Option<Vec<u8>> {
    let size = checkpoint_size();
    if size < 0 {
        return None;
    }
    let mut state = vec![0; size as usize];
    // SAFETY: `state` is ours, and as long as the length given.
    let code = unsafe { checkpoint_load(state.as_mut_ptr(), state.len() as i32) };
    assert_eq!(code, 0, "checkpoint_load: {}", error());
    Some(state)
}

/// Saves `state`; exits 1 if the save fails.
#[expect(
    clippy::exit,
    reason = "a job that cannot save ends there, as the C job does"
)]
fn save(state: &[u8]) {
    // SAFETY: `state` is ours, and as long as the length given.
    let code = unsafe { checkpoint_save(state.as_ptr(), state.len() as i32) };
    if code != 0 {
        eprintln!("cannot save ({code}): {}", error());
        std::process::exit(1);
    }
}

/// Some computing for item `i`: its share of the count.
fn work(i: u64) -> u64 {
    let mut x = i;
    for _ in 0..100_000 {
        x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
    }
    i + (x & 1)
}

pub fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |i: usize| args.get(i).map(String::as_str).unwrap_or("");
    match arg(1) {
        // Counts `work(i)` over 0..N, saving every 100 ms: `count N: SUM`.
        "count" => {
            let n: u64 = arg(2).parse().expect("a count");
            let (mut next, mut sum) = match load() {
                Some(state) => (
                    u64::from_le_bytes(state[..8].try_into().expect("8 bytes")),
                    u64::from_le_bytes(state[8..16].try_into().expect("8 bytes")),
                ),
                None => (0, 0),
            };
            let state = |next: u64, sum: u64| [next.to_le_bytes(), sum.to_le_bytes()].concat();
            save(&state(next, sum));
            ready();
            let mut saved = Instant::now();
            while next < n {
                if shutdown_requested() != 0 {
                    save(&state(next, sum));
                    std::process::exit(SUSPENDED);
                }
                sum += work(next);
                next += 1;
                if saved.elapsed() >= Duration::from_millis(100) {
                    save(&state(next, sum));
                    progress(next as i64, n as i64);
                    saved = Instant::now();
                }
            }
            println!("count {n}: {sum}");
        }
        // A job that never looks at the request: computes, or sleeps.
        "ignore" => {
            ready();
            spin();
        }
        "sleep" => {
            ready();
            std::thread::sleep(Duration::from_secs(3600));
        }
        // Waits for the request, says what it sees, and suspends without saving.
        "wait" => {
            let before = (shutdown_requested(), shutdown_reason(), deadline());
            println!("before: {before:?}");
            ready();
            println!("woken: {}", wait_shutdown(-1));
            // On the clock the job reads, within the grace the tests give (30 s).
            let left = deadline() - libc_monotonic_now();
            println!(
                "reason {}, requested {}, deadline within 30 s: {}, timed wait: {}",
                shutdown_reason(),
                shutdown_requested(),
                left > 0 && left <= 30_000_000_000,
                wait_shutdown(1_000_000_000)
            );
            std::process::exit(SUSPENDED);
        }
        "timeout" => println!("timed out: {}", wait_shutdown(50_000_000) == 0),
        // Sees the request, then goes on computing or sleeping: a second signal must
        // stop it at once.
        "linger" => {
            ready();
            wait_shutdown(-1);
            println!("stop seen");
            std::io::Write::flush(&mut std::io::stdout()).expect("flush stdout");
            match arg(2) {
                "spin" => spin(),
                _ => std::thread::sleep(Duration::from_secs(3600)),
            }
        }
        // The ABI's edge cases, one line each.
        "abi" => {
            println!("size before a save: {}", checkpoint_size());
            let mut buffer = [0u8; 8];
            // SAFETY: `buffer` is ours, and as long as the length given.
            let code = unsafe { checkpoint_load(buffer.as_mut_ptr(), 8) };
            println!("load without a checkpoint: {code} ({})", error());
            // SAFETY: the runner checks the region; nothing of ours is touched.
            let code = unsafe { checkpoint_save(usize::MAX as *const u8, 16) };
            println!("save outside memory: {code} ({})", error());
            // SAFETY: as above.
            let code = unsafe { checkpoint_save(buffer.as_ptr(), -1) };
            println!("save of a negative length: {code}");
            save(b"hello");
            println!("size after a save: {}", checkpoint_size());
            // SAFETY: `buffer` is ours, and as long as the length given.
            let code = unsafe { checkpoint_load(buffer.as_mut_ptr(), 8) };
            println!("load into 8 bytes: {code} ({})", error());
            println!("load: {:?}", String::from_utf8(load().expect("a state")));
            // SAFETY: `buffer` is ours; 3 bytes of it.
            let copied = unsafe { error_copy(buffer.as_mut_ptr(), 3) };
            println!("error_copy of 3: {copied} {:?}", &buffer[..3]);
            // SAFETY: the runner checks the regions; nothing of ours is touched.
            let (copied, loaded) = unsafe {
                (
                    error_copy(usize::MAX as *mut u8, 3),
                    checkpoint_load(usize::MAX as *mut u8, 5),
                )
            };
            println!("outside memory: error_copy {copied}, load {loaded}");
            progress(5, -1);
            progress(7, 10);
        }
        "exit" => std::process::exit(arg(2).parse().expect("an exit code")),
        other => {
            eprintln!("unknown mode `{other}`");
            std::process::exit(2)
        }
    }
}

/// CLOCK_MONOTONIC in nanoseconds, the clock `deadline` counts on: in Rust's std,
/// `Instant` reads it but does not show its value, so through WASI directly.
fn libc_monotonic_now() -> i64 {
    #[link(wasm_import_module = "wasi_snapshot_preview1")]
    unsafe extern "C" {
        fn clock_time_get(id: u32, precision: u64, time: *mut u64) -> u16;
    }
    let mut time = 0u64;
    // SAFETY: `time` is ours; clock 1 is the monotonic clock.
    let errno = unsafe { clock_time_get(1, 1, &mut time) };
    assert_eq!(errno, 0, "clock_time_get");
    time as i64
}
