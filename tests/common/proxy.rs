//! A TCP proxy between real clients and a hub, for network faults: forward bytes, stop
//! forwarding without closing anything (a black hole: packets lost, nobody told), cut
//! every connection, refuse new ones, or send new ones to another hub.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// What the proxy does with traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Forward,
    /// Existing connections stay open but carry nothing; new ones are refused.
    BlackHole,
}

struct State {
    upstream: SocketAddr,
    /// Cancelled to cut every connection open now.
    cut: CancellationToken,
}

/// A running proxy; stopped on drop.
pub struct Proxy {
    pub addr: SocketAddr,
    mode: watch::Sender<Mode>,
    state: Arc<Mutex<State>>,
    stop: CancellationToken,
}

impl Proxy {
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().unwrap();
        let (mode, mode_rx) = watch::channel(Mode::Forward);
        let state = Arc::new(Mutex::new(State {
            upstream,
            cut: CancellationToken::new(),
        }));
        let stop = CancellationToken::new();
        tokio::spawn(accept(listener, mode_rx, state.clone(), stop.clone()));
        Proxy {
            addr,
            mode,
            state,
            stop,
        }
    }

    pub fn set_mode(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }

    /// Closes every connection open now (both sides see it end).
    pub fn cut(&self) {
        let mut s = self.state.lock().unwrap();
        s.cut.cancel();
        s.cut = CancellationToken::new();
    }

    /// New connections go to `upstream` from now on.
    pub fn retarget(&self, upstream: SocketAddr) {
        self.state.lock().unwrap().upstream = upstream;
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.cancel();
        self.cut();
    }
}

async fn accept(
    listener: TcpListener,
    mode: watch::Receiver<Mode>,
    state: Arc<Mutex<State>>,
    stop: CancellationToken,
) {
    loop {
        let client = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((client, _)) => client,
                Err(_) => continue,
            },
        };
        if *mode.borrow() == Mode::BlackHole {
            drop(client);
            continue;
        }
        let (upstream, cut) = {
            let s = state.lock().unwrap();
            (s.upstream, s.cut.clone())
        };
        let mode = mode.clone();
        tokio::spawn(async move {
            let Ok(server) = TcpStream::connect(upstream).await else {
                return;
            };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let (cr, cw) = client.into_split();
            let (sr, sw) = server.into_split();
            // A cut drops whatever a black hole held back: it never arrives.
            tokio::select! {
                biased;
                _ = cut.cancelled() => {}
                _ = pump(cr, sw, mode.clone(), cut.clone()) => {}
                _ = pump(sr, cw, mode, cut.clone()) => {}
            }
        });
    }
}

/// Copies bytes while the mode is `Forward`; in a black hole, holds them (and stops
/// reading) until forwarding resumes or the connection is cut.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut mode: watch::Receiver<Mode>,
    cut: CancellationToken,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        wait_forward(&mut mode).await;
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        wait_forward(&mut mode).await;
        if cut.is_cancelled() || to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

async fn wait_forward(mode: &mut watch::Receiver<Mode>) {
    while *mode.borrow() == Mode::BlackHole {
        if mode.changed().await.is_err() {
            return;
        }
    }
}
