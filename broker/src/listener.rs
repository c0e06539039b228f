//! The listener: bind, accept, serve each connection (a WebSocket upgrade
//! straight away, anything else through hyper and the HTTP router), and
//! the shutdown order.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tower_service::Service;
use tracing::{debug, info, warn};

use crate::broker::Broker;
use crate::config::Config;
use crate::handshake::{self, Refusal};
use crate::http_api::{HttpRateLimit, router};
use crate::prefixed::Prefixed;
use crate::stats;
use crate::stream::Stream;

/// How long the accept loop waits after an error such as running out of
/// file descriptors.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// How long an HTTP connection may take to send a request's headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// A running broker: its address and the handle that stops it.
#[derive(Debug)]
pub struct RunningBroker {
    /// The address it listens on.
    pub addr: SocketAddr,
    /// The broker itself.
    pub broker: Broker,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<io::Result<()>>,
}

impl RunningBroker {
    /// The WebSocket URL of the broker, `ws://ADDR/ws` (`wss://` with TLS).
    pub fn ws_url(&self) -> String {
        let scheme = if self.broker.serves_tls() {
            "wss"
        } else {
            "ws"
        };
        format!("{scheme}://{}/ws", self.addr)
    }

    /// The HTTP base URL of the broker, `http://ADDR` (`https://` with TLS).
    pub fn http_url(&self) -> String {
        let scheme = if self.broker.serves_tls() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.addr)
    }

    /// Shuts down gracefully (clients get 1001) and waits until it has stopped.
    pub async fn shutdown(mut self) -> io::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.await.map_err(io::Error::other)?
    }
}

/// Binds `addr` with a listen backlog of `backlog` connections (the kernel
/// caps it at `net.core.somaxconn`), with `SO_REUSEADDR` so that a restarted
/// broker can bind while old connections linger in `TIME_WAIT`.
///
/// Must be called within a tokio runtime.
pub fn bind(addr: SocketAddr, backlog: u32) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

/// Binds `config.listen` and serves in a background task.
pub async fn start(config: Config) -> io::Result<RunningBroker> {
    let listener = bind(config.listen, config.listen_backlog)?;
    let addr = listener.local_addr()?;
    let broker = Broker::new(config).map_err(io::Error::other)?;
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(serve(listener, broker.clone(), async move {
        let _ = stopped.await;
    }));
    Ok(RunningBroker {
        addr,
        broker,
        stop: Some(stop),
        task,
    })
}

/// Serves on `listener` until `signal` completes, then shuts down gracefully:
/// stops accepting, lets HTTP requests in progress finish, closes every
/// client with 1001, and waits for them (up to the shutdown timeout).
///
/// Each connection (after its TLS handshake, when the broker serves TLS)
/// starts with its first request: a WebSocket upgrade is answered at once
/// and hands the stream to the connection task, which speaks WebSocket on
/// it without hyper in between; anything else is served by hyper's HTTP/1
/// server. With TLS, SIGHUP reloads the certificate and key.
pub async fn serve(
    listener: TcpListener,
    broker: Broker,
    signal: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let addr = listener.local_addr()?;
    broker.start_relay();
    info!(%addr, node = %broker.node_id(), "listening");
    match broker.verifier() {
        Some(verifier) => info!(algorithm = ?verifier.algorithm(), "authentication on"),
        None => warn!(
            "authentication is off: any client may subscribe and publish to any topic (see SECURITY.md)"
        ),
    }
    let stats = tokio::spawn(stats::run(broker.clone()));
    let reloads = broker
        .serves_tls()
        .then(|| tokio::spawn(reload_on_hangup(broker.clone())));
    let app = router(broker.clone());
    // Tells the HTTP connections to finish; each holds a receiver, so it
    // also tells when they all have.
    let (http_stop, _) = watch::channel(false);
    tokio::pin!(signal);
    loop {
        let (tcp, peer) = tokio::select! {
            biased;
            () = &mut signal => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    on_accept_error(&error).await;
                    continue;
                }
            },
        };
        if let Err(error) = tcp.set_nodelay(true) {
            debug!(%error, "cannot set TCP_NODELAY");
        }
        tokio::spawn(serve_tcp(
            tcp,
            peer,
            app.clone(),
            broker.clone(),
            http_stop.subscribe(),
        ));
    }
    info!("shutting down");
    broker.begin_shutdown();
    http_stop.send_replace(true);
    drop(listener);
    let shutdown_timeout = broker.config().shutdown_timeout();
    if tokio::time::timeout(shutdown_timeout, http_stop.closed())
        .await
        .is_err()
    {
        warn!("some HTTP requests did not finish in time");
    }
    stats.abort();
    if let Some(reloads) = reloads {
        reloads.abort();
    }
    broker.stop_relay().await;
    let deadline = shutdown_timeout + Duration::from_secs(1);
    if !broker.connections_closed(deadline).await {
        warn!("some connections did not close in time");
    }
    info!("stopped");
    Ok(())
}

