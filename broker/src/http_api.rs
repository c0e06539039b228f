//! The HTTP API on the broker's port: the router and its handlers.
//!
//! `/healthz`, `/metrics`, `POST /api/publish`, `GET /api/history`, `GET
//! /sse` ([`crate::sse`]), the
//! demo's files, and `/ws`
//! for the upgrades that reach hyper rather than the first-request path of
//! [`crate::handshake`] (which admits them through the same function).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use hyper::upgrade::Parts;
use hyper_util::rt::TokioIo;
use starling_protocol::http::{ErrorBody, Health, HistoryMessage, HistoryPage, PublishRequest};
use starling_protocol::{ErrorCode, HttpErrorCode, Topic};
use subtle::ConstantTimeEq;
use tracing::{debug, warn};

use crate::assets;
use crate::broker::{Broker, PublishError};
use crate::handshake::{self, Refusal};
use crate::history::{Position, Resume};
use crate::http_reply::{
    error_response, http_error, json_response, protocol_error, store_unavailable,
};
use crate::metrics::Source;
use crate::prefixed::Prefixed;
use crate::rate::{RateLimiter, Verdict};
use crate::sse;
use crate::sync::lock;

/// The router of every endpoint.
pub(crate) fn router(broker: Broker) -> Router {
    Router::new()
        .route("/ws", any(upgrade))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/api/publish", post(publish))
        .route("/api/history", get(history))
        .route("/sse", get(sse::sse))
        .route("/", get(assets::index))
        .route("/{*path}", get(assets::asset))
        .method_not_allowed_fallback(|| async {
            http_error(
                HttpErrorCode::MethodNotAllowed,
                "method not allowed on this path",
            )
        })
        .with_state(broker)
}

/// The answer to a refused upgrade.
fn refused(refusal: &Refusal) -> Response {
    let mut response = error_response(refusal.status(), refusal.body());
    response.headers_mut().extend(refusal.headers());
    response
}

/// `GET /ws` reached through hyper: admitted by the same checks as on the
/// first-request path; the connection starts once hyper hands the socket
/// back.
async fn upgrade(
    State(broker): State<Broker>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    let query = request.uri().query();
    let admitted = match handshake::admit(&broker, request.method(), query, request.headers(), peer)
    {
        Ok(admitted) => admitted,
        Err(refusal) => return refused(&refusal),
    };
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    for (name, value) in admitted.response_headers() {
        headers.insert(
            HeaderName::from_static(name),
            HeaderValue::from_str(value).expect("101 header values are ASCII"),
        );
    }

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
            warn!(%peer, "upgraded connection is not a client stream");
            return;
        };
        let (stream, unread) = io.into_inner().into_parts();
        let early = if unread.is_empty() {
            read_buf
        } else {
            [&read_buf[..], &unread[..]].concat().into()
        };
        admitted.start(stream, early);
    });
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

/// The refusal of an `/api/...` request, if it is refused: with `--api-key`,
/// it must carry `Authorization: Bearer KEY` (compared in constant time);
/// with JWT auth on and no API key, every request is refused.
fn api_refusal(broker: &Broker, headers: &HeaderMap) -> Option<Response> {
    let config = broker.config();
    let refuse = |message: &str| {
        broker.metrics().error(ErrorCode::Unauthorized);
        let mut response = error_response(
            StatusCode::UNAUTHORIZED,
            ErrorBody::new(ErrorCode::Unauthorized, message),
        );
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        Some(response)
    };
    let Some(key) = &config.api_key else {
        if config.auth_enabled() {
            return refuse("the HTTP API is closed: JWT auth is on and no --api-key is set");
        }
        return None;
    };
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim());
    match presented {
        None => refuse("missing Authorization: Bearer with the API key"),
        Some(token) if bool::from(token.as_bytes().ct_eq(key.expose().as_bytes())) => None,
        Some(_) => refuse("wrong API key"),
    }
}

