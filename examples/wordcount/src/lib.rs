//! `wordcount.wasm DIR [TOP]`: counts the words of every file under DIR (a directory
//! given to the job with `runner --dir HOST::DIR`) and prints the TOP (default 10) most
//! frequent. Stopped and run again, it resumes at the file and byte offset it reached.
//!
//! A word is a run of letters and numbers (Unicode general categories L and N), compared
//! in lower case; symbolic links are not followed. Its Python twin,
//! `examples/python-wordcount`, prints the same.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use guest_sdk::anyhow::{Context, anyhow};
use guest_sdk::{Ctx, Lines, Outcome, Result};
use serde::{Deserialize, Serialize};

#[derive(Default, Serialize, Deserialize)]
struct State {
    /// The files to count, listed by the first run so that a resumed run sees the same.
    files: Vec<PathBuf>,
    counts: BTreeMap<String, u64>,
}

#[guest_sdk::job]
fn wordcount(ctx: &mut Ctx<State>) -> Result<Outcome> {
    let mut args = std::env::args().skip(1);
    let dir = args
        .next()
        .ok_or_else(|| anyhow!("usage: wordcount.wasm DIR [TOP]"))?;
    let top: usize = match args.next() {
        Some(arg) => arg
            .parse()
            .with_context(|| format!("TOP `{arg}` is not a whole number"))?,
        None => 10,
    };
    if !ctx.resumed() {
        ctx.state().files = list_files(Path::new(&dir))?;
    }
    let files = ctx.state().files.clone();
    for line in ctx
        .batch(Lines::new(&files))
        .save_every(Duration::from_secs(1))
    {
        let line = line?;
        let mut state = ctx.state();
        for word in line
            .split(|c: char| !is_word_char(c))
            .filter(|word| !word.is_empty())
        {
            *state.counts.entry(word.to_lowercase()).or_default() += 1;
        }
    }

    let state = ctx.state();
    let mut ranked: Vec<(&String, &u64)> = state.counts.iter().collect();
    ranked.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    let words: u64 = state.counts.values().sum();
    println!(
        "{words} words, {} distinct, in {} files",
        state.counts.len(),
        files.len()
    );
    for (word, count) in ranked.into_iter().take(top) {
        println!("{count:>8} {word}");
    }
    Ok(Outcome::Completed)
}

/// Letters and numbers (Unicode general categories L and N): what Python's
/// `str.isalnum` accepts, so that the Python twin splits words the same.
fn is_word_char(c: char) -> bool {
    use unicode_general_category::GeneralCategory::*;
    matches!(
        unicode_general_category::get_general_category(c),
        UppercaseLetter
            | LowercaseLetter
            | TitlecaseLetter
            | ModifierLetter
            | OtherLetter
            | DecimalNumber
            | LetterNumber
            | OtherNumber
    )
}

/// Every regular file under `dir`, recursively, sorted.
fn list_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let entries = std::fs::read_dir(&dir).with_context(|| {
            format!(
                "cannot list {} (did you pass --dir HOST::{0}?)",
                dir.display()
            )
        })?;
        for entry in entries {
            let entry = entry?;
            let kind = entry.file_type()?;
            if kind.is_dir() {
                dirs.push(entry.path());
            } else if kind.is_file() {
                files.push(entry.path());
            }
        }
    }
    files.sort();
    Ok(files)
}
