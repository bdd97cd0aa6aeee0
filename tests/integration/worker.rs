//! The queue-worker pattern (`examples/worker`): a stateless job that takes messages
//! until it is stopped, finishes the one it holds, and suspends without claiming to have
//! saved anything.

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use test_guests::WORKER;

use crate::util::{Running, SIGTERM, Sandbox, run, wait_until};

/// Puts message `name` holding `text` into the queue's inbox, whole.
fn send(queue: &Path, name: &str, text: &str) {
    let staged = queue.join(format!("{name}.staged"));
    fs::write(&staged, text).expect("write message");
    fs::rename(&staged, queue.join("inbox").join(name)).expect("move message in");
}

/// The results in the queue's `done`, by name.
fn results(queue: &Path) -> Vec<(String, String)> {
    let mut results: Vec<(String, String)> = fs::read_dir(queue.join("done"))
        .map(|entries| {
            entries
                .map(|entry| entry.expect("entry").path())
                .filter(|path| {
                    !path
                        .file_name()
                        .expect("name")
                        .to_string_lossy()
                        .starts_with('.')
                })
                .map(|path| {
                    let name = path
                        .file_name()
                        .expect("name")
                        .to_string_lossy()
                        .into_owned();
                    (name, fs::read_to_string(&path).expect("read result"))
                })
                .collect()
        })
        .unwrap_or_default();
    results.sort();
    results
}

/// `worker.wasm /queue ARGS` with `queue` as `/queue`.
fn worker(sandbox: &Sandbox, queue: &Path, args: &[&str]) -> Command {
    let mut command = sandbox.runner();
    command
        .arg("--dir")
        .arg(format!("{}::/queue", queue.display()))
        .args([WORKER, "/queue"])
        .args(args);
    command
}

/// A queue directory with its three folders.
fn queue(sandbox: &Sandbox) -> std::path::PathBuf {
    let queue = sandbox.path().join("queue");
    for dir in ["inbox", "work", "done"] {
        fs::create_dir_all(queue.join(dir)).expect("mkdir");
    }
    queue
}

/// A worker takes messages as they come, wakes from its wait for more the moment it is
/// asked to stop, and exits 75 saying it saved no state (and saves none).
#[test]
fn a_worker_handles_messages_until_stopped_and_saves_nothing() {
    let sandbox = Sandbox::new();
    let queue = queue(&sandbox);
    send(&queue, "001", "first");
    send(&queue, "002", "second");
    let running = Running::start(&mut worker(&sandbox, &queue, &[]), Stdio::null());
    running.wait_for_line("handled 002");
    send(&queue, "003", "third");
    running.wait_for_line("handled 003");
    // Now waiting for more.
    let asked = Instant::now();
    running.signal(SIGTERM);
    let stopped = running.wait();
    let took = asked.elapsed();
    stopped
        .assert_code(75)
        .assert_stderr("job suspended on request; it saved no state");
    assert!(
        !stopped.stderr.contains("state is saved"),
        "{}",
        stopped.stderr
    );
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert_eq!(sandbox.checkpoint("worker"), None);
    assert_eq!(
        results(&queue),
        [("001", "FIRST"), ("002", "SECOND"), ("003", "THIRD")]
            .map(|(name, text)| (name.to_owned(), text.to_owned()))
    );
}

/// A stop that comes while the worker handles a message lets it finish that message;
/// one a killed run had claimed is handled by the next; `--drain` completes once the
/// inbox is empty.
#[test]
fn a_worker_finishes_the_message_it_holds_and_drains_on_request() {
    let sandbox = Sandbox::new();
    let queue = queue(&sandbox);
    for n in 1..=20 {
        send(&queue, &format!("{n:03}"), &format!("message {n}"));
    }
    let running = Running::start(&mut worker(&sandbox, &queue, &[]), Stdio::null());
    running.wait_for_line("handled 001");
    // Each message takes 200 ms: the stop comes while one is in hand.
    wait_until("a message in hand", || {
        (fs::read_dir(queue.join("work/0")).ok()?.count() > 0).then_some(())
    });
    running.signal(SIGTERM);
    running.wait().assert_code(75);
    assert_eq!(fs::read_dir(queue.join("work/0")).expect("work").count(), 0);
    let handled = results(&queue).len();
    assert!((2..20).contains(&handled), "{handled} handled");

    // A message a killed run had claimed.
    fs::rename(queue.join("inbox/020"), queue.join("work/0/020")).expect("claim");
    let drained = run(&mut worker(&sandbox, &queue, &["--drain"]));
    drained.assert_code(0);
    let results = results(&queue);
    assert_eq!(results.len(), 20, "{results:?}");
    for (n, (name, text)) in (1..=20).zip(&results) {
        assert_eq!(
            (name.as_str(), text.as_str()),
            (format!("{n:03}").as_str(), format!("MESSAGE {n}").as_str())
        );
    }
}
