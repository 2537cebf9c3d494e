//! Fixture `probe-p2`: a WASI 0.2 component (wasm32-wasip2) that shows what
//! it gets from the runtime. Prints its argv (`arg[i]=…`), its whole
//! environment, sorted (`env:K=V`), its current directory as std sees it
//! (`cwd=…`) and the host's `wasi:cli/environment.initial-cwd` (`initial-cwd=…`);
//! reads `/data/in.txt` (a read-only mount) and `in.txt` relative to the
//! current directory, writes `/out/out.txt` (a writable mount), and tries to
//! write `/data/forbidden.txt`. Every failure is printed, never panics. Ends
//! with `done` on stderr, then returns from `main` (status 0), or calls
//! `std::process::exit(N)` when an argument is `exit=N`.
use std::io::Write;

fn main() {
    let mut out = std::io::stdout().lock();
    let args: Vec<String> = std::env::args().collect();
    for (i, arg) in args.iter().enumerate() {
        writeln!(out, "arg[{i}]={arg}").unwrap();
    }
    let mut vars: Vec<(String, String)> = std::env::vars().collect();
    vars.sort();
    for (key, value) in vars {
        writeln!(out, "env:{key}={value}").unwrap();
    }
    match std::env::current_dir() {
        Ok(dir) => writeln!(out, "cwd={}", dir.display()).unwrap(),
        Err(err) => writeln!(out, "cwd failed: {err}").unwrap(),
    }
    match initial_cwd() {
        Some(dir) => writeln!(out, "initial-cwd={dir}").unwrap(),
        None => writeln!(out, "initial-cwd none").unwrap(),
    }
    match std::fs::read_to_string("/data/in.txt") {
        Ok(contents) => writeln!(out, "read:{contents}").unwrap(),
        Err(err) => writeln!(out, "read failed: {err}").unwrap(),
    }
    match std::fs::read_to_string("in.txt") {
        Ok(contents) => writeln!(out, "relative read:{contents}").unwrap(),
        Err(err) => writeln!(out, "relative read failed: {err}").unwrap(),
    }
    match std::fs::write("/out/out.txt", "written by a component") {
        Ok(()) => writeln!(out, "wrote /out/out.txt").unwrap(),
        Err(err) => writeln!(out, "write failed: {err}").unwrap(),
    }
    match std::fs::write("/data/forbidden.txt", "should not be written") {
        Ok(()) => writeln!(out, "readonly write ok").unwrap(),
        Err(err) => writeln!(out, "readonly write failed: {err}").unwrap(),
    }
    out.flush().unwrap();
    drop(out);
    eprintln!("done");
    let exit = args.iter().skip(1).find_map(|arg| arg.strip_prefix("exit="));
    if let Some(code) = exit {
        std::process::exit(code.parse().expect("exit=N takes an i32"));
    }
}

/// What the host gives as `wasi:cli/environment.initial-cwd`, which Rust's
/// std (through wasi-libc) does not read: its `current_dir` starts at `/`.
fn initial_cwd() -> Option<String> {
    #[link(wasm_import_module = "wasi:cli/environment@0.2.0")]
    extern "C" {
        /// `initial-cwd: func() -> option<string>`, lowered: the result is
        /// written at `ret` (tag byte, then string pointer and length).
        #[link_name = "initial-cwd"]
        fn wasi_initial_cwd(ret: *mut u8);
    }
    #[repr(C, align(4))]
    struct RetArea([u8; 12]);
    let mut ret = RetArea([0; 12]);
    // SAFETY: the canonical ABI writes an `option<string>` at `ret`, 12 bytes
    // aligned to 4; the string's bytes are allocated through `cabi_realloc`.
    unsafe {
        wasi_initial_cwd(ret.0.as_mut_ptr());
        if ret.0[0] == 0 {
            return None;
        }
        let ptr = u32::from_le_bytes(ret.0[4..8].try_into().unwrap()) as usize as *const u8;
        let len = u32::from_le_bytes(ret.0[8..12].try_into().unwrap()) as usize;
        Some(String::from_utf8_lossy(std::slice::from_raw_parts(ptr, len)).into_owned())
    }
}
