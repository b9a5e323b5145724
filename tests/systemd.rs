//! The systemd integration: the unit passes `systemd-analyze verify`, and quarryd
//! (started from the example config) speaks the notify protocol to a fake
//! NOTIFY_SOCKET: READY after recovery, WATCHDOG pings, STOPPING on SIGTERM.

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const DEADLINE: Duration = Duration::from_secs(60);

/// Kills the node by PID if the test ends before it stopped.
struct Node(std::process::Child);

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_unit_passes_systemd_analyze_verify() {
    let dir = tempfile::tempdir().expect("dir");
    let unit = std::fs::read_to_string("systemd/quarryd.service").expect("unit file");
    // verify checks that ExecStart's binary exists: point it at the one just built.
    let unit = unit.replace("/usr/local/bin/quarryd", env!("CARGO_BIN_EXE_quarryd"));
    let path = dir.path().join("quarryd.service");
    std::fs::write(&path, unit).expect("write unit");
    let verify = Command::new("systemd-analyze").arg("verify").arg(&path).output().expect("systemd-analyze runs");
    let stderr = String::from_utf8_lossy(&verify.stderr);
    assert!(verify.status.success(), "{stderr}");
    assert!(!stderr.contains("quarryd.service"), "warnings about the unit: {stderr}");
}

#[test]
fn quarryd_speaks_the_notify_protocol() {
    let dir = tempfile::tempdir().expect("dir");
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).expect("bind the fake notify socket");
    socket.set_read_timeout(Some(Duration::from_millis(200))).expect("timeout");
    let ports: Vec<u16> = (0..2)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("port"))
        .collect::<Vec<_>>()
        .iter()
        .map(|l| l.local_addr().expect("addr").port())
        .collect();
    let mut node = Node(
        Command::new(env!("CARGO_BIN_EXE_quarryd"))
            .args(["--config", "systemd/quarry.toml.example", "--groups", "4", "--shards", "1"])
            .args(["--initial-cluster", &format!("1=127.0.0.1:{}", ports[0])])
            .args(["--metrics-listen", &format!("127.0.0.1:{}", ports[1])])
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .env("NOTIFY_SOCKET", &socket_path)
            .env("WATCHDOG_USEC", "200000")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("quarryd starts"),
    );
    let mut seen = Vec::new();
    let receive_until = |want: &str, seen: &mut Vec<String>| {
        let deadline = Instant::now() + DEADLINE;
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline {
            if let Ok(n) = socket.recv(&mut buf) {
                let message = String::from_utf8_lossy(&buf[..n]).into_owned();
                let found = message.lines().any(|l| l == want);
                seen.push(message);
                if found {
                    return;
                }
            }
        }
        panic!("no {want} within {DEADLINE:?}; got {seen:?}");
    };
    receive_until("READY=1", &mut seen);
    for _ in 0..3 {
        receive_until("WATCHDOG=1", &mut seen);
    }
    // SAFETY: signalling the child this test started, by its PID.
    assert_eq!(unsafe { libc::kill(node.0.id() as i32, libc::SIGTERM) }, 0);
    receive_until("STOPPING=1", &mut seen);
    let status = node.0.wait().expect("exits");
    assert!(status.success(), "{status:?}");
    assert!(seen[0].contains("READY=1"), "READY comes first: {seen:?}");
}
