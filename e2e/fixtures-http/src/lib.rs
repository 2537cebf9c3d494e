//! Fixture `http-service`: a WASI 0.2 component (wasm32-wasip2 cdylib) that
//! exports only `wasi:http/incoming-handler`, so a host serves it: each
//! request runs `handle` in a fresh instance. What it answers depends on the
//! request's path (the query's values are percent-decoded):
//!
//! - `/`: 200 `hello from wasm\n`.
//! - `/healthz`: 200 `ok`.
//! - `/echo`: 200 with the request's body, and the header
//!   `x-method: <the request's method>` (`GET`, `POST`, …).
//! - `/log?msg=TEXT`: writes the line `TEXT` to stdout and to stderr, then
//!   200 `logged`.
//! - `/trap`: panics; with `panic = "abort"` that is a wasm trap (after the
//!   panic message on stderr), and no response is sent.
//! - `/alloc?mb=N`: allocates N MiB and writes to each of its pages, then 200
//!   `allocated N MiB`. An allocation the host refuses aborts: a trap.
//! - `/sleep?ms=N`: prints the line `sleeping N ms` to stdout (a test waits
//!   for it to know the request is in flight), sleeps N ms (a
//!   `wasi:clocks/monotonic-clock` pollable), then 200 `slept N ms`.
//! - `/hang`: prints the line `hanging` to stdout, then sleeps forever, an
//!   hour at a time; never answers.
//! - `/fetch?url=http://HOST:PORT/PATH`: a GET of the url through
//!   `wasi:http/outgoing-handler`; 200 `status S: BODY` with the upstream's
//!   status and body, or 502 with the error.
//! - `/env?name=X`: 200 with the value of the environment variable X, or
//!   404 `X is not set`.
//!
//! Anything else is 404 `no route for PATH`; a missing or bad query value is
//! 400. Every response has `content-type: text/plain`.
use std::io::{Read, Write};

use wasi::clocks::monotonic_clock::subscribe_duration;
use wasi::exports::http::incoming_handler::Guest;
use wasi::http::outgoing_handler;
use wasi::http::types::{
    Fields, IncomingRequest, Method, OutgoingBody, OutgoingRequest, OutgoingResponse, ResponseOutparam, Scheme,
};

struct Service;

wasi::http::proxy::export!(Service);

impl Guest for Service {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let path_with_query = request.path_with_query().unwrap_or_else(|| "/".into());
        let (path, query) = path_with_query.split_once('?').unwrap_or((path_with_query.as_str(), ""));
        let param = |name: &str| query_value(query, name);
        match path {
            "/" => respond(out, 200, &[], b"hello from wasm\n"),
            "/healthz" => respond(out, 200, &[], b"ok"),
            "/echo" => {
                let method = method_name(&request.method());
                let body = read_body(&request);
                respond(out, 200, &[("x-method", &method)], &body)
            }
            "/log" => match param("msg") {
                Some(msg) => {
                    println!("{msg}");
                    eprintln!("{msg}");
                    respond(out, 200, &[], b"logged")
                }
                None => respond(out, 400, &[], b"missing msg"),
            },
            "/trap" => panic!("trap requested by /trap"),
            "/alloc" => match param("mb").and_then(|mb| mb.parse::<usize>().ok()) {
                Some(mb) => {
                    let mut block = vec![0u8; mb << 20];
                    // Zeroed pages may never be written: touch each one.
                    for byte in block.iter_mut().step_by(4096) {
                        *byte = 1;
                    }
                    std::hint::black_box(&block);
                    respond(out, 200, &[], format!("allocated {mb} MiB").as_bytes())
                }
                None => respond(out, 400, &[], b"mb must be a number"),
            },
            "/sleep" => match param("ms").and_then(|ms| ms.parse::<u64>().ok()) {
                Some(ms) => {
                    println!("sleeping {ms} ms");
                    subscribe_duration(ms * 1_000_000).block();
                    respond(out, 200, &[], format!("slept {ms} ms").as_bytes())
                }
                None => respond(out, 400, &[], b"ms must be a number"),
            },
            "/hang" => {
                println!("hanging");
                loop {
                    subscribe_duration(3600 * 1_000_000_000).block();
                }
            }
            "/fetch" => match param("url") {
                Some(url) => match fetch(&url) {
                    Ok((status, body)) => {
                        let mut text = format!("status {status}: ").into_bytes();
                        text.extend_from_slice(&body);
                        respond(out, 200, &[], &text)
                    }
                    Err(err) => respond(out, 502, &[], err.as_bytes()),
                },
                None => respond(out, 400, &[], b"missing url"),
            },
            "/env" => match param("name") {
                Some(name) => match std::env::var(&name) {
                    Ok(value) => respond(out, 200, &[], value.as_bytes()),
                    Err(_) => respond(out, 404, &[], format!("{name} is not set").as_bytes()),
                },
                None => respond(out, 400, &[], b"missing name"),
            },
            _ => respond(out, 404, &[], format!("no route for {path}").as_bytes()),
        }
    }
}

