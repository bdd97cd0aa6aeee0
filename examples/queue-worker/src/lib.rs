//! `queue-worker.wasm [--drain]`: a worker that takes messages from a Redis list with
//! the reliable-queue pattern, and finishes the message it holds when asked to stop.
//!
//! Run it with the network it needs and nothing more:
//! `runner --allow-net 127.0.0.1:6379 --env REDIS_ADDR=127.0.0.1:6379 queue-worker.wasm`.
//! `REDIS_ADDR` is HOST:PORT (default `127.0.0.1:6379`), `QUEUE` the list's key
//! (default `jobs`), `WORKER_ID` this worker's name, else `JOB_COMPLETION_INDEX` (a
//! Kubernetes Indexed Job's, which a replacement pod keeps), else `0`.
//!
//! A message is moved, atomically, from `QUEUE` to the worker's own processing list
//! `QUEUE:processing:ID` (BLMOVE), handled, and only then removed from there (LREM):
//! the acknowledgement. A worker killed while it held a message finds it in its
//! processing list when it starts again, and handles it again: at least once. The
//! handling here is a stand-in: it counts the message in the hash `QUEUE:processed`
//! (HINCRBY), so that a message handled twice shows as a 2.
//!
//! When the runner asks it to stop, it finishes the message it holds and returns
//! `Suspended` (75): run it again to go on. It waits for messages at most a second at a
//! time, then looks at the request. With `--drain` it returns `Completed` once the queue
//! is empty (a Kubernetes Job that empties a queue); without, it waits for more until it
//! is stopped (a Deployment).

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

use guest_sdk::anyhow::{Context, anyhow, bail};
use guest_sdk::{Ctx, Outcome, Result};

/// How long one wait for a message lasts, in seconds: how late a stop request may be
/// seen by a worker waiting on an empty queue.
const WAIT_SECONDS: &str = "1";

#[guest_sdk::job]
fn queue_worker(ctx: &mut Ctx) -> Result<Outcome> {
    let drain = std::env::args().nth(1).as_deref() == Some("--drain");
    let address = std::env::var("REDIS_ADDR").unwrap_or_else(|_| "127.0.0.1:6379".to_owned());
    let queue = std::env::var("QUEUE").unwrap_or_else(|_| "jobs".to_owned());
    let id = std::env::var("WORKER_ID")
        .or_else(|_| std::env::var("JOB_COMPLETION_INDEX"))
        .unwrap_or_else(|_| "0".to_owned());
    let processing = format!("{queue}:processing:{id}");
    let mut redis = Redis::connect(&address)?;

    // Taken by a run of this worker that was killed before it acknowledged them.
    for message in redis.strings(&["LRANGE", &processing, "0", "-1"])? {
        handle(&mut redis, &queue, &processing, &message)?;
    }
    loop {
        if ctx.should_stop() {
            return ctx.suspend();
        }
        let taken = redis.reply(&["BLMOVE", &queue, &processing, "LEFT", "RIGHT", WAIT_SECONDS])?;
        match taken {
            Reply::Bulk(Some(message)) => {
                // Finished even if a stop was asked meanwhile: the grace period is for it.
                handle(
                    &mut redis,
                    &queue,
                    &processing,
                    &String::from_utf8_lossy(&message),
                )?;
            }
            // Nothing came within the wait (Redis says so with a null array).
            Reply::Array(None) | Reply::Bulk(None) if drain => return Ok(Outcome::Completed),
            Reply::Array(None) | Reply::Bulk(None) => {}
            other => bail!("BLMOVE answered {other:?}"),
        }
    }
}

/// Handles `message` (the stand-in: counts it), then acknowledges it.
fn handle(redis: &mut Redis, queue: &str, processing: &str, message: &str) -> Result<()> {
    std::thread::sleep(Duration::from_millis(10));
    redis.reply(&["HINCRBY", &format!("{queue}:processed"), message, "1"])?;
    match redis.reply(&["LREM", processing, "1", message])? {
        Reply::Integer(1) => {}
        other => bail!("acknowledging {message}: LREM answered {other:?}, not 1"),
    }
    println!("handled {message}");
    Ok(())
}

/// A Redis connection, speaking RESP2: enough for the commands above.
struct Redis {
    stream: BufReader<TcpStream>,
}

#[derive(Debug)]
enum Reply {
    /// `+OK` and the like.
    Status,
    Integer(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Reply>>),
}

impl Redis {
    fn connect(address: &str) -> Result<Redis> {
        let stream = TcpStream::connect(address)
            .with_context(|| format!("cannot connect to Redis at {address}"))?;
        Ok(Redis {
            stream: BufReader::new(stream),
        })
    }

    /// Sends `command` and reads its reply; an error reply is an error.
    fn reply(&mut self, command: &[&str]) -> Result<Reply> {
        let mut request = format!("*{}\r\n", command.len()).into_bytes();
        for part in command {
            request.extend_from_slice(format!("${}\r\n{part}\r\n", part.len()).as_bytes());
        }
        self.stream
            .get_mut()
            .write_all(&request)
            .context("cannot send to Redis")?;
        self.read().with_context(|| format!("Redis {}", command[0]))
    }

    /// The reply to `command`, an array of strings.
    fn strings(&mut self, command: &[&str]) -> Result<Vec<String>> {
        match self.reply(command)? {
            Reply::Array(items) => items
                .unwrap_or_default()
                .into_iter()
                .map(|item| match item {
                    Reply::Bulk(Some(bytes)) => Ok(String::from_utf8_lossy(&bytes).into_owned()),
                    other => Err(anyhow!("expected a string, got {other:?}")),
                })
                .collect(),
            other => bail!("expected an array, got {other:?}"),
        }
    }

    fn read(&mut self) -> Result<Reply> {
        let mut line = String::new();
        if self.stream.read_line(&mut line)? == 0 {
            bail!("Redis closed the connection");
        }
        let line = line.trim_end_matches("\r\n");
        let (kind, rest) = line.split_at(1.min(line.len()));
        Ok(match kind {
            "+" => Reply::Status,
            "-" => bail!("Redis answered: {rest}"),
            ":" => Reply::Integer(rest.parse()?),
            "$" => match rest.parse::<i64>()? {
                -1 => Reply::Bulk(None),
                len => {
                    let mut bytes = vec![0; usize::try_from(len)? + 2];
                    std::io::Read::read_exact(&mut self.stream, &mut bytes)?;
                    bytes.truncate(bytes.len() - 2);
                    Reply::Bulk(Some(bytes))
                }
            },
            "*" => match rest.parse::<i64>()? {
                -1 => Reply::Array(None),
                len => Reply::Array(Some((0..len).map(|_| self.read()).collect::<Result<_>>()?)),
            },
            _ => bail!("Redis sent `{line}`, not RESP"),
        })
    }
}
