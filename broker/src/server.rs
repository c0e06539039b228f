//! The listener: WebSocket upgrades at `/ws` and the HTTP API on the same port.

use std::future::Future;
use std::io;
use std::net::SocketAddr;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use hyper_util::rt::TokioIo;
use starling_protocol::http::{ErrorBody, Health, PublishRequest};
use starling_protocol::{Codec, ErrorCode};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tracing::{debug, info, warn};

use crate::broker::Broker;
use crate::config::Config;
use crate::connection::{ConnCtx, run_connection};
use crate::metrics::Source;
use crate::{stats, web};

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

/// `GET /ws`: the WebSocket handshake, with the codec chosen from
/// `Sec-WebSocket-Protocol`.
async fn upgrade(
    State(broker): State<Broker>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    let headers = request.headers();
    let is_upgrade = request.method() == Method::GET
        && header_has_token(headers, header::CONNECTION, "upgrade")
        && header_has_token(headers, header::UPGRADE, "websocket");
    if !is_upgrade {
        return error_response(
            StatusCode::BAD_REQUEST,
            ErrorBody::other(
                "not_websocket",
                "/ws takes WebSocket upgrades only (GET with Upgrade: websocket)",
            ),
        );
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
        return response;
    }
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
        return error_response(
            StatusCode::BAD_REQUEST,
            ErrorBody::other("not_websocket", "missing Sec-WebSocket-Key"),
        );
    };
    let accept = derive_accept_key(key.as_bytes());
    let offers = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok());
    let (codec, echo) = match Codec::negotiate(offers) {
        Ok(chosen) => chosen,
        Err(error) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                ErrorBody::other("unsupported_subprotocol", error.to_string()),
            );
        }
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
    let config = ws_config(broker.config());
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let ws = WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    Role::Server,
                    Some(config),
                )
                .await;
                let ctx = ConnCtx {
                    broker,
                    admission,
                    codec,
                    peer: peer.to_string(),
                };
                run_connection(ws, ctx).await;
            }
            Err(error) => debug!(%peer, %error, "upgrade failed"),
        }
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

/// The WebSocket layer's settings: small buffers for many mostly idle
/// connections, and a hard cap on incoming messages.
fn ws_config(config: &Config) -> WebSocketConfig {
    let hard = config.hard_message_limit();
    WebSocketConfig::default()
        .read_buffer_size(config.read_buffer_bytes.max(256))
        // Frames are batched by the connection task, which flushes once per batch.
        .write_buffer_size(config.outbound_queue_bytes.max(4096))
        .max_write_buffer_size(usize::MAX)
        .max_message_size(Some(hard))
        .max_frame_size(Some(hard))
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

/// Binds `config.listen` and serves in a background task.
pub async fn start(config: Config) -> io::Result<RunningBroker> {
    let listener = TcpListener::bind(config.listen).await?;
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
/// stops accepting, closes every client with 1001, and waits for them (up to
/// the shutdown timeout).
pub async fn serve(
    listener: TcpListener,
    broker: Broker,
    signal: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    use axum::serve::ListenerExt;

    let addr = listener.local_addr()?;
    broker.join_cluster().map_err(io::Error::other)?;
    info!(%addr, node = %broker.node_id(), "listening");
    let stats = tokio::spawn(stats::run(broker.clone()));
    let app = router(broker.clone()).into_make_service_with_connect_info::<SocketAddr>();
    let listener = listener.tap_io(|tcp| {
        if let Err(error) = tcp.set_nodelay(true) {
            debug!(%error, "cannot set TCP_NODELAY");
        }
    });
    let on_signal = broker.clone();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            signal.await;
            info!("shutting down");
            on_signal.begin_shutdown();
        })
        .await?;
    stats.abort();
    broker.leave_cluster();
    let deadline = broker.config().shutdown_timeout() + std::time::Duration::from_secs(1);
    if !broker.connections_closed(deadline).await {
        warn!("some connections did not close in time");
    }
    info!("stopped");
    Ok(())
}
