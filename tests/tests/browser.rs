//! The demo page (`web-demo/`) in real headless Chromium, driven through
//! chromedriver with fantoccini: chat between two pages and from Rust, HTML
//! in messages shown as text, live dashboard charts, recovery after a broker
//! restart (and the chat's notice when its history could not be resumed), a
//! broker with auth on (a token in the URL fragment, or the page saying that
//! one is needed), and a screenshot of each view in `target/e2e/`.
//!
//! Needs the Debian packages `chromium` and `chromium-driver`; `.ci/run`
//! installs them. Without them these tests fail (they never skip).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use fantoccini::key::Key;
use fantoccini::{Client as Browser, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Value as Json, json};
use starling_protocol::Filter;
use starling_tests::{TestBroker, broker_on, broker_on_with, http_get, json_field};
use tokio::time::Instant;

/// The browser binary, as packaged by Debian.
const CHROMIUM: &str = "/usr/bin/chromium";
/// How long any one condition in the page may take to come true.
const PATIENCE: Duration = Duration::from_secs(15);
const INSTALL_HINT: &str = "install the Debian packages `chromium` and `chromium-driver` \
     (apt-get install -y chromium chromium-driver; .ci/run does it when they are missing)";

/// One browser test at a time: Chromium instances contend for the CPUs.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

// ------------------------------------------------------------------ fixtures

/// `chromedriver` on a free loopback port, killed on drop, with the browser
/// profiles it was given (removed on drop).
struct Driver {
    child: Child,
    url: String,
    profiles: Vec<PathBuf>,
    sessions: Vec<Browser>,
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local addr").port()
}

impl Driver {
    async fn start() -> Driver {
        assert!(
            Path::new(CHROMIUM).exists(),
            "{CHROMIUM} not found: {INSTALL_HINT}"
        );
        let chromedriver = find_in_path("chromedriver")
            .or_else(|| Some(PathBuf::from("/usr/bin/chromedriver")).filter(|p| p.is_file()))
            .unwrap_or_else(|| panic!("chromedriver not found: {INSTALL_HINT}"));
        let port = free_port();
        let child = Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", chromedriver.display()));
        let driver = Driver {
            child,
            url: format!("http://127.0.0.1:{port}"),
            profiles: Vec::new(),
            sessions: Vec::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(response) = reqwest::get(format!("{}/status", driver.url)).await
                && response.status().is_success()
            {
                return driver;
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver did not answer on port {port} within 10 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A new headless Chromium session with a fresh profile, 1280×860.
    async fn browser(&mut self) -> Browser {
        static PROFILES: AtomicUsize = AtomicUsize::new(0);
        let profile = std::env::temp_dir().join(format!(
            "starling-e2e-{}-{}",
            std::process::id(),
            PROFILES.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&profile);
        std::fs::create_dir_all(&profile).expect("create the profile dir");
        self.profiles.push(profile.clone());
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": CHROMIUM,
                "args": [
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--no-first-run",
                    "--disable-sync",
                    "--disable-dev-shm-usage",
                    format!("--user-data-dir={}", profile.display()),
                ],
            }),
        );
        let browser = tokio::time::timeout(
            Duration::from_secs(30),
            ClientBuilder::new(HttpConnector::new())
                .capabilities(capabilities)
                .connect(&self.url),
        )
        .await
        .expect("chromium starts within 30 s")
        .unwrap_or_else(|e| panic!("cannot start a Chromium session ({CHROMIUM}): {e}"));
        browser
            .set_window_size(1280, 860)
            .await
            .expect("set the window size");
        self.sessions.push(browser.clone());
        browser
    }

    /// Ends every session (Chromium exits), then chromedriver.
    async fn quit(mut self) {
        for session in self.sessions.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(10), session.close()).await;
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for profile in &self.profiles {
            let _ = std::fs::remove_dir_all(profile);
        }
    }
}

/// Runs one browser scenario: serialised with the others, with chromedriver
/// started for it and every session closed afterwards, even when it fails.
async fn scenario<F>(body: F)
where
    F: AsyncFnOnce(&mut Driver),
{
    use futures_util::FutureExt;
    let _serial = SERIAL.lock().await;
    let mut driver = Driver::start().await;
    let outcome = std::panic::AssertUnwindSafe(body(&mut driver))
        .catch_unwind()
        .await;
    driver.quit().await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// `target/e2e/`, created.
fn e2e_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let dir = target.join("e2e");
    std::fs::create_dir_all(&dir).expect("create target/e2e");
    dir
}

