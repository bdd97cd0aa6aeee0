//! The JavaScript SDK as job authors use it: the example, built from source with the
//! SDK's build command, gives the answers of its Rust and Python twins and resumes the
//! same way; the TypeScript test job keeps a typed state across stops, turns exceptions
//! into messages with the job's own files and lines, and is stopped at the deadline when
//! it ignores the request.

use std::fs;
use std::process::Stdio;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use test_guests::{JS_TESTJOB, JS_WORDCOUNT, PYTHON_WORDCOUNT, WORDCOUNT};

use crate::resume::{big_input, run_with_stops, wordcount_stopped_twice};
use crate::sdk::{tricky_input, wordcount_args};
use crate::util::{
    Running, SIGKILL, SIGTERM, Sandbox, assert_forced_after_grace, run, sdk_state, state_field,
};

#[test]
fn js_wordcount_prints_what_the_rust_and_python_wordcounts_print() {
    let sandbox = Sandbox::new();
    let input = tricky_input(&sandbox);
    // Words that name what every JavaScript object has.
    fs::write(
        input.join("object.txt"),
        "constructor toString hasOwnProperty valueOf constructor __proto__ prototype Constructor\n",
    )
    .expect("write");
    let dir = format!("{}::/input", input.display());
    let mut outputs = Vec::new();
    for (id, job) in [
        ("rust", WORDCOUNT),
        ("python", PYTHON_WORDCOUNT),
        ("js", JS_WORDCOUNT),
    ] {
        let done = run(sandbox
            .runner()
            .args(["--job-id", id])
            .args(wordcount_args(job, &dir, "100")));
        done.assert_code(0);
        outputs.push(done.stdout);
    }
    assert_eq!(outputs[2], outputs[0], "JavaScript against Rust");
    assert_eq!(outputs[2], outputs[1], "JavaScript against Python");
    // What the engine (SpiderMonkey without ICU) gets wrong by itself: `\p{L}` does
    // not parse, and a final capital sigma lower-cases to "σ".
    assert!(outputs[2].contains("       2 σίσυφος\n"), "{}", outputs[2]);
}

#[test]
fn js_wordcount_stopped_and_resumed_prints_what_an_uninterrupted_run_prints() {
    let sandbox = Sandbox::new();
    // About 7 MB: some 6 s of counting for the JavaScript job (an interpreter: about a
    // fifth of the Python job's speed), which saves every second.
    let input = big_input(&sandbox, 50_000);
    let output = wordcount_stopped_twice(
        &sandbox,
        JS_WORDCOUNT,
        &input,
        "1500000 words, 500 distinct, in 3 files",
    );
    let dir = format!("{}::/input", input.display());
    for (id, job) in [("rust", WORDCOUNT), ("python", PYTHON_WORDCOUNT)] {
        let twin = run(sandbox
            .runner()
            .args(["--job-id", id])
            .args(wordcount_args(job, &dir, "5")));
        assert_eq!(output, twin.stdout, "{id}");
    }
    // The checkpoint is the SDKs' envelope, with the cursor of `Lines`: at the end of
    // the last file.
    let saved = sandbox.checkpoint("split").expect("a checkpoint");
    let envelope: serde_json::Value = serde_json::from_slice(&saved.payload).expect("JSON");
    assert_eq!(envelope["job"], "js:wordcount", "{envelope}");
    let last = fs::metadata(input.join("nested/c.txt"))
        .expect("c.txt")
        .len();
    assert_eq!(
        (
            state_field(&saved.payload, "/batches/0/file"),
            state_field(&saved.payload, "/batches/0/offset")
        ),
        (2, last)
    );
}

