//! The accept loop: every TCP connection counts against one cap (WebSocket upgrades still
//! pending included), headers must arrive within a deadline (slowloris), and the cap
//! leaves file descriptors in reserve under the process limit so the hub's own Postgres
//! connections, `/health` and new clients keep working under a flood.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::telemetry::Metrics;

/// File descriptors kept free under the process limit (Postgres, files, accept itself).
const FD_RESERVE: usize = 512;
/// Connections beyond `max_connections` for plain HTTP (health checks, REST, status).
pub const HTTP_RESERVE: usize = 256;

/// How many TCP connections the hub holds at most: `max_connections` WebSockets plus the
/// HTTP reserve, never more than the descriptor limit allows.
pub fn connection_cap(max_connections: usize) -> usize {
    let wanted = max_connections + HTTP_RESERVE;
    match fd_limit() {
        Some(limit) if limit > FD_RESERVE => wanted.min(limit - FD_RESERVE),
        _ => wanted,
    }
}

/// The process's open-file limit (RLIMIT_NOFILE), if it can be read.
fn fd_limit() -> Option<usize> {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own; RLIMIT_NOFILE is a valid resource.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } == 0;
    ok.then(|| usize::try_from(rl.rlim_cur).unwrap_or(usize::MAX))
}

/// Pending connections the kernel queues for `accept` (capped by `net.core.somaxconn`).
/// Tokio's default of 1,024 overflowed when thousands of clients reconnected at once (a
/// restart, a network blip): the kernel dropped their handshakes and they waited out
/// SYN retransmits of up to a minute.
const ACCEPT_BACKLOG: u32 = 8192;

/// Binds the hub's listening socket (address reuse on, as `TcpListener::bind` does).
pub fn bind(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        std::net::SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        std::net::SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(ACCEPT_BACKLOG)
}

/// The TCP peer of a request (a request extension; REST rate limits read it).
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub std::net::SocketAddr);

/// One TCP connection's place under the cap, held by the HTTP connection and, after a
/// WebSocket upgrade, by the socket's task: freed when both are done.
#[derive(Clone)]
pub struct ConnSlot(#[allow(dead_code)] Arc<Slot>);

pub struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A WebSocket path with its empty segments dropped (`/realtime/v1//websocket`, a
/// trailing `/`), as Supabase's HTTP server reads a path; `None` when it has none, or is
/// not a socket's. realtime-js given an endpoint that ends in `/` asks for
/// `/realtime/v1//websocket`. Other paths keep their empty segments, so a REST broadcast
/// to an empty topic (`/api/broadcast//events/e`) is refused as such.
fn without_empty_segments(uri: &hyper::Uri) -> Option<hyper::Uri> {
    let path = uri.path();
    if !(path.contains("//") || path.len() > 1 && path.ends_with('/')) {
        return None;
    }
    let mut tidy = String::with_capacity(path.len() + 1);
    for segment in path.split('/').filter(|s| !s.is_empty()) {
        tidy.push('/');
        tidy.push_str(segment);
    }
    if !tidy.ends_with("/websocket") {
        return None;
    }
    if let Some(query) = uri.query() {
        tidy.push('?');
        tidy.push_str(query);
    }
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(tidy.parse().ok()?);
    hyper::Uri::from_parts(parts).ok()
}

/// Serves `router` on `listener` until `shutdown`: at most `cap` connections at once
/// (further ones are closed at once), request headers within `header_timeout`.
pub async fn serve(
    listener: &TcpListener,
    router: Router,
    cap: usize,
    header_timeout: Duration,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let open = Arc::new(AtomicUsize::new(0));
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    let builder = Arc::new(builder);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors or a transient error: wait a moment, keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        if open.fetch_add(1, Ordering::AcqRel) >= cap {
            open.fetch_sub(1, Ordering::AcqRel);
            metrics.dropped("connection_cap", 1);
            drop(tcp);
            continue;
        }
        let slot = ConnSlot(Arc::new(Slot(open.clone())));
        // Frames are small and latency matters: no Nagle delay on client sockets.
        let _ = tcp.set_nodelay(true);
        let (router, builder) = (router.clone(), builder.clone());
        tokio::spawn(async move {
            let held = slot.clone();
            let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
                if let Some(uri) = without_empty_segments(req.uri()) {
                    *req.uri_mut() = uri;
                }
                req.extensions_mut().insert(held.clone());
                req.extensions_mut().insert(PeerAddr(peer));
                router.clone().oneshot(req)
            });
            if let Err(e) = builder
                .serve_connection_with_upgrades(TokioIo::new(tcp), service)
                .await
            {
                tracing::debug!(error = %e, "http connection ended");
            }
            drop(slot);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_socket_path_drops_its_empty_segments_and_keeps_its_query() {
        let tidy = |s: &str| without_empty_segments(&s.parse().unwrap()).map(|u| u.to_string());
        assert_eq!(
            tidy("/realtime/v1//websocket?apikey=a%2Fb&vsn=2.0.0").as_deref(),
            Some("/realtime/v1/websocket?apikey=a%2Fb&vsn=2.0.0")
        );
        assert_eq!(
            tidy("//socket/websocket/").as_deref(),
            Some("/socket/websocket")
        );
        assert_eq!(
            tidy("/realtime/v1/websocket/").as_deref(),
            Some("/realtime/v1/websocket")
        );
        assert_eq!(tidy("/api/broadcast/"), None);
        assert_eq!(tidy("/api/broadcast//events/e"), None);
        assert_eq!(tidy("///"), None);
        assert_eq!(tidy("/realtime/v1/websocket"), None);
        assert_eq!(tidy("/"), None);
    }
}
