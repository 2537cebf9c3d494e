//! Fixture `net-p2`: a WASI 0.2 component (wasm32-wasip2) that uses the
//! network through Rust's `std::net` (which wasip2 implements with wasi-libc
//! on `wasi:sockets`). What it does depends on `argv[1]`:
//!
//! - `tcp-echo PORT`: binds a TCP listener on `0.0.0.0:PORT`, prints
//!   `listening tcp PORT` and flushes stdout, then forever, one connection at
//!   a time: accepts, reads one line (up to and including `\n`, or up to the
//!   peer shutting down its write side), writes back `echo:<the line>` (the
//!   newline kept, if there was one) and closes. A peer silent for 10 s is
//!   dropped (read timeout). Failures (`accept failed: …`,
//!   `connection failed: …`) are printed to stdout and the loop goes on.
//! - `udp-echo PORT`: binds a UDP socket on `0.0.0.0:PORT`, prints
//!   `listening udp PORT` and flushes stdout, then forever: receives a
//!   datagram and sends `echo:` + the datagram back to its sender. Failures
//!   (`recv failed: …`, `send failed: …`) are printed and the loop goes on.
//! - `tcp-call ADDR:PORT TEXT`: connects to `ADDR:PORT` (a host name goes
//!   through name lookup), trying up to 50 times with 100 ms sleeps between
//!   tries; writes `TEXT\n`, reads one reply line (10 s read timeout) and
//!   prints `reply:<the line without its newline>`. On failure prints
//!   `tcp-call failed: <err>` (only the last error) and exits with status 1.
//! - `udp-call ADDR:PORT TEXT`: binds `0.0.0.0:0`, sends `TEXT` to
//!   `ADDR:PORT` and waits 500 ms for a reply, sending again up to 20 times
//!   in all; prints `reply:<the first datagram received>`. On failure prints
//!   `udp-call failed: <err>` (only the last error; `no reply within 500 ms`
//!   when every wait ran out) and exits with status 1. On wasip2 a UDP
//!   socket's `set_read_timeout` fails (wasi-libc has no `SO_RCVTIMEO` for
//!   UDP: "Protocol not available"), so the wait is bounded another way:
//!   the socket is made non-blocking for the wait and `recv_from` is tried
//!   every 10 ms until 500 ms have passed. The send itself is blocking: a
//!   non-blocking `send_to` may fail with "Resource temporarily unavailable"
//!   before the host has seen the new socket writable, and wasmtime then
//!   refuses every later send until the guest polls the stream, which only
//!   the blocking path of wasi-libc does.
//! - `lookup NAME`: resolves `NAME` (`(NAME, 0).to_socket_addrs()`) and
//!   prints each address as `addr:<ip>`, one a line, sorted, duplicates
//!   removed. On failure prints `lookup failed: <err>` and exits with
//!   status 1.
//! - `bind-check PORT`: binds TCP `0.0.0.0:PORT` and prints `bound PORT` or
//!   `bind failed: <err>`; exits with status 0 either way (the listener is
//!   closed on exit).
//!
//! Anything else (or a PORT that is not a number) prints the usage to stderr
//! and calls `exit(2)`. WASI 0.2 `wasi:cli/exit.exit` takes a result, not a
//! number, so a host sees every non-zero status here (1 or 2) as status 1.
//! Network errors are printed, never a panic.
use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::net::{IpAddr, TcpListener, TcpStream, ToSocketAddrs, UdpSocket};
use std::process::exit;
use std::time::{Duration, Instant};

const USAGE: &str = "usage: net-p2 tcp-echo PORT | udp-echo PORT | tcp-call ADDR:PORT TEXT \
                     | udp-call ADDR:PORT TEXT | lookup NAME | bind-check PORT";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.get(1..).unwrap_or(&[]) {
        ["tcp-echo", port] => tcp_echo(parse_port(port)),
        ["udp-echo", port] => udp_echo(parse_port(port)),
        ["tcp-call", addr, text] => tcp_call(addr, text),
        ["udp-call", addr, text] => udp_call(addr, text),
        ["lookup", name] => lookup(name),
        ["bind-check", port] => bind_check(parse_port(port)),
        _ => usage(),
    }
}

fn usage() -> ! {
    eprintln!("{USAGE}");
    exit(2)
}

fn parse_port(port: &str) -> u16 {
    port.parse().unwrap_or_else(|_| usage())
}

/// Prints `line` to stdout and flushes it at once (a test reads it while the
/// program is still running).
fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Prints `line`, then exits with status 1.
fn fail(line: &str) -> ! {
    say(line);
    exit(1)
}

fn tcp_echo(port: u16) {
    let listener = match TcpListener::bind(("0.0.0.0", port)) {
        Ok(listener) => listener,
        Err(err) => fail(&format!("bind failed: {err}")),
    };
    say(&format!("listening tcp {port}"));
    loop {
        match listener.accept() {
            Ok((stream, _peer)) => {
                if let Err(err) = echo_line(stream) {
                    say(&format!("connection failed: {err}"));
                }
            }
            Err(err) => say(&format!("accept failed: {err}")),
        }
    }
}

