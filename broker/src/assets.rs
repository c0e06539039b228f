//! The browser demo, embedded in the binary and served at `/`.

use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use starling_protocol::HttpErrorCode;
use starling_protocol::http::ErrorBody;

/// One embedded file.
struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

macro_rules! asset {
    ($path:literal, $type:literal) => {
        Asset {
            path: $path,
            content_type: $type,
            body: include_bytes!(concat!("../web/", $path)),
        }
    };
}

/// The files of `web-demo/`.
const ASSETS: &[Asset] = &[
    asset!("index.html", "text/html; charset=utf-8"),
    asset!("starling.js", "text/javascript; charset=utf-8"),
    asset!("app.js", "text/javascript; charset=utf-8"),
    asset!("chart.js", "text/javascript; charset=utf-8"),
    asset!("style.css", "text/css; charset=utf-8"),
    asset!("favicon.svg", "image/svg+xml"),
];

fn serve(path: &str) -> Response {
    match ASSETS.iter().find(|a| a.path == path) {
        Some(asset) => (
            [
                (
                    header::CONTENT_TYPE,
                    HeaderValue::from_static(asset.content_type),
                ),
                (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            ],
            asset.body,
        )
            .into_response(),
        None => (
            StatusCode::NOT_FOUND,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            ErrorBody::http(HttpErrorCode::NotFound, format!("no such path: /{path}")).to_json(),
        )
            .into_response(),
    }
}

/// `GET /`: the demo page.
pub(crate) async fn index() -> Response {
    serve("index.html")
}

/// `GET /{path}`: the demo's other files.
pub(crate) async fn asset(Path(path): Path<String>) -> Response {
    serve(&path)
}
