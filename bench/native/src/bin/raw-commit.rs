//! `raw-commit DIR SIZE COUNT`: the baseline for the runner's checkpoint commit. Commits a
//! SIZE-byte file COUNT times by the bare protocol (write a temporary file, fsync it,
//! rename it into place, fsync the directory) and prints how long each commit took:
//! `commit_ns N N ...`.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::time::Instant;

fn commit(dir: &Path, state: &[u8]) -> std::io::Result<()> {
    let temp = dir.join("checkpoint.tmp");
    let mut file = File::create(&temp)?;
    file.write_all(state)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&temp, dir.join("checkpoint"))?;
    File::open(dir)?.sync_all()
}

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let parsed = match args.as_slice() {
        [dir, size, count] => size
            .parse::<usize>()
            .ok()
            .zip(count.parse::<usize>().ok())
            .map(|(size, count)| (Path::new(dir), size, count)),
        _ => None,
    };
    let Some((dir, size, count)) = parsed else {
        eprintln!("usage: raw-commit DIR SIZE COUNT");
        std::process::exit(2)
    };
    std::fs::create_dir_all(dir)?;
    let mut state: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
    let mut samples = Vec::with_capacity(count);
    for round in 0..count {
        if let Some(first) = state.first_mut() {
            *first = round as u8;
        }
        let start = Instant::now();
        commit(dir, &state)?;
        samples.push(start.elapsed().as_nanos().to_string());
    }
    println!("commit_ns {}", samples.join(" "));
    Ok(())
}
