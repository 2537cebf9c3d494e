//! Fixture `hello-p2`: a WASI 0.2 component (wasm32-wasip2) that shows the
//! guest's argv and environment. Exits 0.
use std::io::Write;

fn main() {
    let mut out = std::io::stdout().lock();
    writeln!(out, "hello from a component").unwrap();
    for (i, arg) in std::env::args().enumerate() {
        writeln!(out, "arg[{i}]={arg}").unwrap();
    }
    let mut vars: Vec<(String, String)> = std::env::vars().collect();
    vars.sort();
    for (key, value) in vars {
        writeln!(out, "env:{key}={value}").unwrap();
    }
    out.flush().unwrap();
}
