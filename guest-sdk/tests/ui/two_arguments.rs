use guest_sdk::{Ctx, Outcome, Result};

#[guest_sdk::job]
fn run(_ctx: &mut Ctx, limit: u64) -> Result<Outcome> {
    println!("{limit}");
    Ok(Outcome::Completed)
}

fn main() {}
