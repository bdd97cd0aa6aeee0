//! A GET through `wasi:http/outgoing-handler`, as a job or a command makes one.

use guest_sdk::wasi::http::outgoing_handler;
use guest_sdk::wasi::http::types::{
    FutureIncomingResponse, IncomingResponse, OutgoingRequest, Scheme,
};
use guest_sdk::wasi::io::streams::StreamError;

/// Sends a GET for `url` (`http://HOST[:PORT]/PATH`, or https); the response pending.
pub fn get(url: &str) -> Result<FutureIncomingResponse, String> {
    let (scheme, rest) = match url.split_once("://") {
        Some(("http", rest)) => (Scheme::Http, rest),
        Some(("https", rest)) => (Scheme::Https, rest),
        _ => return Err(format!("`{url}` is not an http:// or https:// URL")),
    };
    let (authority, path) = match rest.find('/') {
        Some(at) => rest.split_at(at),
        None => (rest, "/"),
    };
    let request = OutgoingRequest::new(guest_sdk::wasi::http::types::Fields::new());
    request
        .set_scheme(Some(&scheme))
        .map_err(|()| "bad scheme")?;
    request
        .set_authority(Some(authority))
        .map_err(|()| format!("bad authority `{authority}`"))?;
    request
        .set_path_with_query(Some(path))
        .map_err(|()| format!("bad path `{path}`"))?;
    outgoing_handler::handle(request, None).map_err(|error| format!("{error}"))
}

/// The response of `pending`, once it is ready: its status and body.
pub fn read(pending: &FutureIncomingResponse) -> Result<(u16, Vec<u8>), String> {
    let response: IncomingResponse = match pending.get() {
        Some(Ok(Ok(response))) => response,
        Some(Ok(Err(error))) => return Err(format!("{error}")),
        Some(Err(())) => return Err("the response was taken already".into()),
        None => return Err("the response is not ready".into()),
    };
    let status = response.status();
    let body = response.consume().map_err(|()| "no body")?;
    let stream = body.stream().map_err(|()| "no body stream")?;
    let mut bytes = Vec::new();
    loop {
        match stream.blocking_read(64 * 1024) {
            Ok(chunk) => bytes.extend(chunk),
            Err(StreamError::Closed) => break,
            Err(StreamError::LastOperationFailed(error)) => {
                return Err(error.to_debug_string());
            }
        }
    }
    Ok((status, bytes))
}