/// Sends the response: `status`, `headers` and `content-type: text/plain`, then `body`.
fn respond(out: ResponseOutparam, status: u16, headers: &[(&str, &str)], body: &[u8]) {
    let mut fields = vec![("content-type".to_owned(), b"text/plain".to_vec())];
    fields.extend(headers.iter().map(|(name, value)| (name.to_string(), value.as_bytes().to_vec())));
    let response = OutgoingResponse::new(Fields::from_list(&fields).expect("valid headers"));
    response.set_status_code(status).expect("a valid status");
    let response_body = response.body().expect("the response's body");
    ResponseOutparam::set(out, Ok(response));
    let mut stream = response_body.write().expect("the body's stream");
    stream.write_all(body).expect("write the body");
    stream.flush().expect("flush the body");
    // The stream must be gone before the body is finished.
    drop(stream);
    OutgoingBody::finish(response_body, None).expect("finish the body");
}

/// The whole body of the request.
fn read_body(request: &IncomingRequest) -> Vec<u8> {
    let body = request.consume().expect("the request's body");
    let mut bytes = Vec::new();
    body.stream().expect("the body's stream").read_to_end(&mut bytes).expect("read the body");
    bytes
}

/// A GET of `url` (`http://HOST:PORT/PATH`): the response's status and body.
fn fetch(url: &str) -> Result<(u16, Vec<u8>), String> {
    let rest = url.strip_prefix("http://").ok_or_else(|| format!("not an http:// url: {url}"))?;
    let (authority, path) = match rest.find('/') {
        Some(slash) => rest.split_at(slash),
        None => (rest, "/"),
    };
    let request = OutgoingRequest::new(Fields::new());
    request.set_method(&Method::Get).map_err(|()| "bad method")?;
    request.set_scheme(Some(&Scheme::Http)).map_err(|()| "bad scheme")?;
    request.set_authority(Some(authority)).map_err(|()| format!("bad authority {authority}"))?;
    request.set_path_with_query(Some(path)).map_err(|()| format!("bad path {path}"))?;
    let request_body = request.body().map_err(|()| "no request body")?;
    let pending = outgoing_handler::handle(request, None).map_err(|err| format!("request refused: {err:?}"))?;
    OutgoingBody::finish(request_body, None).map_err(|err| format!("finishing the request: {err:?}"))?;
    pending.subscribe().block();
    let response = pending
        .get()
        .ok_or("no response after the wait")?
        .map_err(|()| "response taken twice")?
        .map_err(|err| format!("request failed: {err:?}"))?;
    let status = response.status();
    let body = response.consume().map_err(|()| "no response body")?;
    let mut bytes = Vec::new();
    body.stream()
        .map_err(|()| "no response stream")?
        .read_to_end(&mut bytes)
        .map_err(|err| format!("reading the response: {err}"))?;
    Ok((status, bytes))
}

fn method_name(method: &Method) -> String {
    match method {
        Method::Get => "GET",
        Method::Head => "HEAD",
        Method::Post => "POST",
        Method::Put => "PUT",
        Method::Delete => "DELETE",
        Method::Connect => "CONNECT",
        Method::Options => "OPTIONS",
        Method::Trace => "TRACE",
        Method::Patch => "PATCH",
        Method::Other(other) => other,
    }
    .to_owned()
}

/// The percent-decoded value of `name` in `query` (`a=1&b=2`), `+` as a space.
fn query_value(query: &str, name: &str) -> Option<String> {
    let value = query.split('&').find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))?;
    let bytes = value.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                decoded.push(byte);
                i += 3;
            }
            (b'+', _) => {
                decoded.push(b' ');
                i += 1;
            }
            (byte, _) => {
                decoded.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8(decoded).ok()
}
