//! Mutual TLS end to end: real `quarryd` processes with certificates made here
//! (rcgen), clients with and without the right ones, a certificate reloaded on
//! SIGHUP, and bad files refused at start.

mod process;

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow_flight::flight_service_client::FlightServiceClient;
use arrow_flight::Ticket;
use bytes::Bytes;
use quarry::proto::admin_client::AdminClient;
use quarry::proto::kv_client::KvClient;
use quarry::proto::peer_client::PeerClient;
use quarry::proto::{PeerBatch, PutRequest, TransferLeaderRequest};
use quarry::tls::{Authority, ClientTls, Holder, Issued, Validity};
use tonic::transport::Channel;
use tonic::Code;

use process::*;

fn tls_with(identity: Option<&Issued>) -> ClientTls {
    let ca = &pki().ca.own().cert_pem;
    ClientTls::from_pem(ca, identity.map(|i| (i.cert_pem.as_str(), i.key_pem.as_str()))).expect("client TLS")
}

fn expired(holder: Holder) -> Issued {
    let now = time::OffsetDateTime::now_utc();
    let validity = Validity { not_before: now - time::Duration::days(10), not_after: now - time::Duration::days(1) };
    pki().ca.issue(&holder, &["127.0.0.1".to_string()], validity).expect("expired certificate")
}

/// Whether a put through `tls` to `addr` is refused (at the handshake or the call).
async fn put_refused(addr: &str, tls: &ClientTls) -> bool {
    let endpoint = quarry::transport::endpoint(addr).expect("uri");
    let Ok(channel) = tls.connect(endpoint).await else { return true };
    let put = PutRequest { key: Bytes::from("intruder"), value: Bytes::from("x"), client_id: 0, sequence: 0 };
    let mut kv = KvClient::new(channel);
    let call = kv.put(put);
    !matches!(tokio::time::timeout(Duration::from_secs(10), call).await, Ok(Ok(_)))
}

/// A peer stream carrying one (empty) batch claiming to come from `from`: the refusal.
async fn peer_batch_refusal(channel: Channel, from: u64) -> tonic::Status {
    let batch = PeerBatch { cluster_id: 1, from_node: from, ..Default::default() };
    match PeerClient::new(channel).stream(tokio_stream::iter(vec![batch])).await {
        Err(status) => status,
        Ok(response) => response.into_inner().message().await.expect_err("batch refused"),
    }
}

