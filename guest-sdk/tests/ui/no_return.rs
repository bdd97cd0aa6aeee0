use guest_sdk::Ctx;

#[guest_sdk::job]
fn run(_ctx: &mut Ctx) {}

fn main() {}
