//! A TCP proxy on 127.0.0.1 in front of a registry that holds a download in
//! the middle: each connection passes its first `budget` bytes from the
//! registry, then nothing more until the test releases it (everything flows)
//! or cuts it (every connection is closed, as a registry dying mid-blob).
//! Requests to the registry always pass. Plain threads: no test runtime
//! worker ever blocks on these sockets.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use super::POLL_INTERVAL;

const HOLDING: u8 = 0;
const RELEASED: u8 = 1;
const CUT: u8 = 2;

struct Shared {
    mode: AtomicU8,
    budget: u64,
    /// Every socket of every connection, to close them all on a cut.
    sockets: Mutex<Vec<TcpStream>>,
}

/// The proxy; dropping it cuts every connection and stops it.
pub struct HoldingProxy {
    addr: String,
    shared: Arc<Shared>,
}

impl HoldingProxy {
    /// Listens on 127.0.0.1 (a free port) and forwards to `target`
    /// (`127.0.0.1:port`), holding each connection after `budget` bytes from it.
    pub fn start(target: &str, budget: u64) -> HoldingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address").to_string();
        let shared = Arc::new(Shared { mode: AtomicU8::new(HOLDING), budget, sockets: Mutex::new(Vec::new()) });
        let target = target.to_owned();
        std::thread::Builder::new()
            .name("e2e-proxy".into())
            .spawn({
                let shared = shared.clone();
                move || {
                    for client in listener.incoming() {
                        if shared.mode.load(Ordering::SeqCst) == CUT {
                            return;
                        }
                        let Ok(client) = client else { continue };
                        let Ok(upstream) = TcpStream::connect(&target) else { continue };
                        connect(&shared, client, upstream);
                    }
                }
            })
            .expect("spawn the proxy thread");
        HoldingProxy { addr, shared }
    }

    /// `127.0.0.1:port`, the registry name to pull through.
    pub fn host(&self) -> String {
        self.addr.clone()
    }

    /// Lets every connection, held or not, flow at full speed from now on.
    pub fn release(&self) {
        self.shared.mode.store(RELEASED, Ordering::SeqCst);
    }

    /// Closes every connection and refuses new ones.
    pub fn cut(&self) {
        self.shared.mode.store(CUT, Ordering::SeqCst);
        for socket in self.shared.sockets.lock().unwrap().drain(..) {
            let _ = socket.shutdown(Shutdown::Both);
        }
        // Wakes the accept loop, which sees the cut and ends.
        let _ = TcpStream::connect(&self.addr);
    }
}

impl Drop for HoldingProxy {
    fn drop(&mut self) {
        self.cut();
    }
}

/// Copies both ways between `client` and `upstream` on two threads.
fn connect(shared: &Arc<Shared>, client: TcpStream, upstream: TcpStream) {
    let clones = (client.try_clone(), upstream.try_clone());
    let (Ok(client_reader), Ok(upstream_writer)) = clones else { return };
    {
        let mut sockets = shared.sockets.lock().unwrap();
        for socket in [&client, &upstream] {
            if let Ok(clone) = socket.try_clone() {
                sockets.push(clone);
            }
        }
    }
    // Requests: unheld.
    std::thread::spawn(move || {
        let (mut from, mut to) = (client_reader, upstream_writer);
        let _ = std::io::copy(&mut from, &mut to);
        let _ = to.shutdown(Shutdown::Write);
    });
    // Responses: held after the budget.
    let shared = shared.clone();
    std::thread::spawn(move || {
        let (mut from, mut to) = (upstream, client);
        let mut sent = 0u64;
        let mut buffer = vec![0u8; 16 << 10];
        loop {
            let n = match from.read(&mut buffer) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            loop {
                match shared.mode.load(Ordering::SeqCst) {
                    CUT => return,
                    HOLDING if sent + n as u64 > shared.budget => std::thread::sleep(POLL_INTERVAL),
                    _ => break,
                }
            }
            if to.write_all(&buffer[..n]).is_err() {
                break;
            }
            sent += n as u64;
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}
