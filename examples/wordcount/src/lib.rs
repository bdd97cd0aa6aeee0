//! `wordcount.wasm DIR [TOP]`: counts the words of every file under DIR (a directory
//! given to the job with `runner --dir HOST::DIR`) and prints the TOP (default 10) most
//! frequent. Stopped and run again, it resumes at the file and byte offset it reached.
//!
//! A word is a run of letters and digits, compared in lower case.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

use guest_sdk::anyhow::{Context, anyhow};
use guest_sdk::{Ctx, Outcome, Result};

#[derive(Default, guest_sdk::serde::Serialize, guest_sdk::serde::Deserialize)]
#[serde(crate = "guest_sdk::serde")]
struct State {
    /// The files to count, fixed by the first run so that a resumed run sees the same.
    files: Vec<PathBuf>,
    total_bytes: u64,
    /// The file being counted, and how far into it.
    file: usize,
    offset: u64,
    done_bytes: u64,
    counts: BTreeMap<String, u64>,
}

fn run(ctx: &mut Ctx<State>) -> Result<Outcome> {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(
        args.next()
            .ok_or_else(|| anyhow!("usage: wordcount.wasm DIR [TOP]"))?,
    );
    let top: usize = match args.next() {
        Some(arg) => arg
            .parse()
            .with_context(|| format!("TOP `{arg}` is not a whole number"))?,
        None => 10,
    };
    if ctx.resumed() {
        eprintln!(
            "wordcount: resuming at file {} of {}, byte {}",
            ctx.state.file + 1,
            ctx.state.files.len(),
            ctx.state.offset
        );
    } else {
        list_files(&dir, &mut ctx.state.files)?;
        ctx.state.files.sort();
        for file in &ctx.state.files {
            ctx.state.total_bytes += file
                .metadata()
                .with_context(|| format!("cannot stat {}", file.display()))?
                .len();
        }
    }

    let mut line = Vec::new();
    while let Some(path) = ctx.state.files.get(ctx.state.file).cloned() {
        let mut reader = BufReader::new(
            File::open(&path).with_context(|| format!("cannot open {}", path.display()))?,
        );
        reader.seek(SeekFrom::Start(ctx.state.offset))?;
        loop {
            if ctx.should_stop() {
                return ctx.suspend();
            }
            line.clear();
            let read = reader
                .read_until(b'\n', &mut line)
                .with_context(|| format!("cannot read {}", path.display()))?;
            if read == 0 {
                break;
            }
            for word in String::from_utf8_lossy(&line)
                .split(|c: char| !c.is_alphanumeric())
                .filter(|word| !word.is_empty())
            {
                *ctx.state.counts.entry(word.to_lowercase()).or_default() += 1;
            }
            ctx.state.offset += read as u64;
            ctx.state.done_bytes += read as u64;
            ctx.progress(ctx.state.done_bytes, Some(ctx.state.total_bytes));
            ctx.checkpoint_every(Duration::from_secs(1))?;
        }
        ctx.state.file += 1;
        ctx.state.offset = 0;
    }

    let mut ranked: Vec<(&String, &u64)> = ctx.state.counts.iter().collect();
    ranked.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    let words: u64 = ctx.state.counts.values().sum();
    println!(
        "{words} words, {} distinct, in {} files",
        ctx.state.counts.len(),
        ctx.state.files.len()
    );
    for (word, count) in ranked.into_iter().take(top) {
        println!("{count:>8} {word}");
    }
    Ok(Outcome::Completed)
}

/// Every regular file under `dir`, recursively.
fn list_files(dir: &Path, files: &mut Vec<PathBuf>) -> Result<()> {
    let entries = std::fs::read_dir(dir).with_context(|| {
        format!(
            "cannot list {} (did you pass --dir HOST::{0}?)",
            dir.display()
        )
    })?;
    for entry in entries {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            list_files(&entry.path(), files)?;
        } else if kind.is_file() {
            files.push(entry.path());
        }
    }
    Ok(())
}

guest_sdk::job!(run);
