use guest_sdk::{Ctx, Outcome, Result};

#[guest_sdk::job]
fn run<S>(_ctx: &mut Ctx<S>) -> Result<Outcome> {
    Ok(Outcome::Completed)
}

fn main() {}
