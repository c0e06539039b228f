//! The listener: WebSocket upgrades at `/ws` and the HTTP API on the same port.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use hyper::body::Incoming;
use hyper::upgrade::Parts;
use hyper_util::rt::{TokioIo, TokioTimer};
use starling_protocol::http::{ErrorBody, Health, PublishRequest};
use starling_protocol::{Codec, ErrorCode};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tower_service::Service;
use tracing::{debug, info, warn};

use crate::accept::{self, Prefixed};
use crate::broker::Broker;
use crate::config::Config;
use crate::connection::{ConnCtx, run_connection};
use crate::metrics::Source;
use crate::{stats, web};

/// How long the accept loop waits after an error such as running out of
/// file descriptors.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// How long an HTTP connection may take to send a request's headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// A JSON answer with a status.
fn json_response(status: StatusCode, body: String) -> Response {
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

/// An HTTP error with the body `{"code": "...", "message": "..."}`.
fn error_response(status: StatusCode, body: ErrorBody) -> Response {
    json_response(status, body.to_json())
}

fn protocol_error(broker: &Broker, code: ErrorCode, message: impl Into<String>) -> Response {
    broker.metrics().error(code);
    let status = StatusCode::from_u16(code.http_status()).unwrap_or(StatusCode::BAD_REQUEST);
    error_response(status, ErrorBody::new(code, message))
}

/// The router of every endpoint.
pub fn router(broker: Broker) -> Router {
    Router::new()
        .route("/ws", any(upgrade))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/api/publish", post(publish))
        .route("/", get(web::index))
        .route("/{*path}", get(web::asset))
        .method_not_allowed_fallback(|| async {
            error_response(
                StatusCode::METHOD_NOT_ALLOWED,
                ErrorBody::other("method_not_allowed", "method not allowed on this path"),
            )
        })
        .with_state(broker)
}

fn header_has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|v| v.trim().eq_ignore_ascii_case(token))
}

/// A WebSocket handshake that passed its checks.
pub(crate) struct Handshake {
    /// The connection's codec.
    pub(crate) codec: Codec,
    /// Whether the client offered a subprotocol (then it is echoed).
    pub(crate) echo: bool,
    /// The `Sec-WebSocket-Accept` value.
    pub(crate) accept: String,
}

/// Checks a WebSocket upgrade request to `/ws`: method, upgrade headers,
/// version, key and subprotocol; the error is the answer to send.
pub(crate) fn check_upgrade(
    method: &Method,
    headers: &HeaderMap,
) -> Result<Handshake, Box<Response>> {
    let is_upgrade = method == Method::GET
        && header_has_token(headers, header::CONNECTION, "upgrade")
        && header_has_token(headers, header::UPGRADE, "websocket");
    if !is_upgrade {
        return Err(Box::new(error_response(
            StatusCode::BAD_REQUEST,
            ErrorBody::other(
                "not_websocket",
                "/ws takes WebSocket upgrades only (GET with Upgrade: websocket)",
            ),
        )));
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .map(HeaderValue::as_bytes)
        != Some(b"13")
    {
        let mut response = error_response(
            StatusCode::UPGRADE_REQUIRED,
            ErrorBody::other("not_websocket", "unsupported WebSocket version; use 13"),
        );
        response.headers_mut().insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        return Err(Box::new(response));
    }
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
        return Err(Box::new(error_response(
            StatusCode::BAD_REQUEST,
            ErrorBody::other("not_websocket", "missing Sec-WebSocket-Key"),
        )));
    };
    let accept = derive_accept_key(key.as_bytes());
    let offers = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok());
    match Codec::negotiate(offers) {
        Ok((codec, echo)) => Ok(Handshake {
            codec,
            echo,
            accept,
        }),
        Err(error) => Err(Box::new(error_response(
            StatusCode::BAD_REQUEST,
            ErrorBody::other("unsupported_subprotocol", error.to_string()),
        ))),
    }
}

/// `GET /ws`: the WebSocket handshake, with the codec chosen from
/// `Sec-WebSocket-Protocol`. Most upgrades are completed before hyper
/// sees them (`accept.rs`); this handler answers the rest: refusals, and
/// upgrades that follow another request on a kept-alive connection.
async fn upgrade(
    State(broker): State<Broker>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    let Handshake {
        codec,
        echo,
        accept,
    } = match check_upgrade(request.method(), request.headers()) {
        Ok(handshake) => handshake,
        Err(refusal) => return *refusal,
    };
    let Some(admission) = broker.try_admit() else {
        broker.metrics().connections_refused.inc();
        let body = if broker.is_shutting_down() {
            ErrorBody::other(
                "shutting_down",
                "the broker is shutting down; connect to another node",
            )
        } else {
            ErrorBody::other(
                "too_many_connections",
                "the broker is at its connection limit",
            )
        };
        return error_response(StatusCode::SERVICE_UNAVAILABLE, body);
    };

    let on_upgrade = hyper::upgrade::on(request);
    tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(upgraded) => upgraded,
            Err(error) => {
                debug!(%peer, %error, "upgrade failed");
                return;
            }
        };
        // The bare socket, and whatever the client sent after its request.
        let Ok(Parts { io, read_buf, .. }) = upgraded.downcast::<TokioIo<Prefixed>>() else {
            warn!(%peer, "upgraded connection is not a TCP stream");
            return;
        };
        let (tcp, unread) = io.into_inner().into_parts();
        let early = if unread.is_empty() {
            read_buf
        } else {
            [&read_buf[..], &unread[..]].concat().into()
        };
        let ctx = ConnCtx {
            broker,
            admission,
            codec,
            peer,
        };
        // A task of its own, holding only what the connection needs.
        tokio::spawn(run_connection(tcp, early, ctx));
    });

    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = response.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(
        header::SEC_WEBSOCKET_ACCEPT,
        HeaderValue::from_str(&accept).expect("base64 is a valid header value"),
    );
    if echo {
        h.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(codec.subprotocol()),
        );
    }
    response
}

