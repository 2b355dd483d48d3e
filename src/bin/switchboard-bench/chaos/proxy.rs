//! A TCP proxy between the chaos subscribers and the hub that can black-hole single
//! connections: bytes stop flowing both ways and nobody is told, as when a laptop's
//! Wi-Fi drops. A black hole ends with the connection cut (both sides see it close) or
//! with the held bytes flowing again.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rand::seq::IteratorRandom;
use rand::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// One proxied connection's controls.
struct Conn {
    /// `true` while black-holed; both pumps watch it.
    hole: watch::Sender<bool>,
    /// Cancelled to close both sides.
    cut: CancellationToken,
}

/// A running proxy to one upstream address (the hub keeps its port across restarts).
pub struct Proxy {
    pub addr: SocketAddr,
    /// Open connections by id; each connection task removes its own entry.
    conns: Arc<Mutex<HashMap<u64, Conn>>>,
    stop: CancellationToken,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Proxy {
    pub async fn start(upstream: SocketAddr) -> std::io::Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let conns = Arc::new(Mutex::new(HashMap::new()));
        let stop = CancellationToken::new();
        tokio::spawn(accept(listener, upstream, conns.clone(), stop.clone()));
        Ok(Proxy { addr, conns, stop })
    }

    /// Black-holes about `share` of the connections open now (at least one if any is
    /// open); returns their ids.
    pub fn black_hole(&self, share: f64, rng: &mut impl Rng) -> Vec<u64> {
        let conns = lock(&self.conns);
        let want = ((conns.len() as f64 * share).round() as usize).clamp(1, conns.len().max(1));
        let ids: Vec<u64> = conns.keys().copied().choose_multiple(rng, want);
        for id in &ids {
            conns[id].hole.send_replace(true);
        }
        ids
    }

    /// Ends the black holes of `ids`: cut (closed both ways) or flowing again.
    pub fn release(&self, ids: &[u64], cut: bool) {
        let conns = lock(&self.conns);
        for id in ids {
            if let Some(c) = conns.get(id) {
                if cut {
                    c.cut.cancel();
                }
                c.hole.send_replace(false);
            }
        }
    }

    /// Ends every black hole (flowing again).
    pub fn release_all(&self) {
        for c in lock(&self.conns).values() {
            c.hole.send_replace(false);
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.cancel();
        for c in lock(&self.conns).values() {
            c.cut.cancel();
        }
    }
}

async fn accept(
    listener: TcpListener,
    upstream: SocketAddr,
    conns: Arc<Mutex<HashMap<u64, Conn>>>,
    stop: CancellationToken,
) {
    let next = AtomicU64::new(1);
    loop {
        let client = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((client, _)) => client,
                Err(_) => continue,
            },
        };
        let id = next.fetch_add(1, Ordering::Relaxed);
        let (hole, hole_rx) = watch::channel(false);
        let cut = stop.child_token();
        lock(&conns).insert(
            id,
            Conn {
                hole,
                cut: cut.clone(),
            },
        );
        let conns = conns.clone();
        tokio::spawn(async move {
            // The hub may be down (killed, restarting): the client sees its connection end.
            if let Ok(server) = TcpStream::connect(upstream).await {
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::select! {
                    biased;
                    _ = cut.cancelled() => {}
                    _ = pump(cr, sw, hole_rx.clone()) => {}
                    _ = pump(sr, cw, hole_rx) => {}
                }
            }
            lock(&conns).remove(&id);
        });
    }
}

/// Copies bytes while not black-holed; in a black hole, holds what it read and stops
/// reading until the hole ends (or the connection is cut, dropping what was held).
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut hole: watch::Receiver<bool>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        wait_open(&mut hole).await;
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        wait_open(&mut hole).await;
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

async fn wait_open(hole: &mut watch::Receiver<bool>) {
    while *hole.borrow_and_update() {
        if hole.changed().await.is_err() {
            return;
        }
    }
}
