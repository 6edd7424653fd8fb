//! A TCP proxy in front of PostgreSQL that a test can cut and restore, to
//! play the lab network going down; freeze, to play a partition of the
//! connections open now (a NAT that forgot them) while new ones go through;
//! and trap a commit, to play a client lost mid-commit whose server session
//! stays (half-open, holding its transaction's locks).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the test controls, shared with every connection's task.
struct Control {
    up: AtomicBool,
    /// Bumped by `cut`: older connections are dropped.
    generation: AtomicU64,
    /// Bumped by `freeze`: older connections forward nothing more.
    freeze_epoch: AtomicU64,
    /// Armed by `half_open_at_commit`, disarmed by the connection it catches.
    trap_commit: AtomicBool,
    /// Wakes the connections' tasks after a change.
    changed: tokio::sync::Notify,
    /// Server sides kept open after their client side was dropped.
    held: Mutex<Vec<TcpStream>>,
}

/// A running proxy.
pub struct Proxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    ctl: Arc<Control>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Starts a proxy to `target`, down (refusing) until [`Proxy::restore`].
    pub async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let ctl = Arc::new(Control {
            up: AtomicBool::new(false),
            generation: AtomicU64::new(0),
            freeze_epoch: AtomicU64::new(0),
            trap_commit: AtomicBool::new(false),
            changed: tokio::sync::Notify::new(),
            held: Mutex::new(Vec::new()),
        });
        let c = ctl.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                if !c.up.load(Ordering::SeqCst) {
                    drop(client); // the network is down: the connection dies at once
                    continue;
                }
                let born = (
                    c.generation.load(Ordering::SeqCst),
                    c.freeze_epoch.load(Ordering::SeqCst),
                );
                let c = c.clone();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(target).await else {
                        return;
                    };
                    pump(client, server, c, born).await;
                });
            }
        });
        Proxy { addr, ctl, task }
    }

    /// Lets connections through.
    pub fn restore(&self) {
        self.ctl.up.store(true, Ordering::SeqCst);
    }

    /// Drops every open connection and refuses new ones.
    pub fn cut(&self) {
        self.ctl.up.store(false, Ordering::SeqCst);
        self.ctl.generation.fetch_add(1, Ordering::SeqCst);
        self.ctl.changed.notify_waiters();
    }

    /// Refuses new connections; those open stay as they are.
    pub fn cut_new(&self) {
        self.ctl.up.store(false, Ordering::SeqCst);
    }

    /// The connections open now forward nothing more, in either direction,
    /// and stay open (no FIN, no RST: the peers hear silence); new
    /// connections go through.
    pub fn freeze(&self) {
        self.ctl.freeze_epoch.fetch_add(1, Ordering::SeqCst);
        self.ctl.changed.notify_waiters();
    }

    /// The next client message holding `COMMIT` is not forwarded: its
    /// client side is closed at once while the server side stays open, so
    /// the server keeps that session, idle in its transaction.
    pub fn half_open_at_commit(&self) {
        self.ctl.trap_commit.store(true, Ordering::SeqCst);
    }

    /// Whether the trap of [`Proxy::half_open_at_commit`] caught its commit.
    pub fn holds_half_open(&self) -> bool {
        !self.ctl.held.lock().expect("lock").is_empty()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        self.cut();
        self.ctl.held.lock().map(|mut h| h.clear()).ok();
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Forwards between `client` and `server` until either closes or the test
/// cuts, freezes or traps the connection.
async fn pump(mut client: TcpStream, mut server: TcpStream, ctl: Arc<Control>, born: (u64, u64)) {
    let (gen, epoch) = born;
    let mut up = vec![0u8; 64 * 1024];
    let mut down = vec![0u8; 64 * 1024];
    let frozen = || ctl.freeze_epoch.load(Ordering::SeqCst) != epoch;
    loop {
        let notified = ctl.changed.notified();
        if ctl.generation.load(Ordering::SeqCst) != gen {
            return; // cut: both sockets are dropped mid-stream
        }
        if frozen() {
            break;
        }
        tokio::select! {
            r = client.read(&mut up) => {
                let n = match r { Ok(0) | Err(_) => return, Ok(n) => n };
                if frozen() {
                    break;
                }
                if contains(&up[..n], b"COMMIT") && ctl.trap_commit.swap(false, Ordering::SeqCst) {
                    drop(client);
                    ctl.held.lock().expect("lock").push(server);
                    return;
                }
                if server.write_all(&up[..n]).await.is_err() {
                    return;
                }
            }
            r = server.read(&mut down) => {
                let n = match r { Ok(0) | Err(_) => return, Ok(n) => n };
                if frozen() {
                    break;
                }
                if client.write_all(&down[..n]).await.is_err() {
                    return;
                }
            }
            _ = notified => {}
        }
    }
    // Frozen: both sockets stay open, nothing is forwarded, until a cut.
    loop {
        let notified = ctl.changed.notified();
        if ctl.generation.load(Ordering::SeqCst) != gen {
            return;
        }
        notified.await;
    }
}