/// What the accept loop does when `accept` fails. Errors about one
/// connection are skipped; running out of descriptors or memory backs off a
/// moment, so that the loop does not spin while nothing can be accepted.
async fn on_accept_error(error: &io::Error) {
    use io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        error.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    ) {
        return;
    }
    warn!(%error, "cannot accept a connection; retrying shortly");
    tokio::time::sleep(ACCEPT_BACKOFF).await;
}

/// Reloads the TLS certificate and key on every SIGHUP.
async fn reload_on_hangup(broker: Broker) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hangups = match signal(SignalKind::hangup()) {
            Ok(hangups) => hangups,
            Err(error) => {
                warn!(%error, "cannot listen for SIGHUP; the TLS certificate will not be reloaded");
                return;
            }
        };
        while hangups.recv().await.is_some() {
            let Some(tls) = broker.tls() else { return };
            match tls.reload() {
                Ok(()) => info!("TLS certificate reloaded"),
                Err(error) => warn!(%error, "TLS certificate not reloaded; the previous one stays"),
            }
        }
    }
    #[cfg(not(unix))]
    let _ = broker;
}

/// Serves one accepted connection: its TLS handshake (when the broker
/// serves TLS), then a WebSocket upgrade as its first request is answered
/// at once ([`handshake::serve_first_request`]); anything else is served
/// by hyper. A connection that does not complete its TLS handshake and
/// send a request head in time is closed.
async fn serve_tcp(
    tcp: TcpStream,
    peer: SocketAddr,
    app: Router,
    broker: Broker,
    mut shutdown: watch::Receiver<bool>,
) {
    let first = async {
        let mut stream = match broker.tls() {
            Some(tls) => Stream::Tls(Box::new(tls.accept(tcp).await?)),
            None => Stream::Plain(tcp),
        };
        let head = handshake::read_head(&mut stream).await?;
        Ok::<_, io::Error>((stream, head))
    };
    let read = tokio::select! {
        read = tokio::time::timeout(HEADER_READ_TIMEOUT, first) => read,
        () = stop_requested(&mut shutdown) => return,
    };
    let (stream, head) = match read {
        Ok(Ok(read)) => read,
        Ok(Err(error)) => {
            debug!(%peer, %error, "connection ended before its request");
            return;
        }
        Err(_) => {
            debug!(%peer, "no request in time; closing");
            return;
        }
    };
    let Some((stream, head)) = handshake::serve_first_request(stream, head, peer, &broker).await
    else {
        return;
    };
    // An HTTP connection holds a connection slot as a WebSocket does (while
    // shutting down, requests in flight are still answered).
    let admission = broker.try_admit();
    if admission.is_none() && !broker.is_shutting_down() {
        debug!(%peer, "HTTP connection refused at the connection limit");
        handshake::refuse(stream, &Refusal::TooManyConnections).await;
        return;
    }
    let limit = HttpRateLimit::new(broker.config().rate_limit);
    // Boxed: this task's state stays small for the upgrades above.
    Box::pin(serve_http(
        Prefixed::new(stream, head),
        peer,
        app,
        limit,
        shutdown,
    ))
    .await;
    drop(admission);
}

/// Completes once the broker asks HTTP connections to finish.
async fn stop_requested(shutdown: &mut watch::Receiver<bool>) {
    // The guard it returns must not live across an await.
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// Serves HTTP/1 on one connection until it closes or is upgraded.
/// When the broker shuts down, a request in progress is finished and the
/// connection is then closed.
async fn serve_http(
    io: Prefixed,
    peer: SocketAddr,
    app: Router,
    limit: Option<HttpRateLimit>,
    mut shutdown: watch::Receiver<bool>,
) {
    let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        if let Some(limit) = &limit {
            request.extensions_mut().insert(limit.clone());
        }
        let mut app = app.clone();
        async move { app.call(request.map(Body::new)).await }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        // A client that opens a connection and sends no request is dropped.
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        () = stop_requested(&mut shutdown) => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(error) = result {
        debug!(%peer, %error, "HTTP connection ended with an error");
    }
}

/// Resolves on SIGINT or SIGTERM: the shutdown signal to give [`serve`]
/// in a binary.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler cannot fail on unix");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernel completes handshakes into the backlog before the broker
    /// accepts them; with the default of 128 that mio and std use, a burst
    /// of 300 would leave the rest waiting for SYN retries.
    #[tokio::test]
    async fn bind_queues_a_burst_of_connections_beyond_128() {
        let listener = bind(SocketAddr::from(([127, 0, 0, 1], 0)), 1024).unwrap();
        let addr = listener.local_addr().unwrap();
        let connects = (0..300).map(|_| TcpStream::connect(addr));
        // Nothing accepts: each connection completes from the backlog alone.
        let connected = tokio::time::timeout(
            Duration::from_secs(5),
            futures_util::future::join_all(connects),
        )
        .await
        .expect("every connection completes without an accept");
        assert!(connected.iter().all(Result::is_ok));
    }
}