/// `Lines` gives the file's lines as its bytes hold them, wherever its reads of 64 KiB
/// end: inside a character, between `\r` and `\n`, at the start of a line that begins
/// with a byte order mark (kept, as in Rust and Python); bytes that are not UTF-8 become
/// U+FFFD; the last line may lack its newline.
#[test]
fn js_lines_are_the_lines_of_the_bytes_wherever_a_read_ends() {
    const READ: usize = 64 * 1024;
    let sandbox = Sandbox::new();
    let mut bytes = "\u{feff}first line\r\n".as_bytes().to_vec();
    let pad_to = |bytes: &mut Vec<u8>, at: usize| {
        while bytes.len() < at - 100 {
            bytes.extend_from_slice(b"filler words, and more of them\n");
        }
        bytes.extend(std::iter::repeat_n(b'x', at - bytes.len()));
    };
    // "é" across the first read's end, `\r\n` across the second's, a line with a byte
    // order mark starting the fourth.
    pad_to(&mut bytes, READ - 1);
    bytes.extend_from_slice("é and on\n".as_bytes());
    pad_to(&mut bytes, 2 * READ - 1);
    bytes.extend_from_slice(b"\r\n");
    pad_to(&mut bytes, 3 * READ - 1);
    bytes.extend_from_slice(b"\n");
    bytes.extend_from_slice("\u{feff}marked\n".as_bytes());
    bytes.extend_from_slice(b"bad \xff\xfe bytes \xe2\x82 cut\r in the middle\n");
    bytes.extend_from_slice("no newline at the end: ✓".as_bytes());
    let data = sandbox.path().join("data");
    fs::create_dir_all(&data).expect("mkdir");
    fs::write(data.join("lines.txt"), &bytes).expect("write");

    let done = run(sandbox
        .runner()
        .arg("--dir")
        .arg(format!("{}::/data", data.display()))
        .args([JS_TESTJOB, "lines", "/data/lines.txt"]));
    done.assert_code(0);
    let mut expected = String::new();
    let mut lines: Vec<&[u8]> = bytes.split(|&b| b == b'\n').collect();
    let last = lines.pop().expect("a last line");
    for line in lines {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        expected += &format!(
            "{}\n",
            serde_json::Value::from(String::from_utf8_lossy(line))
        );
    }
    expected += &format!(
        "{}\n",
        serde_json::Value::from(String::from_utf8_lossy(last))
    );
    let differ = done
        .stdout
        .lines()
        .zip(expected.lines())
        .position(|(got, want)| got != want);
    assert!(
        done.stdout == expected,
        "the lines differ from line {differ:?} on (of {} and {})",
        done.stdout.lines().count(),
        expected.lines().count()
    );
}

/// The build command as a user runs it: from any directory (here `/`), on a job whose
/// name has a space, in TypeScript importing a module of its own; a stack names that
/// module's lines; a job that does not type-check is refused with TypeScript's message;
/// and no build leaves its scratch files behind.
#[test]
fn the_build_command_builds_a_typescript_job_from_anywhere_and_cleans_up() {
    let sandbox = Sandbox::new();
    let dir = sandbox.path().join("my jobs");
    let scratch = sandbox.path().join("tmp");
    fs::create_dir_all(&dir).expect("mkdir");
    fs::create_dir_all(&scratch).expect("mkdir");
    let helper = "export function check(word: string): string {\n  if (word === \"bad\") {\n    throw new RangeError(`bad word: ${word}`);\n  }\n  return word.toUpperCase();\n}\n";
    fs::write(dir.join("helper.ts"), helper).expect("write");
    fs::write(
        dir.join("shout it.ts"),
        "import { args, job } from \"runner-job\";\nimport { check } from \"./helper\";\n\nexport const run = job(() => {\n  console.log(check(args()[1] ?? \"\"));\n});\n",
    )
    .expect("write");
    let build = |job: &str, output: &std::path::Path| {
        let sdk = concat!(env!("CARGO_MANIFEST_DIR"), "/../guest-sdk/js/build-job.mjs");
        std::process::Command::new("node")
            .current_dir("/")
            .env("TMPDIR", &scratch)
            .arg(sdk)
            .arg(dir.join(job))
            .arg("-o")
            .arg(output)
            .output()
            .expect("run node")
    };
    let wasm = sandbox.path().join("shout.wasm");
    let built = build("shout it.ts", &wasm);
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let wasm = wasm.to_str().expect("a UTF-8 path");
    let shouted = run(sandbox.runner().args(["--job-id", "one", wasm, "quiet"]));
    shouted.assert_code(0);
    assert_eq!(shouted.stdout, "QUIET\n");
    let thrown = run(sandbox.runner().args(["--job-id", "two", wasm, "bad"]));
    thrown
        .assert_code(1)
        .assert_stderr("RangeError: bad word: bad\n    at check@helper.ts:3:")
        .assert_stderr("@shout it.ts:5:");

    fs::write(
        dir.join("wrong.ts"),
        "import { job } from \"runner-job\";\nexport const run = job(() => {\n  const n: number = \"one\";\n  console.log(n);\n});\n",
    )
    .expect("write");
    let refused = build("wrong.ts", &sandbox.path().join("wrong.wasm"));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "wrong.ts(3,9): error TS2322: Type 'string' is not assignable to type 'number'."
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains("wrong.ts does not compile (TypeScript 5.9.3)"),
        "{stderr}"
    );
    assert!(!sandbox.path().join("wrong.wasm").exists());
    let left: Vec<_> = fs::read_dir(&scratch).expect("read tmp").collect();
    assert!(left.is_empty(), "the builds left {left:?}");
}

/// The line of `text` (from 1) holding `needle`.
fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|line| line.contains(needle))
        .unwrap_or_else(|| panic!("no `{needle}`"))
        + 1
}

