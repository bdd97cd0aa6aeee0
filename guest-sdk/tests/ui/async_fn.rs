use guest_sdk::{Ctx, Outcome, Result};

#[guest_sdk::job]
async fn run(_ctx: &mut Ctx) -> Result<Outcome> {
    Ok(Outcome::Completed)
}

fn main() {}
