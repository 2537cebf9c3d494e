//! Fixture `http-command`: a WASI 0.2 component (wasm32-wasip2 bin) that
//! exports both `wasi:cli/run` (its `main`, as every wasip2 program does) and
//! `wasi:http/incoming-handler`, like a program `wasmtime serve` and
//! `wasmtime run` both accept.
//!
//! - Run as a command: prints `ran as a command` to stdout and exits 0.
//! - Served: every request gets 200 `hello from the served command\n`
//!   (`content-type: text/plain`), whatever its method and path.
use std::io::Write;

use wasi::exports::http::incoming_handler::Guest;
use wasi::http::types::{Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam};

struct Served;

wasi::http::proxy::export!(Served);

impl Guest for Served {
    fn handle(_request: IncomingRequest, out: ResponseOutparam) {
        let headers = Fields::from_list(&[("content-type".to_owned(), b"text/plain".to_vec())]).expect("a header");
        let response = OutgoingResponse::new(headers);
        let body = response.body().expect("the response's body");
        ResponseOutparam::set(out, Ok(response));
        let mut stream = body.write().expect("the body's stream");
        stream.write_all(b"hello from the served command\n").expect("write the body");
        stream.flush().expect("flush the body");
        // The stream must be gone before the body is finished.
        drop(stream);
        OutgoingBody::finish(body, None).expect("finish the body");
    }
}

fn main() {
    println!("ran as a command");
}
