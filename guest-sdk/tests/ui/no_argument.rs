use guest_sdk::{Outcome, Result};

#[guest_sdk::job]
fn run() -> Result<Outcome> {
    Ok(Outcome::Completed)
}

fn main() {}
