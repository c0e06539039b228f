//! A real `redis-server` on a free loopback port, started and stopped by the
//! test (Debian package `redis-server`).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A redis-server process owned by a test; killed on drop.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    /// With TLS: the TLS port and the server's TLS arguments.
    tls: Option<(u16, Vec<String>)>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// The first integer (`:N`) of a raw RESP reply.
fn first_integer(reply: &str) -> Option<u64> {
    reply
        .lines()
        .find_map(|l| l.strip_prefix(':'))
        .and_then(|n| n.trim().parse().ok())
}

/// Polls `count` until it returns `n`, failing the test after `patience`.
async fn wait_count(what: &str, n: u64, patience: Duration, count: impl Fn() -> u64) {
    let deadline = Instant::now() + patience;
    loop {
        let got = count();
        if got == n {
            return;
        }
        assert!(Instant::now() < deadline, "{what} is {got}, expected {n}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Sends one command (RESP) to the server on `port`; returns the raw reply.
fn raw_command(port: u16, args: &[&str]) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let mut request = format!("*{}\r\n", args.len());
    for arg in args {
        request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
    }
    stream.write_all(request.as_bytes()).ok()?;
    let mut reply = vec![0u8; 65536];
    let n = stream.read(&mut reply).ok()?;
    Some(String::from_utf8_lossy(&reply[..n]).into_owned())
}

impl RedisServer {
    /// Starts a server with persistence off. Fails the test, naming the
    /// package to install, when `redis-server` is missing.
    pub fn start() -> Self {
        let mut server = RedisServer {
            child: None,
            port: free_port(),
            tls: None,
        };
        server.restart();
        server
    }

    /// Starts a server that also serves TLS ([`RedisServer::tls_url`]) with
    /// the server certificate of `certs`, and requires clients to present
    /// a certificate of that authority (Redis's default,
    /// `tls-auth-clients yes`). The plain port stays open for the test's
    /// own [`RedisServer::command`]s.
    pub fn start_tls(certs: &crate::TestCerts) -> Self {
        let path = |p: &std::path::Path| p.display().to_string();
        let tls_port = free_port();
        let args = vec![
            "--tls-port".to_owned(),
            tls_port.to_string(),
            "--tls-cert-file".to_owned(),
            path(&certs.cert_path),
            "--tls-key-file".to_owned(),
            path(&certs.key_path),
            "--tls-ca-cert-file".to_owned(),
            path(&certs.ca_path),
            "--tls-auth-clients".to_owned(),
            "yes".to_owned(),
        ];
        let mut server = RedisServer {
            child: None,
            port: free_port(),
            tls: Some((tls_port, args)),
        };
        server.restart();
        server
    }

    /// `rediss://localhost:PORT`, the TLS port of a server started with
    /// [`RedisServer::start_tls`].
    pub fn tls_url(&self) -> String {
        let (port, _) = self.tls.as_ref().expect("a server started with TLS");
        format!("rediss://localhost:{port}")
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The (plain) port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills the server (as a crash would).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port.
    pub fn restart(&mut self) {
        self.stop();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "no",
            ])
            .args(self.tls.iter().flat_map(|(_, args)| args))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start redis-server ({e}): install the Debian package `redis-server` \
                     (.ci/run does this)"
                )
            });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.command(&["PING"]).is_some_and(|r| r.contains("PONG")) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server on port {} did not answer PING", self.port);
    }

    /// Sends one command (RESP) and returns the raw reply, or `None` when the
    /// server does not answer.
    pub fn command(&self, args: &[&str]) -> Option<String> {
        raw_command(self.port, args)
    }

    /// How many subscribers Redis counts on `channel` (`PUBSUB NUMSUB`).
    pub fn numsub(&self, channel: &str) -> u64 {
        let reply = self
            .command(&["PUBSUB", "NUMSUB", channel])
            .unwrap_or_default();
        // *2\r\n$N\r\n<channel>\r\n:<count>\r\n
        reply
            .lines()
            .find_map(|l| l.strip_prefix(':'))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    }

    /// How many pattern subscriptions Redis has (`PUBSUB NUMPAT`).
    pub fn numpat(&self) -> u64 {
        let reply = self.command(&["PUBSUB", "NUMPAT"]).unwrap_or_default();
        reply.trim().trim_start_matches(':').parse().unwrap_or(0)
    }

    /// How many channels the server's pub/sub clients are subscribed to,
    /// added up over the clients (`sub=` of `CLIENT LIST TYPE pubsub`).
    pub fn channel_subscriptions(&self) -> u64 {
        let reply = self
            .command(&["CLIENT", "LIST", "TYPE", "pubsub"])
            .unwrap_or_default();
        reply
            .split_whitespace()
            .filter_map(|field| field.strip_prefix("sub="))
            .filter_map(|n| n.parse::<u64>().ok())
            .sum()
    }

    /// Waits (at most `patience`) until the server's pub/sub clients hold
    /// `n` channel subscriptions in all.
    pub async fn wait_channel_subscriptions(&self, n: u64, patience: Duration) {
        wait_count("the channel subscriptions in redis", n, patience, || {
            self.channel_subscriptions()
        })
        .await;
    }

    /// Waits until `channel` has exactly `n` subscribers in Redis.
    pub async fn wait_numsub(&self, channel: &str, n: u64) {
        let what = format!("the redis subscriber count of {channel}");
        wait_count(&what, n, crate::WAIT, || self.numsub(channel)).await;
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A real Redis Cluster of three masters on free loopback ports, created with
/// `redis-cli --cluster create` (Debian package `redis-server`, which brings
/// `redis-tools`).
pub struct RedisCluster {
    nodes: Vec<Child>,
    ports: Vec<u16>,
    _dir: TempDir,
}

/// A directory removed on drop.
struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl RedisCluster {
    /// Starts three cluster-enabled servers and joins them into one cluster.
    pub fn start() -> Self {
        let dir = std::env::temp_dir().join(format!(
            "starling-redis-cluster-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let nodes = ports
            .iter()
            .map(|port| {
                Command::new("redis-server")
                    .args([
                        "--port",
                        &port.to_string(),
                        "--bind",
                        "127.0.0.1",
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        &format!("nodes-{port}.conf"),
                        "--save",
                        "",
                        "--appendonly",
                        "no",
                        "--protected-mode",
                        "no",
                        "--dir",
                    ])
                    .arg(&dir)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap_or_else(|e| {
                        panic!(
                            "cannot start redis-server ({e}): install the Debian package \
                             `redis-server` (.ci/run does this)"
                        )
                    })
            })
            .collect();
        let cluster = RedisCluster {
            nodes,
            ports,
            _dir: TempDir(dir),
        };
        for port in &cluster.ports {
            cluster.wait(*port, &["PING"], "PONG");
        }
        let mut create = Command::new("redis-cli");
        create.args(["--cluster", "create"]);
        for port in &cluster.ports {
            create.arg(format!("127.0.0.1:{port}"));
        }
        let status = create
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap_or_else(|e| panic!("cannot run redis-cli ({e}): install `redis-tools`"));
        assert!(status.success(), "redis-cli --cluster create failed");
        for port in &cluster.ports {
            cluster.wait(*port, &["CLUSTER", "INFO"], "cluster_state:ok");
        }
        cluster
    }

    fn wait(&self, port: u16, command: &[&str], expect: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if raw_command(port, command).is_some_and(|r| r.contains(expect)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("redis node {port} did not answer {command:?} with {expect}");
    }

    /// The URL of the first node (any node works as a seed).
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.ports[0])
    }

    /// Sends one command to every node; returns their replies.
    pub fn each(&self, args: &[&str]) -> Vec<String> {
        self.ports
            .iter()
            .map(|port| raw_command(*port, args).unwrap_or_default())
            .collect()
    }

    /// Subscribers of sharded `channel` over the whole cluster
    /// (`PUBSUB SHARDNUMSUB` on every node, added up).
    pub fn shard_numsub(&self, channel: &str) -> u64 {
        self.each(&["PUBSUB", "SHARDNUMSUB", channel])
            .iter()
            .filter_map(|reply| first_integer(reply))
            .sum()
    }

    /// Classic (unsharded) subscribers of `channel` over the whole cluster.
    pub fn numsub(&self, channel: &str) -> u64 {
        self.each(&["PUBSUB", "NUMSUB", channel])
            .iter()
            .filter_map(|reply| first_integer(reply))
            .sum()
    }

    /// Waits until sharded `channel` has `n` subscribers in the cluster.
    pub async fn wait_shard_numsub(&self, channel: &str, n: u64) {
        let what = format!("the sharded subscriber count of {channel}");
        wait_count(&what, n, crate::WAIT, || self.shard_numsub(channel)).await;
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            let _ = node.kill();
            let _ = node.wait();
        }
    }
}
