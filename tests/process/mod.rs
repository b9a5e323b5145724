//! Shared by the process-level tests: a cluster of real `quarryd` processes on
//! 127.0.0.1 with ports picked here, stopped by PID when dropped, and the clients
//! that drive it.
//!
//! `QUARRY_TEST_TLS=1` runs every cluster over mutual TLS: the nodes get
//! certificates from one CA made for the test process, and the tests' own clients
//! (channels, the Rust client, quarryctl, quarry-bench) an operator's.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use quarry::tls::{Authority, ClientTls, Holder, Issued, Validity};

use bytes::Bytes;
use quarry::proto::admin_client::AdminClient;
use quarry::proto::kv_client::KvClient;
use quarry::proto::{GetRequest, PutRequest, StatusRequest};
use tonic::transport::Channel;
use tonic::Code;

pub const GROUPS: u64 = 8;
pub const READY_DEADLINE: Duration = Duration::from_secs(60);

pub struct Cluster {
    /// Node `id`'s process is `children[id - 1]`, its address `addrs[id - 1]`.
    pub children: Vec<Child>,
    pub addrs: Vec<String>,
    pub metrics: Vec<String>,
    /// The founding members, as `--initial-cluster`.
    pub initial: String,
    /// Flags every node gets beyond the basic ones.
    pub extra: Vec<String>,
    pub dir: tempfile::TempDir,
    /// Whether the nodes serve mutual TLS (certificates in `dir`).
    pub tls: bool,
}

/// Whether `QUARRY_TEST_TLS=1` asks for every cluster to run over TLS.
pub fn tls_on() -> bool {
    std::env::var("QUARRY_TEST_TLS").is_ok_and(|v| v == "1")
}

/// Node certificates made (ids 1 to this); tests add at most a few nodes.
pub const NODE_CERTS: usize = 9;

/// One CA for the test process, with certificates for nodes, an operator and a client.
pub struct Pki {
    pub ca: Authority,
    /// Node `id`'s is `nodes[id - 1]`; each names 127.0.0.1.
    pub nodes: Vec<Issued>,
    pub admin: Issued,
    pub client: Issued,
}

pub fn pki() -> &'static Pki {
    static PKI: OnceLock<Pki> = OnceLock::new();
    PKI.get_or_init(|| {
        let ca = Authority::new("quarry-test-ca", Validity::days(30)).expect("CA");
        let hosts = ["127.0.0.1".to_string()];
        let nodes = (1..=NODE_CERTS as u64)
            .map(|id| ca.issue(&Holder::Node(id), &hosts, Validity::days(30)).expect("node certificate"))
            .collect();
        let admin = ca.issue(&Holder::Admin, &[], Validity::days(30)).expect("admin certificate");
        let client = ca.issue(&Holder::Client("alice".into()), &[], Validity::days(30)).expect("client certificate");
        Pki { ca, nodes, admin, client }
    })
}

/// How the tests' own clients connect: with the operator's certificate under TLS.
pub fn client_tls(tls: bool) -> ClientTls {
    if !tls {
        return ClientTls::plain();
    }
    let pki = pki();
    ClientTls::from_pem(&pki.ca.own().cert_pem, Some((&pki.admin.cert_pem, &pki.admin.key_pem))).expect("client TLS")
}

/// The Rust client for `addrs`, as the tests' clients connect.
pub fn client(addrs: &[String]) -> quarry::client::Client {
    quarry::client::Client::with_tls(addrs, client_tls(tls_on())).expect("client")
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill(); // SIGKILL to this PID only
            let _ = child.wait();
        }
    }
}

pub fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n).map(|_| TcpListener::bind("127.0.0.1:0").expect("bind")).collect();
    listeners.iter().map(|l| l.local_addr().expect("addr").port()).collect()
}

impl Cluster {
    /// Starts `quarryd` for node `id` (1-based) on its data directory.
    pub fn spawn(&self, id: usize) -> Child {
        self.spawn_with(id, &self.initial, &[])
    }