/// Saves a PNG of the viewport once the page has painted its latest state.
async fn screenshot(page: &Browser, name: &str) -> PathBuf {
    // Two animation frames: charts are drawn in requestAnimationFrame.
    page.execute_async(
        "const done = arguments[arguments.length - 1];\
         requestAnimationFrame(() => requestAnimationFrame(() => done(true)));",
        vec![],
    )
    .await
    .expect("wait for a paint");
    let png = page.screenshot().await.expect("screenshot");
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    let path = e2e_dir().join(name);
    std::fs::write(&path, png).expect("write the screenshot");
    path
}

// ------------------------------------------------------------------ helpers

async fn js(page: &Browser, script: &str) -> Json {
    page.execute(script, vec![])
        .await
        .unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
}

/// Evaluates `script` until `done` holds for its value; returns that value.
async fn wait_js(page: &Browser, what: &str, script: &str, done: impl Fn(&Json) -> bool) -> Json {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let value = js(page, script).await;
        if done(&value) {
            return value;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {PATIENCE:?} waiting for {what}; last value: {value}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls `check` until it holds.
async fn wait_for(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

const CONN_STATE: &str = "return document.getElementById('conn').dataset.state";

async fn wait_state(page: &Browser, state: &str) {
    wait_js(
        page,
        &format!("connection state {state:?}"),
        CONN_STATE,
        |v| v == state,
    )
    .await;
}

/// Opens the page and waits until it is connected.
async fn open(page: &Browser, base: &str, view: &str) {
    page.goto(&format!("{base}/#{view}"))
        .await
        .expect("open the page");
    wait_state(page, "connected").await;
}

async fn type_into(page: &Browser, css: &str, text: &str) {
    let input = page.find(Locator::Css(css)).await.expect(css);
    input.clear().await.expect("clear");
    input.send_keys(text).await.expect("type");
}

/// Sets nickname and room in the form and joins with Enter.
async fn join(page: &Browser, nick: &str, room: &str) {
    type_into(page, "#nick", nick).await;
    type_into(page, "#room", &format!("{room}{}", char::from(Key::Enter))).await;
    wait_js(
        page,
        "joined the room",
        "return window.starlingDemo.room",
        |v| v == room,
    )
    .await;
}

/// Types `text` in the composer and presses Enter.
async fn say(page: &Browser, text: &str) {
    let composer = page
        .find(Locator::Css("#composer"))
        .await
        .expect("composer");
    composer
        .send_keys(&format!("{text}{}", char::from(Key::Enter)))
        .await
        .expect("type a message");
}

const MESSAGES: &str = "return [...document.querySelectorAll('#messages .msg:not(.sys)')]\
     .map(li => [li.querySelector('.nick').textContent, li.querySelector('.msg-text').textContent])";

/// The texts of the chat's system notes.
const NOTES: &str =
    "return [...document.querySelectorAll('#messages .msg.sys')].map(li => li.textContent)";

/// Waits until the page's chat shows `text` from `nick`.
async fn wait_message(page: &Browser, nick: &str, text: &str) {
    wait_js(
        page,
        &format!("{nick}: {text} in the chat"),
        MESSAGES,
        |v| {
            v.as_array()
                .is_some_and(|list| list.iter().any(|m| m == &json!([nick, text])))
        },
    )
    .await;
}

/// Waits until the broker has `n` subscribers on `filter`.
async fn wait_subscribers(broker: &starling_broker::Broker, filter: &str, n: usize) {
    let filter = Filter::new(filter).expect("valid filter");
    wait_for(&format!("{n} subscriber(s) on {filter:?}"), async || {
        broker.registry().subscribers(&filter) == n
    })
    .await;
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("a clock after 1970")
        .as_millis() as u64
}

fn chat_payload(nick: &str, text: &str) -> String {
    json!({"nick": nick, "text": text, "ts": now_ms()}).to_string()
}

/// `window.starlingDemo.series[key]`: `{points, total, last}` or null.
fn series_script(key: &str) -> String {
    format!(
        "return window.starlingDemo.series[{}] ?? null",
        Json::from(key)
    )
}

// --------------------------------------------------------------------- tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pages_chat_in_a_room_and_see_messages_published_from_rust() {
    scenario(async |driver| {
        let broker = TestBroker::start().await;
        let ada = driver.browser().await;
        let bob = driver.browser().await;
        open(&ada, &broker.http_url(), "chat").await;
        open(&bob, &broker.http_url(), "chat").await;
        join(&ada, "ada", "e2e-room").await;
        join(&bob, "bob", "e2e-room").await;
        wait_subscribers(broker.broker(), "chat.e2e-room", 2).await;

        // Typed in one page (Enter sends), shown in both.
        say(&ada, "hello from ada").await;
        wait_message(&bob, "ada", "hello from ada").await;
        wait_message(&ada, "ada", "hello from ada").await;
        say(&bob, "hi ada, bob here").await;
        wait_message(&ada, "bob", "hi ada, bob here").await;
        let composer = js(&bob, "return document.getElementById('composer').value").await;
        assert_eq!(composer, "", "the composer is cleared after sending");

        // The payload on the wire is {"nick","text","ts"}.
        let mut rust = broker.json().await;
        rust.subscribe("chat.e2e-room").await;
        say(&ada, "seen by rust too").await;
        let (topic, payload) = rust.recv_message().await;
        assert_eq!(topic, "chat.e2e-room");
        let payload = payload.to_json_string();
        assert_eq!(starling_tests::json_str(&payload, "nick"), "ada");
        assert_eq!(
            starling_tests::json_str(&payload, "text"),
            "seen by rust too"
        );
        assert!(
            matches!(
                json_field(&payload, "ts"),
                Some(starling_protocol::Value::UInt(_))
            ),
            "{payload}"
        );

        // Published from Rust: shown in both pages.
        rust.publish(
            "chat.e2e-room",
            &chat_payload("rust", "hello from a Rust service"),
        )
        .await;
        wait_message(&ada, "rust", "hello from a Rust service").await;
        wait_message(&bob, "rust", "hello from a Rust service").await;
        // ...and over HTTP.
        let (status, body) = starling_tests::http_post(
            &format!("{}/api/publish", broker.http_url()),
            json!({"topic": "chat.e2e-room", "payload": {"nick": "ops", "text": "deploy done: all green, café reopened"}})
                .to_string(),
        )
        .await;
        assert_eq!(status, 202, "{body}");
        wait_message(&ada, "ops", "deploy done: all green, café reopened").await;
        wait_message(&bob, "ops", "deploy done: all green, café reopened").await;
        say(&bob, "nice, thanks!").await;
        wait_message(&ada, "bob", "nice, thanks!").await;

        let path = screenshot(&ada, "chat.png").await;
        eprintln!("chat view: {}", path.display());
        rust.close().await;
        broker.stop().await;
    })
    .await;
}

const MEMBERS: &str = "return [document.getElementById('people-title').textContent, \
     [...document.querySelectorAll('#people .name')].map((e) => e.textContent)]";

/// With `--presence chat.`, the chat lists who is in the room from the
/// broker's presence, and follows joins and leaves live.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chat_lists_who_is_in_the_room_from_presence() {
    scenario(async |driver| {
        let broker = TestBroker::with_config(|c| {
            c.presence_prefixes = vec!["chat.".into()];
            c.presence_grace_ms = 300;
        })
        .await;
        let ada = driver.browser().await;
        let bob = driver.browser().await;
        open(&ada, &broker.http_url(), "chat").await;
        join(&ada, "ada", "members").await;
        let members = |names: &'static [&'static str]| {
            move |v: &Json| v[0] == "In the room" && v[1] == json!(names)
        };
        wait_js(&ada, "ada alone in the room", MEMBERS, members(&["ada"])).await;

        // A second window joins: both see both, each itself first.
        open(&bob, &broker.http_url(), "chat").await;
        join(&bob, "bob", "members").await;
        wait_js(&ada, "bob joins", MEMBERS, members(&["ada", "bob"])).await;
        wait_js(&bob, "bob sees ada", MEMBERS, members(&["bob", "ada"])).await;
        let path = screenshot(&ada, "presence.png").await;
        eprintln!("presence: {}", path.display());

        // It leaves: gone from the list once the grace period is over.
        bob.goto("about:blank").await.expect("leave the page");
        wait_js(&ada, "bob leaves", MEMBERS, members(&["ada"])).await;
        broker.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn html_in_a_message_is_shown_as_text() {
    const EVIL: &str = "<script>alert(1)</script><b>x</b>";
    scenario(async |driver| {
        let broker = TestBroker::start().await;
        let page = driver.browser().await;
        open(&page, &broker.http_url(), "chat").await;
        join(&page, "<i>mallory</i>", "xss").await;
        wait_subscribers(broker.broker(), "chat.xss", 1).await;

        // From another client...
        let mut rust = broker.json().await;
        rust.publish("chat.xss", &chat_payload("<img src=x>", EVIL))
            .await;
        wait_message(&page, "<img src=x>", EVIL).await;
        // ...and typed into the page itself.
        say(&page, EVIL).await;
        wait_message(&page, "<i>mallory</i>", EVIL).await;

        let last_text = js(
            &page,
            "const t = [...document.querySelectorAll('#messages .msg-text')]; \
             return t[t.length - 1].textContent",
        )
        .await;
        assert_eq!(last_text, EVIL);
        let injected = js(
            &page,
            "return document.querySelectorAll('#messages b, #messages script, #messages img, #messages i').length",
        )
        .await;
        assert_eq!(injected, 0, "no element was created from message text");
        let escaped = js(
            &page,
            "return document.querySelector('#messages .msg-text').innerHTML",
        )
        .await;
        assert_eq!(escaped, "&lt;script&gt;alert(1)&lt;/script&gt;&lt;b&gt;x&lt;/b&gt;");
        assert!(
            page.get_alert_text().await.is_err(),
            "no alert() ran: the script was not executed"
        );
        rust.close().await;
        broker.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_charts_follow_sys_stats_and_a_user_topic() {
    scenario(async |driver| {
        let broker = TestBroker::start().await;
        let page = driver.browser().await;
        open(&page, &broker.http_url(), "dashboard").await;
        let visible = js(
            &page,
            "return !document.getElementById('view-dashboard').hidden",
        )
        .await;
        assert_eq!(visible, true, "#dashboard opens the dashboard view");

        // $sys.stats: the connections chart gets points, one a second, and
        // its last value is what the broker reports.
        let key = "$sys.stats/connections";
        let first = wait_js(&page, "a $sys.stats point", &series_script(key), |v| {
            v["points"].as_u64() >= Some(1)
        })
        .await;
        assert!(first["last"].as_f64() >= Some(1.0), "{first}");
        let mut rust = broker.json().await; // a second connection
        let (_, health) = http_get(&format!("{}/healthz", broker.http_url())).await;
        let connections = json_field(&health, "connections");
        assert_eq!(connections, Some(starling_protocol::Value::UInt(2)), "{health}");
        let grown = wait_js(
            &page,
            "the connections chart to grow to 2",
            &series_script(key),
            |v| v["points"].as_u64() > first["points"].as_u64() && v["last"] == 2.0,
        )
        .await;
        assert!(grown["total"].as_u64() >= Some(2), "{grown}");
        let canvas = js(
            &page,
            "const c = document.querySelector('canvas[data-series=\"$sys.stats/connections\"]'); \
             return [Number(c.dataset.points), Number(c.dataset.last), document.getElementById('stat-connections').textContent]",
        )
        .await;
        assert!(canvas[0].as_u64() >= Some(2), "{canvas}");
        assert_eq!(canvas[1], 2.0, "{canvas}");
        assert_eq!(canvas[2], "2", "{canvas}");
        let rate = wait_js(
            &page,
            "a deliver rate",
            &series_script("$sys.stats/deliver_rate"),
            |v| v["points"].as_u64() >= Some(1),
        )
        .await;
        assert!(rate["last"].as_f64() >= Some(0.0), "{rate}");

        // A user topic typed into the page: each numeric field is charted.
        type_into(
            &page,
            "#watch-topic",
            &format!("sensors.*{}", char::from(Key::Enter)),
        )
        .await;
        wait_subscribers(broker.broker(), "sensors.*", 1).await;
        let temps: Vec<f64> = (0..12u32)
            .map(|i| 20.0 + f64::from(i % 5) * 0.5 + f64::from(i) * 0.1)
            .collect();
        for (i, temp) in (0u64..).zip(&temps) {
            rust.publish(
                "sensors.greenhouse",
                &json!({"temp": temp, "humidity": 40 + i, "ok": true, "ts": now_ms() + i})
                    .to_string(),
            )
            .await;
        }
        let temp = wait_js(
            &page,
            "12 temperature points",
            &series_script("sensors.greenhouse/temp"),
            |v| v["total"] == 12,
        )
        .await;
        assert_eq!(temp["points"], 12, "{temp}");
        assert_eq!(temp["last"], temps[11], "{temp}");
        let humidity = js(&page, &series_script("sensors.greenhouse/humidity")).await;
        assert_eq!(humidity["last"], 51, "{humidity}");
        let not_numbers = js(
            &page,
            "return Object.keys(window.starlingDemo.series).filter(k => k.startsWith('sensors.greenhouse/')).sort()",
        )
        .await;
        assert_eq!(
            not_numbers,
            json!(["sensors.greenhouse/humidity", "sensors.greenhouse/temp"]),
            "booleans and `ts` are not plotted"
        );
        let chart = js(
            &page,
            "const c = document.querySelector('#watches canvas[data-series=\"sensors.greenhouse/temp\"]'); \
             return c && [Number(c.dataset.points), c.closest('.series').querySelector('.series-last').textContent]",
        )
        .await;
        assert_eq!(chart[0], 12, "a chart in the page holds the points: {chart}");
        assert!(
            chart[1].as_str().is_some_and(|t| t.starts_with("21")),
            "the chart's readout shows the last value, 21.6: {chart}"
        );

        // What the SDK's ticker example publishes, on the default `metrics.>`.
        wait_subscribers(broker.broker(), "metrics.>", 1).await;
        for i in 0..30u64 {
            let cpu = 0.4 + ((i as f64) / 3.0).sin().abs() * 0.8;
            rust.publish(
                "metrics.web-1",
                &json!({"host": "web-1", "cpu": cpu, "mem_used_mb": 2048 + i * 7 + (i % 4) * 30, "ts": now_ms() + i * 1000})
                    .to_string(),
            )
            .await;
        }
        let mem = wait_js(
            &page,
            "ticker points",
            &series_script("metrics.web-1/mem_used_mb"),
            |v| v["total"] == 30,
        )
        .await;
        assert_eq!(mem["last"], 2048 + 29 * 7 + 30, "{mem}");
        let cpu = js(&page, &series_script("metrics.web-1/cpu")).await;
        assert_eq!(cpu["total"], 30, "{cpu}");

        // Enough $sys.stats history for a readable screenshot.
        wait_js(&page, "5 $sys.stats points", &series_script(key), |v| {
            v["points"].as_u64() >= Some(5)
        })
        .await;
        // The whole dashboard in one picture: a window as tall as the page.
        let height = js(
            &page,
            "return document.documentElement.scrollHeight + window.outerHeight - window.innerHeight",
        )
        .await;
        let height = height.as_u64().expect("a height").clamp(860, 2400) as u32;
        page.set_window_size(1280, height)
            .await
            .expect("resize the window");
        let path = screenshot(&page, "dashboard.png").await;
        eprintln!("dashboard view: {}", path.display());
        // The same in the dark theme (the toggle in the top bar).
        page.find(Locator::Css("#theme-toggle"))
            .await
            .expect("theme toggle")
            .click()
            .await
            .expect("click the theme toggle");
        let theme = js(&page, "return document.documentElement.dataset.theme").await;
        assert!(theme == "dark" || theme == "light", "{theme}");
        let path = screenshot(&page, &format!("dashboard-{}.png", theme.as_str().unwrap())).await;
        eprintln!("dashboard view, other theme: {}", path.display());
        rust.close().await;
        broker.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_reconnects_by_itself_after_a_broker_restart() {
    scenario(async |driver| {
        let first = TestBroker::start().await;
        let addr = first.addr();
        let page = driver.browser().await;
        open(&page, &first.http_url(), "chat").await;
        join(&page, "ada", "restart").await;
        wait_subscribers(first.broker(), "chat.restart", 1).await;
        let mut rust = first.json().await;
        rust.publish("chat.restart", &chat_payload("rust", "before the restart"))
            .await;
        wait_message(&page, "rust", "before the restart").await;
        rust.close().await;

        first.stop().await;
        wait_state(&page, "reconnecting").await;
        let label = js(&page, "return document.getElementById('conn-label').textContent").await;
        assert_eq!(label, "Reconnecting…");
        let banner = js(
            &page,
            "const b = document.getElementById('chat-banner'); return b.hidden ? '' : b.textContent",
        )
        .await;
        assert!(
            banner.as_str().is_some_and(|b| b.contains("Reconnecting")),
            "{banner}"
        );

        let second = broker_on(addr).await;
        wait_state(&page, "connected").await;
        let node = js(&page, "return window.starlingDemo.client.welcome.node").await;
        assert_eq!(node, "test-node-2", "connected to the new broker");
        let label = js(&page, "return document.getElementById('conn-label').textContent").await;
        assert_eq!(label, "Connected");

        // The page resubscribed by itself and keeps receiving.
        wait_subscribers(&second.broker, "chat.restart", 1).await;
        let mut rust =
            starling_tests::Client::connect(&second.ws_url(), Some(starling_protocol::Codec::Json))
                .await;
        rust.publish("chat.restart", &chat_payload("rust", "after the restart"))
            .await;
        wait_message(&page, "rust", "after the restart").await;
        // And what it sends goes out again.
        rust.subscribe("chat.restart").await;
        say(&page, "back online").await;
        let (_, payload) = rust.recv_message().await;
        assert_eq!(
            starling_tests::json_str(&payload.to_json_string(), "text"),
            "back online"
        );
        rust.close().await;
        tokio::time::timeout(Duration::from_secs(10), second.shutdown())
            .await
            .expect("broker stops")
            .expect("broker stops cleanly");
    })
    .await;
}

/// With history, a restart voids the page's place in its room (a new epoch):
/// the chat says once that messages may be missing, and goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_restart_with_history_the_chat_says_some_messages_may_be_missing() {
    scenario(async |driver| {
        let first = TestBroker::with_config(|c| c.history = 100).await;
        let addr = first.addr();
        let page = driver.browser().await;
        open(&page, &first.http_url(), "chat").await;
        join(&page, "ada", "epochs").await;
        wait_subscribers(first.broker(), "chat.epochs", 1).await;
        let mut rust = first.json().await;
        rust.publish("chat.epochs", &chat_payload("rust", "before the restart"))
            .await;
        wait_message(&page, "rust", "before the restart").await;
        rust.close().await;
        first.stop().await;
        wait_state(&page, "reconnecting").await;

        let second = broker_on_with(addr, |c| c.history = 100).await;
        wait_state(&page, "connected").await;
        let missing = |v: &Json| {
            v.as_array().map_or(0, |notes| {
                notes
                    .iter()
                    .filter(|n| *n == "Some messages may be missing")
                    .count()
            })
        };
        wait_js(&page, "the notice in the chat", NOTES, |v| missing(v) > 0).await;
        // It goes on: what is published now is shown, and the notice stays one.
        let mut rust =
            starling_tests::Client::connect(&second.ws_url(), Some(starling_protocol::Codec::Json))
                .await;
        rust.publish("chat.epochs", &chat_payload("rust", "after the restart"))
            .await;
        wait_message(&page, "rust", "after the restart").await;
        let notes = js(&page, NOTES).await;
        assert_eq!(missing(&notes), 1, "{notes}");
        assert!(
            !notes.to_string().contains("were missed"),
            "a reset is not a lag: {notes}"
        );
        let path = screenshot(&page, "chat-reset.png").await;
        eprintln!("chat after a reset: {}", path.display());
        rust.close().await;
        tokio::time::timeout(Duration::from_secs(10), second.shutdown())
            .await
            .expect("broker stops")
            .expect("broker stops cleanly");
    })
    .await;
}

/// What `starling token --jwt-secret SECRET --sub SUB --subscribe 'chat.>'
/// --subscribe '$sys.stats' --publish 'chat.>'` prints, by the same code.
fn dev_token(secret: &str, sub: &str) -> String {
    let args = starling_broker::TokenArgs {
        sub: sub.into(),
        subscribe: vec!["chat.>".into(), "$sys.stats".into()],
        publish: vec!["chat.>".into()],
        ttl: Duration::from_secs(3600),
        jwt_secret: Some(secret.into()),
        jwt_private_key: None,
    };
    args.sign().expect("a token")
}

/// The chat banner's text, or "" while it is hidden.
const BANNER: &str =
    "const b = document.getElementById('chat-banner'); return b.hidden ? '' : b.textContent";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_auth_on_the_page_chats_with_a_token_from_the_fragment_and_says_when_it_has_none() {
    const SECRET: &str = "a development secret for the browser tests";
    scenario(async |driver| {
        let broker = TestBroker::with_config(|c| c.jwt_secret = Some(SECRET.into())).await;

        // With `#token=...`: connected, and the token is gone from the address bar.
        let page = driver.browser().await;
        let token = dev_token(SECRET, "ada");
        page.goto(&format!("{}/#token={token}", broker.http_url()))
            .await
            .expect("open the page");
        wait_state(&page, "connected").await;
        let url = page.current_url().await.expect("the page's address");
        assert!(!url.as_str().contains("token"), "{url}");
        assert_eq!(url.fragment(), Some("chat"), "{url}");
        join(&page, "ada", "auth-room").await;
        wait_subscribers(broker.broker(), "chat.auth-room", 1).await;

        // A Rust client with a token of its own: the page's messages reach it
        // from `ada`, and its messages reach the page.
        let rust_token = dev_token(SECRET, "rust");
        let mut rust = starling_tests::Client::connect(
            &format!("{}?token={rust_token}", broker.ws_url()),
            Some(starling_protocol::Codec::Json),
        )
        .await;
        rust.subscribe("chat.auth-room").await;
        say(&page, "hello with a token").await;
        wait_message(&page, "ada", "hello with a token").await;
        match rust.recv().await {
            starling_protocol::Envelope::Message { from, payload, .. } => {
                assert_eq!(from.as_deref(), Some("ada"));
                let payload = payload.to_json_string();
                assert_eq!(
                    starling_tests::json_str(&payload, "text"),
                    "hello with a token"
                );
            }
            other => panic!("expected a message, got {other:?}"),
        }
        rust.publish(
            "chat.auth-room",
            &chat_payload("rust", "hi ada, token checked"),
        )
        .await;
        wait_message(&page, "rust", "hi ada, token checked").await;
        // The dashboard's $sys.stats comes through too (the token allows it).
        wait_js(
            &page,
            "a $sys.stats point",
            &series_script("$sys.stats/connections"),
            |v| v["points"].as_u64() >= Some(1),
        )
        .await;
        let path = screenshot(&page, "chat-auth.png").await;
        eprintln!("chat view with a token: {}", path.display());
        // A reload keeps the token (it is in the tab's sessionStorage).
        page.refresh().await.expect("reload");
        wait_state(&page, "connected").await;

        // Without a token: refused, and the page says how to get one.
        let bare = driver.browser().await;
        bare.goto(&format!("{}/#chat", broker.http_url()))
            .await
            .expect("open the page");
        wait_state(&bare, "closed").await;
        let label = js(
            &bare,
            "return document.getElementById('conn-label').textContent",
        )
        .await;
        assert_eq!(label, "Token required");
        let banner = js(&bare, BANNER).await;
        let banner = banner.as_str().expect("a text");
        for part in ["Token required", "starling token --jwt-secret", "#token="] {
            assert!(banner.contains(part), "{part:?} not in {banner:?}");
        }
        // It stays: no retry, no other error replaces it.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(js(&bare, BANNER).await, banner);
        let path = screenshot(&bare, "chat-token-required.png").await;
        eprintln!("chat view without a token: {}", path.display());

        // A token the broker does not accept: the broker's reason is shown.
        let forged = driver.browser().await;
        let token = dev_token("another secret", "mallory");
        forged
            .goto(&format!("{}/#token={token}", broker.http_url()))
            .await
            .expect("open the page");
        wait_state(&forged, "closed").await;
        let label = js(
            &forged,
            "return document.getElementById('conn-label').textContent",
        )
        .await;
        assert_eq!(label, "Token refused");
        let banner = js(&forged, BANNER).await;
        let banner = banner.as_str().expect("a text");
        for part in ["Token refused", "bad signature", "starling token"] {
            assert!(banner.contains(part), "{part:?} not in {banner:?}");
        }
        rust.close().await;
        broker.stop().await;
    })
    .await;
}
