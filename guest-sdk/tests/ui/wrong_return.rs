use guest_sdk::{Ctx, Result};

#[guest_sdk::job]
fn run(_ctx: &mut Ctx) -> Result<u32> {
    Ok(7)
}

fn main() {}