    fn spawn_with(&self, id: usize, initial: &str, flags: &[&str]) -> Child {
        let data = self.data_dir(id);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("node{id}.log")))
            .expect("log file");
        Command::new(env!("CARGO_BIN_EXE_quarryd"))
            .args(["--node-id", &id.to_string(), "--initial-cluster", initial, "--groups", &GROUPS.to_string()])
            .args(["--tick-ms", "20", "--metrics-listen", &self.metrics[id - 1]])
            .args(self.tls_flags(id))
            .args(&self.extra)
            .args(flags)
            .arg("--data-dir")
            .arg(&data)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("quarryd starts")
    }

    /// Starts nodes 1, 2 and 3.
    pub fn start_founders(&mut self) {
        self.children = (1..=3).map(|id| self.spawn(id)).collect();
    }

    pub fn data_dir(&self, id: usize) -> PathBuf {
        self.dir.path().join(format!("node{id}"))
    }

    /// A file of the cluster's certificates (`ca.pem`, `node-1.pem`, `admin.key`...).
    pub fn pki_file(&self, name: &str) -> PathBuf {
        self.dir.path().join("pki").join(name)
    }

    fn write_pki(&self) {
        let pki = pki();
        std::fs::create_dir_all(self.dir.path().join("pki")).expect("pki dir");
        let mut files = vec![("ca".to_string(), &pki.ca.own().cert_pem, &pki.ca.own().key_pem)];
        files.extend(pki.nodes.iter().enumerate().map(|(i, n)| (format!("node-{}", i + 1), &n.cert_pem, &n.key_pem)));
        files.push(("admin".into(), &pki.admin.cert_pem, &pki.admin.key_pem));
        files.push(("client".into(), &pki.client.cert_pem, &pki.client.key_pem));
        for (name, cert, key) in files {
            std::fs::write(self.pki_file(&format!("{name}.pem")), cert).expect("write certificate");
            std::fs::write(self.pki_file(&format!("{name}.key")), key).expect("write key");
        }
    }

    fn tls_flags(&self, id: usize) -> Vec<String> {
        if !self.tls {
            return Vec::new();
        }
        assert!(id <= NODE_CERTS, "no certificate made for node {id}");
        let file = |name: String| self.pki_file(&name).to_string_lossy().into_owned();
        vec![
            "--cert-file".into(),
            file(format!("node-{id}.pem")),
            "--key-file".into(),
            file(format!("node-{id}.key")),
            "--trusted-ca-file".into(),
            file("ca.pem".into()),
            "--client-cert-auth".into(),
        ]
    }

    /// The environment quarryctl and quarry-bench need to reach this cluster.
    pub fn ctl_env(&self) -> Vec<(&'static str, String)> {
        let mut env = vec![("QUARRY_ENDPOINTS", self.addrs.join(","))];
        if self.tls {
            let file = |name: &str| self.pki_file(name).to_string_lossy().into_owned();
            env.push(("QUARRY_CACERT", file("ca.pem")));
            env.push(("QUARRY_CERT", file("admin.pem")));
            env.push(("QUARRY_KEY", file("admin.key")));
        }
        env
    }

    /// A connected channel to node `id`, as the tests' clients connect.
    pub async fn channel(&self, id: usize) -> Channel {
        connect(&self.addrs[id - 1], &client_tls(self.tls)).await
    }

    /// Starts a new node (the next id) that joins the running cluster: it knows the
    /// founding members and itself, and its groups start empty. Returns its id.
    pub fn start_joining_node(&mut self) -> usize {
        let id = self.reserve_node();
        self.start_joining(id);
        id
    }

    /// Picks the next node id and its ports, without starting it.
    pub fn reserve_node(&mut self) -> usize {
        let ports = free_ports(2);
        self.addrs.push(format!("127.0.0.1:{}", ports[0]));
        self.metrics.push(format!("127.0.0.1:{}", ports[1]));
        self.addrs.len()
    }

    /// Starts reserved node `id` as one joining the running cluster.
    pub fn start_joining(&mut self, id: usize) {
        self.start_new(id, &["--initial-cluster-state", "existing"]);
    }

    /// Starts reserved node `id` knowing the founders and itself, with `flags`.
    pub fn start_new(&mut self, id: usize, flags: &[&str]) {
        assert_eq!(self.children.len() + 1, id, "nodes start in id order");
        let initial = format!("{},{id}={}", self.initial, self.addrs[id - 1]);
        let child = self.spawn_with(id, &initial, flags);
        self.children.push(child);
    }

    /// SIGKILLs node `id` and waits for it to die.
    pub fn kill(&mut self, id: usize) {
        let child = &mut self.children[id - 1];
        child.kill().expect("kill");
        child.wait().expect("reap");
    }

    pub fn restart(&mut self, id: usize) {
        self.children[id - 1] = self.spawn(id);
    }

    /// Starts node `id` again (after a kill) with `flags` beyond its usual ones.
    pub fn restart_with(&mut self, id: usize, flags: &[&str]) {
        self.children[id - 1] = self.spawn_with(id, &self.initial, flags);
    }
}