/// `GET /healthz`: 200 while serving, 503 while shutting down.
async fn healthz(State(broker): State<Broker>) -> Response {
    let cluster = broker.cluster_up();
    let (status, state) = if broker.is_shutting_down() {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting_down")
    } else if cluster == Some(false) {
        // Local clients are still served: ready, but say so.
        (StatusCode::OK, "degraded")
    } else {
        (StatusCode::OK, "ok")
    };
    let body = Health {
        status: state.into(),
        node: broker.node_id().to_string(),
        connections: broker.metrics().connections.get().max(0) as u64,
        cluster: match cluster {
            None => "off",
            Some(true) => "up",
            Some(false) => "down",
        }
        .into(),
    };
    json_response(status, starling_protocol::http::to_json(&body))
}

/// `GET /metrics`: Prometheus (OpenMetrics) text.
async fn metrics(State(broker): State<Broker>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
        )],
        broker.metrics().encode(),
    )
        .into_response()
}

/// `POST /api/publish`: publish from a backend without a WebSocket.
async fn publish(State(broker): State<Broker>, request: Request) -> Response {
    let limit = broker.config().max_message_bytes;
    let body = match axum::body::to_bytes(request.into_body(), limit).await {
        Ok(body) => body,
        Err(_) => {
            return protocol_error(
                &broker,
                ErrorCode::MessageTooLarge,
                format!("body is over the limit of {limit} bytes"),
            );
        }
    };
    let request = match PublishRequest::from_json(&body) {
        Ok(request) => request,
        Err(error) => return protocol_error(&broker, error.code(), error.to_string()),
    };
    match broker.publish(request.topic, request.payload, Source::Http) {
        Ok(published) => match published.offset {
            Some(offset) => json_response(StatusCode::OK, format!("{{\"offset\":{offset}}}")),
            None => json_response(StatusCode::ACCEPTED, "{}".to_owned()),
        },
        Err(error) => protocol_error(&broker, error.code(), error.to_string()),
    }
}

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
    /// The WebSocket URL of the broker, `ws://ADDR/ws`.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// The HTTP base URL of the broker, `http://ADDR`.
    pub fn http_url(&self) -> String {
        format!("http://{}", self.addr)
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
    let broker = Broker::new(config);
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
/// Each TCP connection is served by hyper's HTTP/1 server; the WebSocket
/// upgrade at `/ws` hands the bare TCP stream to the connection task, which
/// speaks WebSocket on it without hyper in between.
pub async fn serve(
    listener: TcpListener,
    broker: Broker,
    signal: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let addr = listener.local_addr()?;
    broker.join_cluster().map_err(io::Error::other)?;
    info!(%addr, node = %broker.node_id(), "listening");
    let stats = tokio::spawn(stats::run(broker.clone()));
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
    broker.leave_cluster();
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

/// Serves one accepted connection: a WebSocket upgrade as its first
/// request is completed at once (`accept.rs`); anything else is served by
/// hyper. A connection that does not send a request head in time is closed.
async fn serve_tcp(
    tcp: TcpStream,
    peer: SocketAddr,
    app: Router,
    broker: Broker,
    mut shutdown: watch::Receiver<bool>,
) {
    let read = tokio::select! {
        read = tokio::time::timeout(HEADER_READ_TIMEOUT, accept::read_head(&tcp)) => read,
        () = stop_requested(&mut shutdown) => return,
    };
    let head = match read {
        Ok(Ok(head)) => head,
        Ok(Err(error)) => {
            debug!(%peer, %error, "connection ended before its request");
            return;
        }
        Err(_) => {
            debug!(%peer, "no request in time; closing");
            return;
        }
    };
    let (tcp, head) = match accept::fast_upgrade(&head) {
        Some(upgrade) => match accept::complete(tcp, head, upgrade, peer, broker).await {
            None => return,
            Some(refused) => refused,
        },
        None => (tcp, head),
    };
    // Boxed: this task's state stays small for the upgrades above.
    Box::pin(serve_http(Prefixed::new(tcp, head), peer, app, shutdown)).await;
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
    mut shutdown: watch::Receiver<bool>,
) {
    let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(peer));
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
