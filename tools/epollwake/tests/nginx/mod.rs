//! A real epoll server for the summary tests: Debian's nginx-light, started
//! by the test on a loopback port of its own with its own configuration in
//! a temporary directory, and stopped with it. `cargo xtask test` installs
//! nginx-light and apache2-utils (for `ab`).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

const NGINX: &str = "/usr/sbin/nginx";
const AB: &str = "/usr/bin/ab";

pub struct Nginx {
    pub port: u16,
    pub workers: Vec<u32>,
    master: Child,
    dir: PathBuf,
}

fn need(path: &str, package: &str) {
    assert!(std::path::Path::new(path).exists(), "{path} is missing: install {package} (cargo xtask test installs it)");
}

impl Nginx {
    /// Master and `workers` worker processes, each worker in epoll_wait on
    /// the listening socket before this returns.
    pub fn start(workers: usize) -> Nginx {
        need(NGINX, "nginx-light");
        let dir = std::env::temp_dir().join(format!("epollwake-nginx-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let d = dir.display();
        let conf = format!(
            "daemon off;\nmaster_process on;\nworker_processes {workers};\npid {d}/nginx.pid;\n\
             error_log {d}/error.log;\nevents {{ worker_connections 256; }}\nhttp {{\n  access_log off;\n  \
             client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n  \
             uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n  \
             server {{ listen 127.0.0.1:{port}; location / {{ return 200 \"ok\\n\"; }}\n    \
             location = /status {{ stub_status; }} }}\n}}\n"
        );
        std::fs::write(dir.join("nginx.conf"), conf).unwrap();
        // nginx and ab yield to the tool: under contention on a small box a
        // tool that cannot keep up loses events, and the counts this test
        // compares must be whole.
        let master = Command::new("nice")
            .args([
                "-n",
                "19",
                NGINX,
                "-p",
                &d.to_string(),
                "-c",
                &format!("{d}/nginx.conf"),
                "-e",
                &format!("{d}/error.log"),
            ])
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let mut n = Nginx { port, workers: vec![], master, dir };
        let deadline = Instant::now() + Duration::from_secs(20);
        let pid = n.master.id();
        loop {
            n.workers = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
                .unwrap_or_default()
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect();
            let waiting = n.workers.iter().all(|w| in_epoll_wait(*w));
            if n.workers.len() == workers && waiting {
                return n;
            }
            assert!(
                Instant::now() < deadline,
                "nginx did not start: {:?}",
                std::fs::read_to_string(n.dir.join("error.log"))
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// `ab -n requests -c concurrency`, each request on a new connection;
    /// the number of requests that completed without error.
    pub fn ab(&self, requests: u32, concurrency: u32) -> u32 {
        need(AB, "apache2-utils");
        let url = format!("http://127.0.0.1:{}/", self.port);
        let out = Command::new("nice")
            .args(["-n", "19", AB, "-q", "-n", &requests.to_string(), "-c", &concurrency.to_string(), &url])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let field = |name: &str| -> u32 {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or_else(|| panic!("ab printed no {name}: {text}"))
        };
        assert_eq!(field("Failed requests:"), 0, "{text}");
        field("Complete requests:")
    }

    /// Connections nginx has accepted, this request's own included
    /// (stub_status: "server accepts handled requests" then the numbers).
    pub fn accepts(&self) -> u64 {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        s.write_all(b"GET /status HTTP/1.0\r\n\r\n").unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        let mut lines = text.lines().skip_while(|l| !l.starts_with("server accepts"));
        lines
            .nth(1)
            .and_then(|l| l.split_whitespace().next()?.parse().ok())
            .unwrap_or_else(|| panic!("no accepts count in {text:?}"))
    }
}

/// The syscall a process's main thread is blocked in: 232 is epoll_wait,
/// 281 epoll_pwait (x86-64).
fn in_epoll_wait(pid: u32) -> bool {
    let s = std::fs::read_to_string(format!("/proc/{pid}/syscall")).unwrap_or_default();
    matches!(s.split_whitespace().next(), Some("232" | "281"))
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM: a fast shutdown of master and workers.
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(self.master.id() as i32, libc::SIGTERM) };
        let _ = self.master.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