pub fn start_cluster() -> Cluster {
    start_cluster_with(&[])
}

pub fn start_cluster_with(extra: &[&str]) -> Cluster {
    let mut cluster = prepare_cluster(extra);
    cluster.start_founders();
    cluster
}

/// A 3-node cluster serving mutual TLS whatever `QUARRY_TEST_TLS` says.
pub fn start_tls_cluster(extra: &[&str]) -> Cluster {
    let mut cluster = prepare_cluster_tls(extra, true);
    cluster.start_founders();
    cluster
}

/// A TLS cluster's ports, directories and certificates, no node started.
pub fn start_tls_cluster_unstarted() -> Cluster {
    prepare_cluster_tls(&[], true)
}

/// A 3-node cluster's ports and directories, not started (to prepare data dirs).
pub fn prepare_cluster(extra: &[&str]) -> Cluster {
    prepare_cluster_tls(extra, tls_on())
}

fn prepare_cluster_tls(extra: &[&str], tls: bool) -> Cluster {
    let dir = tempfile::Builder::new().prefix("quarry-cluster-").tempdir().expect("temp dir");
    let ports = free_ports(6);
    let addrs: Vec<String> = ports[..3].iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let metrics: Vec<String> = ports[3..].iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let initial = addrs.iter().enumerate().map(|(i, a)| format!("{}={a}", i + 1)).collect::<Vec<_>>().join(",");
    let extra = extra.iter().map(|s| s.to_string()).collect();
    let cluster = Cluster { children: Vec::new(), addrs, metrics, initial, extra, dir, tls };
    if tls {
        cluster.write_pki();
    }
    cluster
}

/// Every key and value a node holds, read from its own replica, page by page.
pub async fn all_pairs(addr: &str) -> Vec<(Bytes, Bytes)> {
    let kv = KvClient::new(channel(addr).await);
    let mut pairs = Vec::new();
    let mut start = Bytes::from_static(b"\0");
    loop {
        let page = quarry::proto::RangeRequest {
            start: start.clone(),
            end: Bytes::new(),
            limit: 10_000,
            serializable: true,
            group: None,
        };
        let answer = kv.clone().range(page).await.expect("range").into_inner();
        pairs.extend(answer.kvs.iter().map(|kv| (kv.key.clone(), kv.value.clone())));
        match answer.kvs.last() {
            Some(last) if answer.more => start = Bytes::from([&last.key[..], b"\0"].concat()),
            _ => return pairs,
        }
    }
}

