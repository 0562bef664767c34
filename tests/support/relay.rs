//! A TCP relay between a client and a server that can be made to stall: while
//! stalled it accepts connections and reads what clients send, and answers
//! nothing, as a hung server or a load balancer with a dead backend does (the
//! connection is made, the request is taken, no answer ever comes). What a
//! stalled connection received is dropped, never delivered late; when the stall
//! ends, those connections are closed and new ones are relayed again.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// A running relay to `127.0.0.1:{upstream}`; stops accepting on drop.
pub struct Relay {
    pub port: u16,
    shared: Arc<Shared>,
}

struct Shared {
    upstream: u16,
    stalled: AtomicBool,
    /// Bumped by every stall: a connection relayed under an older epoch stops
    /// forwarding when a stall begins.
    epoch: AtomicU64,
    /// Every socket the relay holds, to close them when a stall ends.
    open: Mutex<Vec<TcpStream>>,
    closed: AtomicBool,
}

impl Relay {
    /// A relay on a free port, forwarding to `upstream`.
    pub fn start(upstream: u16) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the relay");
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Shared {
            upstream,
            stalled: AtomicBool::new(false),
            epoch: AtomicU64::new(0),
            open: Mutex::new(Vec::new()),
            closed: AtomicBool::new(false),
        });
        let s = shared.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if s.closed.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(client) = client else { continue };
                let s = s.clone();
                std::thread::spawn(move || s.serve(client));
            }
        });
        Relay { port, shared }
    }

    /// From now on nothing is answered: open connections stop forwarding in
    /// both directions and new ones are accepted and never answered.
    pub fn stall(&self) {
        self.shared.epoch.fetch_add(1, Ordering::SeqCst);
        self.shared.stalled.store(true, Ordering::SeqCst);
    }

    /// Ends a stall: every connection the relay holds is closed (what was
    /// sent during the stall is lost, as a hung server's restart loses it),
    /// and new connections are relayed again.
    pub fn resume(&self) {
        self.shared.stalled.store(false, Ordering::SeqCst);
        self.shared.close_all();
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::SeqCst);
        self.shared.close_all();
        // Wake the accept loop so it sees `closed`.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

impl Shared {
    fn close_all(&self) {
        for s in self.open.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    fn hold(&self, s: &TcpStream) {
        if let Ok(c) = s.try_clone() {
            self.open.lock().unwrap().push(c);
        }
    }

    fn serve(self: Arc<Self>, client: TcpStream) {
        let epoch = self.epoch.load(Ordering::SeqCst);
        self.hold(&client);
        if self.stalled.load(Ordering::SeqCst) {
            return self.swallow(client);
        }
        let Ok(server) = TcpStream::connect(("127.0.0.1", self.upstream)) else {
            let _ = client.shutdown(Shutdown::Both);
            return;
        };
        self.hold(&server);
        let (c2, s2) = match (client.try_clone(), server.try_clone()) {
            (Ok(c), Ok(s)) => (c, s),
            _ => return,
        };
        let me = self.clone();
        std::thread::spawn(move || me.pump(s2, c2, epoch));
        self.pump(client, server, epoch);
    }

    /// Reads and drops everything `client` sends until the connection closes.
    fn swallow(&self, mut client: TcpStream) {
        let mut buf = [0u8; 16 * 1024];
        while matches!(client.read(&mut buf), Ok(n) if n > 0) {}
    }

    /// Copies `from` to `to` until either closes; once a stall began after
    /// this connection was made, what arrives is dropped instead.
    fn pump(&self, mut from: TcpStream, mut to: TcpStream, epoch: u64) {
        let mut buf = [0u8; 16 * 1024];
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if self.epoch.load(Ordering::SeqCst) != epoch {
                continue; // a stall began: swallow
            }
            if to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        // A stalled server closes nothing: the other side learns of this
        // end only when the stall ends (`resume` closes every connection).
        if self.epoch.load(Ordering::SeqCst) == epoch {
            let _ = to.shutdown(Shutdown::Write);
        }
    }
}
