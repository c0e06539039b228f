//! The answers the HTTP endpoints share: JSON bodies, and errors as
//! `{"code": "...", "message": "..."}` with the status of their code.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use starling_protocol::http::ErrorBody;
use starling_protocol::{ErrorCode, HttpErrorCode};

use crate::broker::Broker;
use crate::relay::StoreUnavailable;

/// A JSON answer with a status.
pub(crate) fn json_response(status: StatusCode, body: String) -> Response {
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
pub(crate) fn error_response(status: StatusCode, body: ErrorBody) -> Response {
    json_response(status, body.to_json())
}

pub(crate) fn protocol_error(
    broker: &Broker,
    code: ErrorCode,
    message: impl Into<String>,
) -> Response {
    broker.metrics().error(code);
    let status = StatusCode::from_u16(code.http_status()).unwrap_or(StatusCode::BAD_REQUEST);
    error_response(status, ErrorBody::new(code, message))
}

/// The history store did not answer: 503, code `internal`; the request may
/// be tried again.
pub(crate) fn store_unavailable(broker: &Broker, error: &StoreUnavailable) -> Response {
    broker.metrics().error(ErrorCode::Internal);
    let body = ErrorBody::new(ErrorCode::Internal, error.to_string());
    error_response(StatusCode::SERVICE_UNAVAILABLE, body)
}

/// An HTTP-only error, with the status of its code.
pub(crate) fn http_error(code: HttpErrorCode, message: impl Into<String>) -> Response {
    let status = StatusCode::from_u16(code.http_status()).unwrap_or(StatusCode::BAD_REQUEST);
    error_response(status, ErrorBody::http(code, message))
}
