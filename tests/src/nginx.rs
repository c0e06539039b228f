//! A real nginx in front of a broker, with the configuration documented in
//! `deploy/nginx/starling.conf`: only the broker's address, the port and
//! the certificate are put in for the test.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::TestCerts;

/// The documented configuration.
const CONF: &str = include_str!("../../deploy/nginx/starling.conf");

/// An nginx process (stopped when dropped) with its own directory.
pub struct Nginx {
    child: Child,
    /// The TLS port it listens on, on 127.0.0.1.
    pub port: u16,
    dir: PathBuf,
}

impl Nginx {
    /// Starts nginx in front of the broker at `upstream`, serving `certs`'
    /// certificate. Fails the test when nginx is not installed (Debian
    /// package `nginx`) or does not start.
    pub fn start(upstream: SocketAddr, certs: &TestCerts) -> Nginx {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let dir = certs.dir().join(format!("nginx-{port}"));
        std::fs::create_dir_all(&dir).expect("nginx directory");
        let mut conf = CONF.to_owned();
        for (from, to) in [
            ("server 127.0.0.1:7070;", format!("server {upstream};")),
            ("listen 443 ssl;", format!("listen 127.0.0.1:{port} ssl;")),
            (
                "/etc/ssl/starling/fullchain.pem",
                certs.cert_path.display().to_string(),
            ),
            (
                "/etc/ssl/starling/privkey.pem",
                certs.key_path.display().to_string(),
            ),
        ] {
            assert!(
                conf.contains(from),
                "deploy/nginx/starling.conf lost {from:?}"
            );
            conf = conf.replace(from, &to);
        }
        std::fs::write(dir.join("starling.conf"), conf).expect("write the site");
        let d = dir.display();
        let main = format!(
            "daemon off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
             events {{ worker_connections 256; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
               fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
               include {d}/starling.conf;\n}}\n"
        );
        std::fs::write(dir.join("nginx.conf"), main).expect("write nginx.conf");
        let binary = ["/usr/sbin/nginx", "/usr/bin/nginx"]
            .into_iter()
            .find(|path| std::path::Path::new(path).exists())
            .expect("nginx not found: install the Debian package nginx");
        let child = Command::new(binary)
            .arg("-p")
            .arg(&dir)
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start nginx");
        let mut nginx = Nginx { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = nginx.child.try_wait() {
                panic!("nginx exited with {status}: {}", nginx.errors());
            }
            assert!(
                Instant::now() < deadline,
                "nginx did not listen: {}",
                nginx.errors()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        nginx
    }

    /// What nginx logged.
    pub fn errors(&self) -> String {
        std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