/// What every `/api/...` request passes first: the API key (see
/// [`api_refusal`]), then the connection's `--rate-limit` (429).
fn api_gate(broker: &Broker, request: &Request) -> Option<Response> {
    if let Some(refused) = api_refusal(broker, request.headers()) {
        return Some(refused);
    }
    if let Some(limit) = request.extensions().get::<HttpRateLimit>()
        && !limit.allows()
    {
        return Some(protocol_error(
            broker,
            ErrorCode::RateLimited,
            "over --rate-limit requests per second on this connection",
        ));
    }
    None
}

/// Whether the request's body is declared `application/json` (any
/// parameters, such as a charset, allowed).
fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .is_some_and(|media| media.trim().eq_ignore_ascii_case("application/json"))
}

/// The `--rate-limit` of one HTTP connection, shared by its requests:
/// publishes over it get 429 `rate_limited`.
#[derive(Debug, Clone)]
pub(crate) struct HttpRateLimit(Arc<Mutex<RateLimiter>>);

impl HttpRateLimit {
    /// The limit of a new connection; `None` when there is none.
    pub(crate) fn new(rate: u32) -> Option<Self> {
        (rate > 0).then(|| HttpRateLimit(Arc::new(Mutex::new(RateLimiter::new(rate)))))
    }

    fn allows(&self) -> bool {
        lock(&self.0).check(tokio::time::Instant::now()) == Verdict::Allow
    }
}

/// How long a request body may take to arrive once its head has.
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// `POST /api/publish`: publish from a backend without a WebSocket.
async fn publish(State(broker): State<Broker>, request: Request) -> Response {
    if let Some(refused) = api_gate(&broker, &request) {
        return refused;
    }
    if !is_json(request.headers()) {
        // A cross-site form or `no-cors` fetch cannot send this type.
        return http_error(
            HttpErrorCode::UnsupportedMediaType,
            "the body must be Content-Type: application/json",
        );
    }
    let limit = broker.config().max_message_bytes;
    let body = axum::body::to_bytes(request.into_body(), limit);
    let body = match tokio::time::timeout(BODY_READ_TIMEOUT, body).await {
        Ok(Ok(body)) => body,
        Err(_) => {
            let mut response = http_error(
                HttpErrorCode::RequestTimeout,
                format!(
                    "the body did not arrive within {} s",
                    BODY_READ_TIMEOUT.as_secs()
                ),
            );
            // The rest of a slow body is not waited for.
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            return response;
        }
        Ok(Err(_)) => {
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
    match broker
        .publish(request.topic, request.payload, Source::Http)
        .await
    {
        Ok(published) => match published.position() {
            // Epochs are made of `[0-9a-z-]`: nothing to escape.
            Some(Position { offset, epoch }) => json_response(
                StatusCode::OK,
                format!("{{\"offset\":{offset},\"epoch\":\"{epoch}\"}}"),
            ),
            None => json_response(StatusCode::ACCEPTED, "{}".to_owned()),
        },
        Err(PublishError::Unavailable(error)) => store_unavailable(&broker, &error),
        Err(error) => protocol_error(&broker, error.code(), error.to_string()),
    }
}

/// How many messages `GET /api/history` returns unless told.
const HISTORY_LIMIT: usize = 100;

/// The most messages one `GET /api/history` returns.
const HISTORY_MAX_LIMIT: usize = 1_000;

/// The parameters of `GET /api/history`.
#[derive(Debug, PartialEq)]
struct HistoryQuery {
    topic: Topic,
    from: Option<Resume>,
    limit: usize,
}

impl HistoryQuery {
    /// Reads `topic`, `since`, `epoch` and `limit` from a query string
    /// (others are ignored); errors are the code and message to answer with.
    fn parse(query: &str) -> Result<Self, (ErrorCode, String)> {
        let (mut topic, mut since, mut epoch, mut limit) = (None, None, None, None);
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            match &*key {
                "topic" => topic = Some(value.into_owned()),
                "since" => since = Some(value.into_owned()),
                "epoch" => epoch = Some(value.into_owned()),
                "limit" => limit = Some(value.into_owned()),
                _ => {}
            }
        }
        let bad = |message: String| (ErrorCode::BadFrame, message);
        let topic = topic.ok_or_else(|| bad("missing parameter `topic`".into()))?;
        let topic = Topic::new(&topic).map_err(|error| {
            (
                ErrorCode::InvalidTopic,
                format!(
                    "{topic:?} is not a topic (history is per topic, not per pattern): {error}"
                ),
            )
        })?;
        let since = since
            .map(|since| {
                since
                    .parse::<u64>()
                    .map_err(|_| bad(format!("`since` must be an offset, not {since:?}")))
            })
            .transpose()?;
        let limit = match limit {
            None => HISTORY_LIMIT,
            Some(limit) => limit
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=HISTORY_MAX_LIMIT).contains(n))
                .ok_or_else(|| {
                    bad(format!(
                        "`limit` must be 1 to {HISTORY_MAX_LIMIT}, not {limit:?}"
                    ))
                })?,
        };
        Ok(HistoryQuery {
            topic,
            from: since.map(|since| Resume {
                since,
                epoch: epoch.map(Into::into),
            }),
            limit,
        })
    }
}

