//! A real Redis server for the tests, on 127.0.0.1 and a free port, with no persistence,
//! stopped when dropped; commands go through `redis-cli`.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};

use crate::util::{Sandbox, wait_until};

pub struct Redis {
    pub port: u16,
    server: Child,
}

impl Redis {
    /// Starts a server that keeps its files in `sandbox`, and waits until it answers.
    pub fn start(sandbox: &Sandbox) -> Redis {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let server = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(sandbox.path())
            .stdout(Stdio::null())
            .spawn()
            .expect("start redis-server (tests/prerequisites.sh installs it)");
        let redis = Redis { port, server };
        wait_until("redis-server to answer", || {
            Command::new("redis-cli")
                .args(["-p", &port.to_string(), "ping"])
                .output()
                .ok()
                .filter(|output| output.stdout == b"PONG\n")
        });
        redis
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Runs a command; its output lines.
    pub fn command(&self, args: &[&str]) -> Vec<String> {
        let output = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("run redis-cli");
        assert!(output.status.success(), "redis-cli {args:?}: {output:?}");
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}