/// A connected channel to `addr`, over TLS (operator's certificate) when
/// `QUARRY_TEST_TLS=1`.
pub async fn channel(addr: &str) -> Channel {
    connect(addr, &client_tls(tls_on())).await
}

/// A channel to `addr`, retried until it connects (the node may be starting).
pub async fn connect(addr: &str, tls: &ClientTls) -> Channel {
    connect_or_explain(addr, tls, String::new).await
}

/// As `connect`; a node that never listens fails the test with `explain()` (its log).
async fn connect_or_explain(addr: &str, tls: &ClientTls, explain: impl Fn() -> String) -> Channel {
    let deadline = Instant::now() + READY_DEADLINE;
    loop {
        let endpoint = quarry::transport::endpoint(addr).expect("uri");
        let error = match tls.connect(endpoint).await {
            Ok(channel) => return channel,
            Err(e) => e,
        };
        assert!(Instant::now() < deadline, "{addr} never accepted a connection: {error:?}\n{}", explain());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls every node until each sees a leader for every group.
pub async fn wait_for_leaders(cluster: &Cluster) {
    let deadline = Instant::now() + READY_DEADLINE;
    for (i, addr) in cluster.addrs.iter().enumerate() {
        let log = || {
            let path = cluster.dir.path().join(format!("node{}.log", i + 1));
            format!("node {} log:\n{}", i + 1, std::fs::read_to_string(path).unwrap_or_default())
        };
        let mut admin = AdminClient::new(connect_or_explain(addr, &client_tls(cluster.tls), log).await);
        loop {
            if let Ok(status) = admin.status(StatusRequest {}).await {
                let groups = status.into_inner().groups;
                if groups.len() as u64 == GROUPS && groups.iter().all(|g| g.leader != 0) {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "{addr}: not every group elected a leader in time");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Retries a call while the cluster is settling (no leader yet, leadership moving).
pub async fn retry<T, F, Fut>(mut call: F) -> Result<T, tonic::Status>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match call().await {
            Err(s) if s.code() == Code::Unavailable && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            other => return other,
        }
    }
}

/// Writes keys 0..keys (named by `pair`) from `workers` concurrent writers spread
/// over `clients`, retrying while the cluster settles; every write must succeed.
pub async fn put_concurrently(
    clients: &[KvClient<Channel>],
    workers: usize,
    keys: usize,
    pair: fn(usize) -> (String, String),
) {
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..workers {
        let client = clients[worker % clients.len()].clone();
        tasks.spawn(async move {
            for i in (worker..keys).step_by(workers) {
                let (key, value) = pair(i);
                let request =
                    PutRequest { key: Bytes::from(key), value: Bytes::from(value), client_id: 0, sequence: 0 };
                retry(|| {
                    let (mut c, r) = (client.clone(), request.clone());
                    async move { c.put(r).await }
                })
                .await
                .unwrap_or_else(|e| panic!("put {:?}: {e}", request.key));
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("writer task");
    }
}

pub async fn leader_of(cluster: &Cluster, via: usize, group: u64) -> Option<usize> {
    let mut admin = AdminClient::new(cluster.channel(via).await);
    let status = admin.status(StatusRequest {}).await.ok()?.into_inner();
    status.groups.iter().find(|g| g.group == group && g.leader != 0).map(|g| g.leader as usize)
}

pub const LIN_KEYS: u8 = 4;
pub const OPS_PER_CLIENT_MAX: u64 = 100;

/// Concurrent clients put and get a few keys until `stop`; returns their history.
pub async fn run_clients(
    clients: Vec<KvClient<Channel>>,
    started: Instant,
    stop: Instant,
) -> Vec<quarry::sim::linearizability::Operation> {
    use quarry::sim::linearizability::{OpKind, Operation, Outcome};
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..8u64 {
        let mut client = clients[worker as usize % clients.len()].clone();
        tasks.spawn(async move {
            let mut history = Vec::new();
            let micros = |t: Instant| t.duration_since(started).as_micros() as u64;
            let mut n = 0u64;
            // Bounded and spread out, so the history stays small enough to check.
            while Instant::now() < stop && n < OPS_PER_CLIENT_MAX {
                tokio::time::sleep(Duration::from_millis(40)).await;
                n += 1;
                let key = ((worker + n) % LIN_KEYS as u64) as u8;
                let name = Bytes::from(format!("lin-{key}"));
                let call = micros(Instant::now());
                if n.is_multiple_of(2) {
                    let value = worker * 1_000_000 + n; // unique per operation
                    let put =
                        PutRequest { key: name, value: Bytes::from(value.to_string()), client_id: 0, sequence: 0 };
                    let result = tokio::time::timeout(Duration::from_secs(5), client.put(put)).await;
                    let (ret, outcome) = match result {
                        Ok(Ok(_)) => (micros(Instant::now()), Outcome::Done),
                        Ok(Err(s)) if s.code() == Code::Aborted => continue, // certainly not applied
                        _ => (u64::MAX, Outcome::Unknown),
                    };
                    history.push(Operation { client: worker, key, kind: OpKind::Put(value), call, ret, outcome });
                } else {
                    let get = GetRequest { key: name, serializable: false };
                    if let Ok(Ok(response)) = tokio::time::timeout(Duration::from_secs(5), client.get(get)).await {
                        let r = response.into_inner();
                        let seen = r.found.then(|| String::from_utf8_lossy(&r.value).parse::<u64>().expect("numeric"));
                        let ret = micros(Instant::now());
                        history.push(Operation {
                            client: worker,
                            key,
                            kind: OpKind::Get,
                            call,
                            ret,
                            outcome: Outcome::Read(seen),
                        });
                    }
                }
            }
            history
        });
    }
    let mut history = Vec::new();
    while let Some(done) = tasks.join_next().await {
        history.extend(done.expect("client task"));
    }
    history
}

/// A plain HTTP/1.0 GET: (status code, body).
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    let (status, _, body) = http_response(addr, path);
    (status, body)
}

/// An HTTP/1.0 GET: the status code, the header lines and the body.
pub fn http_response(addr: &str, path: &str) -> (u16, String, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("metrics port accepts");
    stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").expect("request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("response");
    let status = response.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    (status, head.to_string(), body.to_string())
}

/// The value of a counter in a node's `/metrics` text (0 when absent).
pub async fn counter(metrics_addr: &str, name: &str) -> u64 {
    let addr = metrics_addr.to_string();
    let (_, body) = tokio::task::spawn_blocking(move || http_get(&addr, "/metrics")).await.expect("get");
    body.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Asserts a finished command (quarryctl, say) exited 0, showing its output if not.
pub fn succeeded(what: &str, out: &std::process::Output) {
    assert!(
        out.status.success(),
        "{what} failed ({:?}): {}{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Stops nodes 3 and 2 and restarts 2, then writes keys of every group through `kv`
/// (node 1): each write needs nodes 1 and 2 to hear each other again, so this fails
/// (at `READY_DEADLINE`) while node 2 cannot reach node 1.
pub async fn restart_node_2_without_node_3(cluster: &mut Cluster, kv: &KvClient<Channel>, prefix: &str) {
    cluster.kill(3);
    cluster.kill(2);
    cluster.restart(2);
    let deadline = Instant::now() + READY_DEADLINE;
    for i in 0..(4 * GROUPS) {
        let key = Bytes::from(format!("{prefix}-{i}"));
        let put = PutRequest { key, value: Bytes::from("v"), client_id: 0, sequence: 0 };
        loop {
            let mut client = kv.clone();
            let call = client.put(put.clone());
            match tokio::time::timeout(Duration::from_secs(5), call).await {
                Ok(Ok(_)) => break,
                failed => assert!(Instant::now() < deadline, "node 2 never got back to node 1: {failed:?}"),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
