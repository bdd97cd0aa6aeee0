//! A plain `wasi:cli/command` that imports `wasi:http`: `http-command.wasm URL` sends a
//! GET for URL and prints the status and the body's length.

mod http;

fn main() {
    let url = std::env::args().nth(1).unwrap_or_default();
    let result = http::get(&url).and_then(|pending| {
        pending.subscribe().block();
        http::read(&pending)
    });
    match result {
        Ok((status, body)) => println!("status {status}, {} bytes", body.len()),
        Err(error) => println!("request failed: {error}"),
    }
}