/// Reads one line from `stream` and writes it back after `echo:`.
fn echo_line(stream: TcpStream) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(&stream);
    let mut line = Vec::new();
    reader.read_until(b'\n', &mut line)?;
    let mut reply = b"echo:".to_vec();
    reply.extend_from_slice(&line);
    (&stream).write_all(&reply)?;
    (&stream).flush()
    // The stream is closed when dropped.
}

fn udp_echo(port: u16) {
    let socket = match UdpSocket::bind(("0.0.0.0", port)) {
        Ok(socket) => socket,
        Err(err) => fail(&format!("bind failed: {err}")),
    };
    say(&format!("listening udp {port}"));
    let mut buf = vec![0u8; 65536];
    loop {
        let (len, peer) = match socket.recv_from(&mut buf) {
            Ok(received) => received,
            Err(err) => {
                say(&format!("recv failed: {err}"));
                continue;
            }
        };
        let mut reply = b"echo:".to_vec();
        reply.extend_from_slice(&buf[..len]);
        if let Err(err) = socket.send_to(&reply, peer) {
            say(&format!("send failed: {err}"));
        }
    }
}

fn tcp_call(addr: &str, text: &str) {
    const TRIES: u32 = 50;
    let mut tries = 0;
    let stream = loop {
        tries += 1;
        match TcpStream::connect(addr) {
            Ok(stream) => break stream,
            Err(err) if tries == TRIES => fail(&format!("tcp-call failed: {err}")),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    match call_line(&stream, text) {
        Ok(reply) => say(&format!("reply:{reply}")),
        Err(err) => fail(&format!("tcp-call failed: {err}")),
    }
}

/// Writes `text` and a newline to `stream`, then reads one line back.
fn call_line(stream: &TcpStream, text: &str) -> std::io::Result<String> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut writer = stream;
    writer.write_all(format!("{text}\n").as_bytes())?;
    writer.flush()?;
    let mut line = Vec::new();
    BufReader::new(stream).read_until(b'\n', &mut line)?;
    if line.is_empty() {
        return Err(std::io::Error::new(ErrorKind::UnexpectedEof, "connection closed without a reply"));
    }
    if line.last() == Some(&b'\n') {
        line.pop();
    }
    Ok(String::from_utf8_lossy(&line).into_owned())
}

fn udp_call(addr: &str, text: &str) {
    const TRIES: u32 = 20;
    const WAIT: Duration = Duration::from_millis(500);
    const POLL: Duration = Duration::from_millis(10);
    let socket = match UdpSocket::bind(("0.0.0.0", 0)) {
        Ok(socket) => socket,
        Err(err) => fail(&format!("udp-call failed: {err}")),
    };
    let mut buf = vec![0u8; 65536];
    let mut last_err = String::from("no reply");
    for _ in 0..TRIES {
        // Blocking send (see the module doc), then a non-blocking wait: not
        // `set_read_timeout`, which wasi-libc does not support for UDP.
        let sent = socket
            .set_nonblocking(false)
            .and_then(|()| socket.send_to(text.as_bytes(), addr))
            .and_then(|_| socket.set_nonblocking(true));
        if let Err(err) = sent {
            last_err = err.to_string();
            std::thread::sleep(WAIT);
            continue;
        }
        let deadline = Instant::now() + WAIT;
        loop {
            match socket.recv_from(&mut buf) {
                Ok((len, _peer)) => {
                    say(&format!("reply:{}", String::from_utf8_lossy(&buf[..len])));
                    return;
                }
                Err(err) if err.kind() == ErrorKind::WouldBlock => {
                    if Instant::now() >= deadline {
                        last_err = format!("no reply within {} ms", WAIT.as_millis());
                        break;
                    }
                    std::thread::sleep(POLL);
                }
                Err(err) => {
                    last_err = err.to_string();
                    std::thread::sleep(WAIT);
                    break;
                }
            }
        }
    }
    fail(&format!("udp-call failed: {last_err}"));
}

fn lookup(name: &str) {
    match (name, 0).to_socket_addrs() {
        Ok(addrs) => {
            let mut ips: Vec<IpAddr> = addrs.map(|addr| addr.ip()).collect();
            ips.sort();
            ips.dedup();
            for ip in ips {
                say(&format!("addr:{ip}"));
            }
        }
        Err(err) => fail(&format!("lookup failed: {err}")),
    }
}

fn bind_check(port: u16) {
    match TcpListener::bind(("0.0.0.0", port)) {
        Ok(_listener) => say(&format!("bound {port}")),
        Err(err) => say(&format!("bind failed: {err}")),
    }
}