#[test]
fn a_js_exception_fails_the_run_with_its_stack_in_the_jobs_own_files() {
    let sandbox = Sandbox::new();
    let source = include_str!("../jobs/js/testjob.ts");
    let thrown = run(sandbox.runner().args([JS_TESTJOB, "throw", "no header"]));
    thrown
        .assert_code(1)
        .assert_stderr("runner: job failed: TypeError: the input is bad: no header\n")
        // The TypeScript source's lines, through the TypeScript and bundle source maps.
        .assert_stderr(&format!(
            "    at fail@testjob.ts:{}:",
            line_of(source, "throw new TypeError")
        ))
        .assert_stderr(&format!("@testjob.ts:{}:", line_of(source, "fail(rest[0]")));
    assert!(
        !thrown.stderr.contains("initializer.js"),
        "{}",
        thrown.stderr
    );

    let usage = run(sandbox.runner().arg(JS_WORDCOUNT));
    usage
        .assert_code(1)
        .assert_stderr("runner: job failed: Error: usage: wordcount.wasm DIR [TOP]\n");
    // An error's cause is shown under it.
    let nowhere = run(sandbox.runner().args([JS_WORDCOUNT, "/nowhere"]));
    nowhere
        .assert_code(1)
        .assert_stderr("Error: cannot list /nowhere (did you pass --dir HOST::/nowhere?)\n")
        .assert_stderr(
            "Caused by: Error: /nowhere: no directory given to the job holds it (did you pass --dir?)",
        );
    let exit = run(sandbox.runner().args([JS_TESTJOB, "exit", "42"]));
    exit.assert_code(42);
}

#[test]
fn a_js_job_that_ignores_the_request_is_stopped_at_the_deadline() {
    // Computing (the epoch interrupts it) and blocked in a host call (dropped).
    assert_forced_after_grace(JS_TESTJOB, "spin", SIGTERM, 143, Stdio::null());
    assert_forced_after_grace(JS_TESTJOB, "block", SIGTERM, 143, Stdio::null());
}

#[test]
fn a_typescript_job_keeps_its_typed_state_across_stops() {
    const N: u64 = 2_000_000;
    let sandbox = Sandbox::new();
    let args = [JS_TESTJOB, "sum", "2000000"];
    let output = run_with_stops(&sandbox, "sum", &args, 2, &["/batches/0"]);
    // The last run prints `ready`, then the sum of the whole range.
    assert_eq!(output, format!("ready\nsum {}\n", N * (N - 1) / 2));
    let saved = sandbox.checkpoint("sum").expect("a checkpoint");
    assert_eq!(
        sdk_state(&saved.payload),
        format!("{{\"sum\":{}}}", N * (N - 1) / 2)
    );
    assert_eq!(state_field(&saved.payload, "/batches/0"), N);

    // Another job's checkpoint is refused, naming the job that saved it.
    let waiting = Running::start(
        sandbox
            .runner()
            .args(["--job-id", "shared", JS_TESTJOB, "wait"]),
        Stdio::null(),
    );
    waiting.wait_for_line("ready");
    waiting.signal(SIGTERM);
    waiting.wait().assert_code(75);
    let other = run(sandbox
        .runner()
        .args(["--job-id", "shared", JS_WORDCOUNT, "/input"]));
    other.assert_code(1).assert_stderr(
        "the checkpoint was saved by another job (`js:testjob`), not by this one (`js:wordcount`)",
    );
}

/// The output written through `ctx.output` (buffered in the job, written before each
/// save) ends up in the output directory exactly once, in order, whether the runs are
/// stopped with SIGTERM or killed with SIGKILL at a random moment.
#[test]
fn js_output_is_written_exactly_once_through_stops_and_kills() {
    // About 9 s of writing (3 ms a line): more than the six interrupted runs take.
    const LINES: u64 = 3000;
    let sandbox = Sandbox::new();
    // The first compile, out of the way of the stops.
    run(sandbox
        .runner()
        .args(["--job-id", "warm", JS_TESTJOB, "exit", "0"]));
    let command = || {
        let mut command = sandbox.runner();
        command
            .args(["--job-id", "sequence", "--output"])
            .arg(sandbox.output_dir())
            .args([JS_TESTJOB, "sequence", &LINES.to_string()]);
        command
    };
    let mut rng = StdRng::seed_from_u64(23);
    let mut last = 0;
    for round in 0..6 {
        let mut running = Running::start(&mut command(), Stdio::null());
        last = sandbox
            .wait_for_checkpoint_after(&mut running, "sequence", last)
            .sequence;
        std::thread::sleep(Duration::from_millis(rng.random_range(0..400)));
        let signal = if round % 2 == 0 { SIGKILL } else { SIGTERM };
        running.signal(signal);
        let done = running.wait();
        if signal == SIGTERM {
            done.assert_code(75);
        }
        sandbox.assert_sequence_consistent();
        last = sandbox
            .checkpoint("sequence")
            .map_or(last, |record| record.sequence);
    }
    run(&mut command()).assert_code(0);
    let check = sandbox.check_sequence_output(LINES);
    assert!(check.is_exact(LINES), "{check:?}");
    assert!(
        fs::read_to_string(sandbox.output_dir().join("out.txt"))
            .expect("out.txt")
            .ends_with(&format!("\n{LINES}\n"))
    );
}