async fn unauthorized_total(metrics: &str) -> u64 {
    let addr = metrics.to_string();
    let (_, body) = tokio::task::spawn_blocking(move || http_get(&addr, "/metrics")).await.expect("get");
    body.lines()
        .filter(|l| l.starts_with("quarry_unauthorized_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_serves_certified_clients_and_refuses_everyone_else() {
    let cluster = start_tls_cluster(&[]);
    wait_for_leaders(&cluster).await;
    let pki = pki();
    let addr = cluster.addrs[0].clone();

    // An ordinary client's certificate is served Kv.
    let alice = tls_with(Some(&pki.client));
    let client = quarry::client::Client::with_tls(&cluster.addrs, alice.clone()).expect("client");
    client.put(Bytes::from("k"), Bytes::from("v")).await.expect("a certified client writes");
    let read = client.get(Bytes::from("k"), false).await.expect("and reads");
    assert_eq!(read.map(|(value, _)| value), Some(Bytes::from("v")));

    // Refused: no certificate, another CA's, an expired one, plain text.
    let stranger = Authority::new("another-ca", Validity::days(1)).expect("CA");
    let mallory = stranger.issue(&Holder::Client("mallory".into()), &[], Validity::days(1)).expect("certificate");
    let foreign = ClientTls::from_pem(&pki.ca.own().cert_pem, Some((&mallory.cert_pem, &mallory.key_pem)));
    let late = expired(Holder::Client("late".into()));
    for (what, tls) in [
        ("no certificate", tls_with(None)),
        ("another CA's certificate", foreign.expect("client TLS")),
        ("an expired certificate", tls_with(Some(&late))),
        ("plain text", ClientTls::plain()),
    ] {
        assert!(put_refused(&addr, &tls).await, "{what} was served");
    }

    // An ordinary client may not act as a node or an operator.
    let as_alice = connect(&addr, &alice).await;
    let refusal = peer_batch_refusal(as_alice.clone(), 2).await;
    assert_eq!(refusal.code(), Code::PermissionDenied, "{refusal:?}");
    let mut admin = AdminClient::new(as_alice.clone());
    let moved = admin.transfer_leader(TransferLeaderRequest { group: 0, to: 2 }).await.expect_err("refused");
    assert_eq!(moved.code(), Code::PermissionDenied, "{moved:?}");
    let add = quarry::proto::AddMemberRequest { node: 7, address: "127.0.0.1:1".into(), learner_only: true };
    assert_eq!(admin.add_member(add).await.expect_err("refused").code(), Code::PermissionDenied);
    let change = quarry::proto::ChangeGroupRequest { group: 0, remove: vec![3], ..Default::default() };
    assert_eq!(admin.change_group(change).await.expect_err("refused").code(), Code::PermissionDenied);
    let snapshot = quarry::proto::SnapshotNowRequest { group: 0 };
    assert_eq!(admin.snapshot_now(snapshot).await.expect_err("refused").code(), Code::PermissionDenied);
    assert!(admin.status(quarry::proto::StatusRequest {}).await.is_ok(), "status stays open to clients");
    let mut flight = FlightServiceClient::new(as_alice);
    for ticket in ["snapshot/0/1/0", "entries/0/1/2"] {
        let pulled = flight.do_get(Ticket { ticket: ticket.into() }).await.expect_err("refused");
        assert_eq!(pulled.code(), Code::PermissionDenied, "{ticket}: {pulled:?}");
    }

    // A node's certificate speaks for that node only.
    let as_node_2 = connect(&addr, &tls_with(Some(&pki.nodes[1]))).await;
    let refusal = peer_batch_refusal(as_node_2, 3).await;
    assert_eq!(refusal.code(), Code::PermissionDenied, "node 2's certificate claimed node 3: {refusal:?}");
    assert!(unauthorized_total(&cluster.metrics[0]).await >= 6, "refusals are counted");

    // Nothing of it reached the data: every node holds the same, and writes go on.
    client.put(Bytes::from("after"), Bytes::from("attacks")).await.expect("still served");
    let deadline = Instant::now() + READY_DEADLINE;
    loop {
        let mut views = Vec::new();
        for id in 1..=3 {
            let status = AdminClient::new(cluster.channel(id).await).status(quarry::proto::StatusRequest {}).await;
            views.push(status.expect("status").into_inner().groups.iter().map(|g| g.applied).sum::<u64>());
        }
        if views.iter().all(|&v| v == views[0]) {
            break;
        }
        assert!(Instant::now() < deadline, "replicas never converged: {views:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The certificate a node presents on a new connection.
async fn served_certificate(addr: &str) -> Vec<u8> {
    use rustls_pki_types::pem::PemObject;
    let pki = pki();
    let mut roots = rustls::RootCertStore::empty();
    let ca = rustls_pki_types::CertificateDer::from_pem_slice(pki.ca.own().cert_pem.as_bytes()).expect("CA");
    roots.add(ca).expect("root");
    let chain = vec![rustls_pki_types::CertificateDer::from_pem_slice(pki.admin.cert_pem.as_bytes()).expect("cert")];
    let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(pki.admin.key_pem.as_bytes()).expect("key");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .expect("client config");
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").expect("name");
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await.expect("handshake");
    tls.get_ref().1.peer_certificates().expect("a certificate")[0].to_vec()
}

fn der_of(pem: &str) -> Vec<u8> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).expect("certificate").to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_reloaded_on_sighup_serves_new_connections_and_the_cluster_carries_on() {
    let cluster = start_tls_cluster(&[]);
    wait_for_leaders(&cluster).await;
    let client = quarry::client::Client::with_tls(&cluster.addrs, client_tls(true)).expect("client");
    client.put(Bytes::from("before"), Bytes::from("reload")).await.expect("put");
    assert_eq!(served_certificate(&cluster.addrs[0]).await, der_of(&pki().nodes[0].cert_pem));

    let renewed = pki().ca.issue(&Holder::Node(1), &["127.0.0.1".to_string()], Validity::days(30)).expect("renewed");
    std::fs::write(cluster.pki_file("node-1.pem"), &renewed.cert_pem).expect("write");
    std::fs::write(cluster.pki_file("node-1.key"), &renewed.key_pem).expect("write");
    let hangup = |cluster: &Cluster| {
        // SAFETY: kill(2) with a PID this test started.
        let sent = unsafe { libc::kill(cluster.children[0].id() as i32, libc::SIGHUP) };
        assert_eq!(sent, 0, "SIGHUP sent");
    };
    hangup(&cluster);
    let deadline = Instant::now() + READY_DEADLINE;
    while served_certificate(&cluster.addrs[0]).await != der_of(&renewed.cert_pem) {
        assert!(Instant::now() < deadline, "node 1 never presented its renewed certificate");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A broken file is refused: the node keeps the certificate it has.
    std::fs::write(cluster.pki_file("node-1.pem"), "not a certificate").expect("write");
    hangup(&cluster);
    let log = cluster.dir.path().join("node1.log");
    let deadline = Instant::now() + READY_DEADLINE;
    while !std::fs::read_to_string(&log).expect("log").contains("not reloaded") {
        assert!(Instant::now() < deadline, "the failed reload was not logged");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(served_certificate(&cluster.addrs[0]).await, der_of(&renewed.cert_pem));

    // The cluster never noticed: every group keeps a leader and writes go on.
    wait_for_leaders(&cluster).await;
    for i in 0..20 {
        client.put(Bytes::from(format!("after-{i}")), Bytes::from("reload")).await.expect("put after reload");
    }
}

#[test]
fn bad_tls_files_stop_the_node_with_a_clear_error() {
    let cluster = start_tls_cluster_unstarted();
    let file = |name: &str| cluster.pki_file(name).to_string_lossy().into_owned();
    let late = expired(Holder::Node(1));
    std::fs::write(cluster.pki_file("late.pem"), &late.cert_pem).expect("write");
    std::fs::write(cluster.pki_file("late.key"), &late.key_pem).expect("write");
    let cases = [
        ("missing", file("absent.pem"), file("node-1.key"), "absent.pem"),
        ("expired", file("late.pem"), file("late.key"), "expired"),
        ("mismatched", file("node-1.pem"), file("node-2.key"), "do not belong together"),
        ("another node's", file("node-2.pem"), file("node-2.key"), "names node 2, but this is node 1"),
    ];
    for (what, cert, key, expected) in cases {
        let output = Command::new(env!("CARGO_BIN_EXE_quarryd"))
            .args(["--node-id", "1", "--initial-cluster", &cluster.initial])
            .args(["--cert-file", &cert, "--key-file", &key, "--trusted-ca-file", &file("ca.pem")])
            .arg("--data-dir")
            .arg(cluster.data_dir(1))
            .output()
            .expect("quarryd runs");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{what} certificate: started anyway");
        assert!(stderr.contains(expected), "{what} certificate: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{what} certificate: one line: {stderr}");
    }
}

/// Clients holding every connection slot of node 1 (the ~4,100 idle connections of
/// the attack, scaled to `--connections-max 8`) cannot lock a restarted peer out: a
/// node's certificate gets one of the slots kept for nodes. With node 3 down, every
/// write needs nodes 1 and 2 to hear each other, so the writes prove it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_holding_every_slot_cannot_lock_a_restarted_peer_out() {
    let mut cluster = start_tls_cluster(&["--connections-max", "8"]);
    wait_for_leaders(&cluster).await;
    // The test's own (operator) connection to node 1, opened before the flood.
    let kv = KvClient::new(cluster.channel(1).await);

    let alice = tls_with(Some(&pki().client));
    let mut held = Vec::new();
    let (mut served, mut refused) = (0, 0);
    for _ in 0..12 {
        let channel = alice.channel(quarry::transport::endpoint(&cluster.addrs[0]).expect("uri"));
        let mut admin = AdminClient::new(channel.clone());
        let status = admin.status(quarry::proto::StatusRequest {});
        match tokio::time::timeout(Duration::from_millis(500), status).await {
            Ok(Ok(_)) => served += 1,
            _ => refused += 1,
        }
        held.push(channel);
    }
    assert!(served >= 1 && refused >= 1, "the limit was reached: {served} served, {refused} not");

    restart_node_2_without_node_3(&mut cluster, &kv, "held").await;
    drop(held);
}
