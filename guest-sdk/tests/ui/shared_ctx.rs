use guest_sdk::{Ctx, Outcome, Result};

#[guest_sdk::job]
fn run(_ctx: &Ctx<u64>) -> Result<Outcome> {
    Ok(Outcome::Completed)
}

fn main() {}
