//! HTTP helpers: requests with `reqwest`, `/metrics` figures, and fields of
//! JSON bodies.

use std::time::Duration;

use starling_protocol::{Payload, Value};

use crate::{WAIT, within};

/// Fetches a URL; returns the status and the body.
pub async fn http_get(url: &str) -> (u16, String) {
    let response = within("http get", reqwest::get(url))
        .await
        .expect("http get");
    let status = response.status().as_u16();
    (status, response.text().await.expect("body"))
}

/// POSTs `body` as `application/json`, as a backend does; returns the
/// status and the body.
pub async fn http_post(url: &str, body: impl Into<String>) -> (u16, String) {
    let response = within(
        "http post",
        reqwest::Client::new()
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.into())
            .send(),
    )
    .await
    .expect("http post");
    let status = response.status().as_u16();
    (status, response.text().await.expect("body"))
}

/// Reads one counter or gauge from `/metrics` text (labels included in `name`).
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|line| {
            let (key, value) = line.rsplit_once(' ')?;
            (key == name).then(|| value.parse().ok()).flatten()
        })
        .unwrap_or(0.0)
}

/// Polls `GET /metrics` until `name` reads `expected`; returns the last text.
/// Fails the test when it does not within [`WAIT`].
pub async fn wait_for_metric(http_url: &str, name: &str, expected: f64) -> String {
    let url = format!("{http_url}/metrics");
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (status, text) = http_get(&url).await;
        assert_eq!(status, 200, "{text}");
        let value = metric(&text, name);
        if value == expected {
            return text;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("{name} is {value}, expected {expected}; /metrics:\n{text}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// An HTTP answer: status, `Content-Type` and body.
#[derive(Debug, Clone)]
pub struct HttpAnswer {
    /// The status code.
    pub status: u16,
    /// The `Content-Type` header, empty when absent.
    pub content_type: String,
    /// The body, as text.
    pub body: String,
}

/// Sends `method url` with an optional body (declared JSON); returns
/// status, content type and body.
pub async fn http_request(method: &str, url: &str, body: Option<Vec<u8>>) -> HttpAnswer {
    let json = [("content-type", "application/json")];
    let headers: &[(&str, &str)] = if body.is_some() { &json } else { &[] };
    http_request_with(method, url, headers, body).await
}

/// [`http_request`] with these headers (and no others).
pub async fn http_request_with(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<Vec<u8>>,
) -> HttpAnswer {
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("a valid method");
    let mut request = reqwest::Client::new().request(method, url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    if let Some(body) = body {
        request = request.body(body);
    }
    let response = within("http request", request.send())
        .await
        .expect("http request");
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap_or_default().to_owned())
        .unwrap_or_default();
    let body = within("http body", response.text()).await.expect("body");
    HttpAnswer {
        status,
        content_type,
        body,
    }
}

/// Parses `json` (one JSON value) into a [`Value`].
pub fn parse_json(json: &str) -> Value {
    Payload::from_json(json)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {json}"))
        .to_value()
}

/// The field `key` of the JSON object `json`, when present.
pub fn json_field(json: &str, key: &str) -> Option<Value> {
    match parse_json(json) {
        Value::Map(entries) => entries
            .into_iter()
            .find_map(|(k, v)| (k == Value::Str(key.to_owned())).then_some(v)),
        other => panic!("not a JSON object: {other:?}"),
    }
}

/// The string field `key` of the JSON object `json`; fails the test when it
/// is missing or not a string.
pub fn json_str(json: &str, key: &str) -> String {
    match json_field(json, key) {
        Some(Value::Str(s)) => s,
        other => panic!("field {key:?} of {json} is not a string: {other:?}"),
    }
}

/// Checks that `GET /api/history` pages are bounded in bytes (4 MiB of
/// messages) as well as in count, on `broker`, whose topics keep at least 6
/// messages: six messages of about 900 KB on `topic`, then the latest page
/// holds the newest four, and a page from `since=0` the oldest four.
pub async fn assert_history_pages_are_bounded_in_bytes(broker: &crate::TestBroker, topic: &str) {
    let mut publisher = broker.json().await;
    let big = format!("\"{}\"", "x".repeat(900_000));
    for _ in 0..6 {
        publisher.publish(topic, &big).await;
    }
    let offsets = |page: &str| -> Vec<u64> {
        let page: serde_json::Value = serde_json::from_str(page).expect("a JSON page");
        page["messages"]
            .as_array()
            .expect("messages")
            .iter()
            .map(|m| m["offset"].as_u64().expect("an offset"))
            .collect()
    };
    let base = format!("{}/api/history?topic={topic}", broker.http_url());
    let (status, latest) = http_get(&base).await;
    assert_eq!(status, 200);
    assert_eq!(offsets(&latest), [3, 4, 5, 6]);
    let (status, first) = http_get(&format!("{base}&since=0")).await;
    assert_eq!(status, 200);
    assert_eq!(offsets(&first), [1, 2, 3, 4]);
}