/// `GET /api/history?topic=T&since=K&epoch=E&limit=L`: a topic's retained
/// messages for a backend, without a WebSocket.
async fn history(State(broker): State<Broker>, request: Request) -> Response {
    if let Some(refused) = api_gate(&broker, &request) {
        return refused;
    }
    let query = match HistoryQuery::parse(request.uri().query().unwrap_or("")) {
        Ok(query) => query,
        Err((code, message)) => return protocol_error(&broker, code, message),
    };
    let excerpt = broker.history(&query.topic, query.from.as_ref(), query.limit);
    let excerpt = match excerpt.get().await {
        Ok(excerpt) => excerpt,
        Err(error) => return store_unavailable(&broker, &error),
    };
    let Some(excerpt) = excerpt else {
        return http_error(
            HttpErrorCode::NotFound,
            format!("topic {} keeps no history", query.topic),
        );
    };
    let page = HistoryPage {
        topic: query.topic,
        epoch: excerpt.position.epoch,
        offset: excerpt.position.offset,
        reset: excerpt.reset,
        missed: excerpt.missed,
        messages: excerpt
            .messages
            .iter()
            .map(|delivery| HistoryMessage {
                offset: delivery.offset.unwrap_or_default(),
                payload: delivery.payload.clone(),
                from: delivery.from.clone(),
            })
            .collect(),
    };
    json_response(StatusCode::OK, starling_protocol::http::to_json(&page))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_queries_are_read_strictly() {
        let query = HistoryQuery::parse("topic=chat.room&since=41&epoch=k3x9&limit=5&x=1").unwrap();
        assert_eq!(
            query,
            HistoryQuery {
                topic: Topic::new("chat.room").unwrap(),
                from: Some(Resume {
                    since: 41,
                    epoch: Some("k3x9".into())
                }),
                limit: 5,
            }
        );
        let query = HistoryQuery::parse("topic=chat.room").unwrap();
        assert_eq!((query.from, query.limit), (None, HISTORY_LIMIT));
        let code = |q: &str| HistoryQuery::parse(q).unwrap_err().0;
        assert_eq!(code(""), ErrorCode::BadFrame);
        assert_eq!(code("topic=chat.*"), ErrorCode::InvalidTopic);
        assert_eq!(code("topic=a&since=-1"), ErrorCode::BadFrame);
        assert_eq!(code("topic=a&limit=0"), ErrorCode::BadFrame);
        assert_eq!(code("topic=a&limit=1001"), ErrorCode::BadFrame);
    }
}
