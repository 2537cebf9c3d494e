//! Fixture `fdhog-p2`, a component that holds descriptors until it may not:
//! - `files DIR`: opens DIR/hog (creating it first) again and again;
//! - `sockets`: binds TCP listeners on 127.0.0.1, port 0, again and again;
//!
//! keeping every one, until one fails (at most 100,000); then prints
//! `held N: errno E: <the error>` (E: wasi-libc's errno, 0 if none) and
//! flushes stdout, and sleeps forever, holding them all.
use std::io::Write;

fn hog<T>(mut open: impl FnMut() -> std::io::Result<T>) -> (Vec<T>, Option<std::io::Error>) {
    let mut held = Vec::new();
    while held.len() < 100_000 {
        match open() {
            Ok(item) => held.push(item),
            Err(error) => return (held, Some(error)),
        }
    }
    (held, None)
}

fn report(held: usize, error: Option<std::io::Error>) -> ! {
    let errno = error.as_ref().and_then(|e| e.raw_os_error()).unwrap_or(0);
    let message = error.map(|e| e.to_string()).unwrap_or_else(|| "no error".into());
    println!("held {held}: errno {errno}: {message}");
    std::io::stdout().flush().unwrap();
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("files") => {
            let path = format!("{}/hog", args.get(2).expect("usage: fdhog-p2 files DIR"));
            std::fs::write(&path, b"hog").expect("create the file to open");
            let (held, error) = hog(|| std::fs::File::open(&path));
            report(held.len(), error)
        }
        Some("sockets") => {
            let (held, error) = hog(|| std::net::TcpListener::bind(("127.0.0.1", 0)));
            report(held.len(), error)
        }
        _ => {
            eprintln!("usage: fdhog-p2 files DIR | sockets");
            std::process::exit(2);
        }
    }
}
