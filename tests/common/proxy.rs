//! A TCP proxy in front of PostgreSQL that a test can cut and restore, to
//! play the lab network going down.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};

/// A running proxy.
pub struct Proxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    up: Arc<AtomicBool>,
    generation: Arc<AtomicU64>,
    cut: Arc<tokio::sync::Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Starts a proxy to `target`, down (refusing) until [`Proxy::restore`].
    pub async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let up = Arc::new(AtomicBool::new(false));
        let generation = Arc::new(AtomicU64::new(0));
        let cut = Arc::new(tokio::sync::Notify::new());
        let (u, g, c) = (up.clone(), generation.clone(), cut.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                if !u.load(Ordering::SeqCst) {
                    drop(client); // the network is down: the connection dies at once
                    continue;
                }
                let gen = g.load(Ordering::SeqCst);
                let (g2, c2) = (g.clone(), c.clone());
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(target).await else {
                        return;
                    };
                    let mut client = client;
                    loop {
                        let notified = c2.notified();
                        if g2.load(Ordering::SeqCst) != gen {
                            return; // cut: both sockets are dropped mid-stream
                        }
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut client, &mut server) => return,
                            _ = notified => continue,
                        }
                    }
                });
            }
        });
        Proxy {
            addr,
            up,
            generation,
            cut,
            task,
        }
    }

    /// Lets connections through.
    pub fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }

    /// Drops every open connection and refuses new ones.
    pub fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.cut.notify_waiters();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
