//! A Server-Sent Events client for the tests: `GET /sse`, read event by
//! event.

use crate::{WAIT, within};

/// One event of a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event` field (`message` when absent).
    pub event: String,
    /// The `id` field, when there is one.
    pub id: Option<String>,
    /// The `data` lines, joined by newlines.
    pub data: String,
}

/// An open `text/event-stream` response.
pub struct SseStream {
    response: reqwest::Response,
    buffer: String,
    /// Comment lines seen (keep-alives).
    pub comments: usize,
}

impl SseStream {
    /// Opens `url` with the `headers` given; fails the test unless the
    /// answer is 200 `text/event-stream`.
    pub async fn open(url: &str, headers: &[(&str, &str)]) -> SseStream {
        let response = Self::request(url, headers).await;
        let status = response.status().as_u16();
        let kind = response
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap_or_default().to_owned());
        assert_eq!(
            (status, kind.as_deref()),
            (200, Some("text/event-stream")),
            "{url}"
        );
        SseStream {
            response,
            buffer: String::new(),
            comments: 0,
        }
    }

    /// The raw answer to `GET url`, for refusals.
    pub async fn request(url: &str, headers: &[(&str, &str)]) -> reqwest::Response {
        let mut request = reqwest::Client::new().get(url);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        within("sse request", request.send())
            .await
            .expect("sse request")
    }

    /// The next event (comments are counted, not returned); `None` when the
    /// stream ended. Fails the test when none comes within [`WAIT`].
    pub async fn next(&mut self) -> Option<SseEvent> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            while let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                if let Some(event) = self.parse(&block) {
                    return Some(event);
                }
            }
            let chunk = tokio::time::timeout_at(deadline, self.response.chunk())
                .await
                .expect("an event in time")
                .expect("a readable stream")?;
            self.buffer.push_str(&String::from_utf8_lossy(&chunk));
        }
    }

    fn parse(&mut self, block: &str) -> Option<SseEvent> {
        let mut event = SseEvent {
            event: "message".into(),
            id: None,
            data: String::new(),
        };
        let mut fields = 0;
        for line in block.lines().filter(|line| !line.is_empty()) {
            if line.starts_with(':') {
                self.comments += 1;
                continue;
            }
            let (name, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            fields += 1;
            match name {
                "event" => event.event = value.into(),
                "id" => event.id = Some(value.into()),
                "data" => {
                    if !event.data.is_empty() {
                        event.data.push('\n');
                    }
                    event.data.push_str(value);
                }
                _ => {}
            }
        }
        (fields > 0).then_some(event)
    }
}
