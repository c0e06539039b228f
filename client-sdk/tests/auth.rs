//! Tokens against a real broker with auth on: a token provider that keeps a
//! connection alive past its first token's expiry, and refused tokens that
//! stop the client unless the provider has a new one.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::wait_event;
use futures_util::{FutureExt, StreamExt};
use starling_client::{ConnectOptions, Error, Event, ReconnectPolicy, TokenError};
use starling_tests::{broker_with, stop, within};

const SECRET: &str = "an sdk test secret";

/// An HS256 token for `sub`, valid for `seconds`, that may use `chat.>`.
fn token(sub: &str, seconds: u64) -> String {
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + seconds;
    let claims = serde_json::json!({
        "sub": sub,
        "exp": exp,
        "permissions": {"publish": ["chat.>"], "subscribe": ["chat.>"]},
    });
    let key = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()).unwrap();
    jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap()
}

/// A broker that takes HS256 tokens signed with [`SECRET`], with no leeway.
async fn auth_broker() -> starling_broker::RunningBroker {
    broker_with(|c| {
        c.jwt_secret = Some(SECRET.into());
        c.jwt_leeway_s = 0;
    })
    .await
}

fn fast_retries() -> ReconnectPolicy {
    ReconnectPolicy {
        initial_delay: Duration::from_millis(20),
        max_delay: Duration::from_millis(100),
        max_attempts: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_provider_keeps_the_connection_past_its_first_token() {
    let broker = auth_broker().await;
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let client = ConnectOptions::new()
        .token_provider(move || {
            counted.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, TokenError>(token("ada", 3)) }
        })
        .connect(broker.ws_url())
        .await
        .expect("connects with the provider's token");
    let mut events = client.events();
    let mut sub = within("subscribe", client.subscribe("chat.sdk"))
        .await
        .unwrap();
    // Past the first token's expiry (3 s, no leeway): refreshed in time.
    tokio::time::sleep(Duration::from_millis(4500)).await;
    assert!(
        calls.load(Ordering::SeqCst) >= 3,
        "{calls:?} provider calls"
    );
    within(
        "publish",
        client.publish_with_ack("chat.sdk", &"still here"),
    )
    .await
    .expect("the connection still works");
    let message = within("message", sub.next()).await.expect("a message");
    assert_eq!(message.from(), Some("ada"));
    // No disconnect happened.
    while let Some(Some(event)) = events.next().now_or_never() {
        assert!(!matches!(event, Event::Disconnected { .. }), "{event:?}");
    }
    client.close().await.unwrap();
    stop(broker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_token_fails_the_connect() {
    let broker = auth_broker().await;
    let error = ConnectOptions::new()
        .token("not-a-token")
        .connect(broker.ws_url())
        .await
        .unwrap_err();
    assert!(matches!(error, Error::Unauthorized { .. }), "{error:?}");
    assert_eq!(error.code(), Some(starling_client::ErrorCode::Unauthorized));
    stop(broker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_an_expiry_the_client_comes_back_only_with_a_new_token() {
    let broker = auth_broker().await;
    // The first token expires in 2 s and every refresh fails; on reconnect
    // the provider has a valid token again once, then only a refused one.
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let client = ConnectOptions::new()
        .reconnect(fast_retries())
        .token_provider(move || {
            let n = counted.fetch_add(1, Ordering::SeqCst);
            async move {
                match n {
                    0 => Ok(token("ada", 2)),
                    _ if n < 3 => Err::<String, TokenError>("the identity service is down".into()),
                    _ => Ok("not-a-token".to_owned()),
                }
            }
        })
        .connect(broker.ws_url())
        .await
        .unwrap();
    let mut events = client.events();
    let (code, _) = wait_event(&mut events, "the expiry", |event| match event {
        Event::Disconnected { code, reason } => Some((*code, reason.clone())),
        _ => None,
    })
    .await;
    assert_eq!(code, Some(1008));
    let reason = wait_event(&mut events, "the client to stop", |event| match event {
        Event::Closed { reason } => Some(reason.clone()),
        _ => None,
    })
    .await;
    assert!(reason.contains("refused token"), "{reason}");
    stop(broker).await;
}
