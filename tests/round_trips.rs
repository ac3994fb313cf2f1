//! The agent at the protocol's floor (docs/architecture.md, "Round trips"),
//! observed from the emulator's side of the wire: which packets each
//! connection sent, in which order, and which arrived together in one read.

mod common;

use common::backend::Backend;
use common::device::{text, Device};
use common::emulator::TestCloud;
use iotcore_emulator::{ConnectionLog, LinkSimulation, LoggedPacket};

fn subscribes(log: &ConnectionLog) -> Vec<&Vec<String>> {
    log.packets
        .iter()
        .filter_map(|p| match &p.packet {
            LoggedPacket::Subscribe { filters } => Some(filters),
            _ => None,
        })
        .collect()
}

fn publishes(log: &ConnectionLog) -> Vec<&str> {
    log.packets
        .iter()
        .filter_map(|p| match &p.packet {
            LoggedPacket::Publish { topic, .. } => Some(topic.as_str()),
            _ => None,
        })
        .collect()
}

/// The connection's first packets are CONNECT and one SUBSCRIBE for
/// exactly `filters`, received in the same read (one flight), before any
/// request; it subscribes nowhere else.
fn assert_subscribed_behind_connect(log: &ConnectionLog, filters: &[String]) {
    let what = format!("connection {}: {:?}", log.client_id, log.packets);
    assert!(
        matches!(log.packets[0].packet, LoggedPacket::Connect),
        "{what}"
    );
    let LoggedPacket::Subscribe { filters: sent } = &log.packets[1].packet else {
        panic!("the packet after CONNECT is not SUBSCRIBE: {what}");
    };
    let mut sent = sent.clone();
    sent.sort();
    let mut want = filters.to_vec();
    want.sort();
    assert_eq!(sent, want, "{what}");
    assert_eq!(
        log.packets[0].read, log.packets[1].read,
        "CONNECT and SUBSCRIBE did not arrive together: {what}"
    );
    assert_eq!(subscribes(log).len(), 1, "{what}");
}

fn answers(topic: &str) -> [String; 2] {
    [format!("{topic}/accepted"), format!("{topic}/rejected")]
}

#[tokio::test]
async fn the_agents_sockets_have_tcp_nodelay() {
    let cloud = TestCloud::start().await;
    let session = cloud.backend_session().await;
    // Read back from the kernel (getsockopt) when the connection was made.
    assert!(session.tcp_nodelay());
    session.close().await;
}

/// The TCP sockets `pid` has open to `port`, as its descriptor numbers
/// (from `/proc/<pid>/fd` and `/proc/<pid>/net/tcp{,6}`).
fn tcp_sockets_to(pid: u32, port: u16) -> Vec<i32> {
    let mut inodes = std::collections::HashSet::new();
    for table in ["tcp", "tcp6"] {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let remote_port = fields[2]
                .rsplit_once(':')
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            if remote_port == Some(port) {
                inodes.insert(format!("socket:[{}]", fields[9]));
            }
        }
    }
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| {
            let e = e.unwrap();
            let target = std::fs::read_link(e.path()).ok()?;
            inodes
                .contains(target.to_str()?)
                .then(|| e.file_name().to_str()?.parse().ok())?
        })
        .collect()
}

/// The running daemon's own connection, looked at from outside: its socket
/// (taken with pidfd_getfd, which root may do even to a non-dumpable
/// process) has TCP_NODELAY set.
#[tokio::test(flavor = "multi_thread")]
async fn the_daemons_connection_has_tcp_nodelay() {
    use common::daemon::Daemon;
    use rustix::process::{pidfd_getfd, pidfd_open, Pid, PidfdFlags, PidfdGetfdFlags};

    let cloud = TestCloud::start().await;
    let device = Device::enrolled(&cloud, Backend::File, "").await;
    let daemon = Daemon::start(&device);
    daemon
        .wait_log("connected", 1, std::time::Duration::from_secs(15))
        .await;
    let pid = daemon.child.id().unwrap();
    let sockets = tcp_sockets_to(pid, cloud.handle.addr().port());
    assert_eq!(
        sockets.len(),
        1,
        "the daemon's sockets to the emulator: {sockets:?}"
    );
    let pidfd = pidfd_open(Pid::from_raw(pid as i32).unwrap(), PidfdFlags::empty()).unwrap();
    let socket = pidfd_getfd(
        &pidfd,
        rustix::fd::RawFd::from(sockets[0]),
        PidfdGetfdFlags::empty(),
    )
    .expect("pidfd_getfd (the tests run as root)");
    assert!(
        rustix::net::sockopt::tcp_nodelay(&socket).unwrap(),
        "the daemon's connection has Nagle's algorithm on"
    );
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn enroll_and_rotate_subscribe_once_right_behind_connect() {
    let cloud = TestCloud::start_with(|c| c.record_packets = true).await;
    let device = Device::new(&cloud, Backend::File, "MODE = csr\n");
    device.import_claim().await;
    let out = device.run(&["enroll", "--json"]).await;
    assert!(out.status.success(), "enroll: {}", text(&out));
    let thing = device.identity().unwrap().thing_name;

    let csr = "$aws/certificates/create-from-csr/json";
    let prod = "$aws/provisioning-templates/ProdTemplate/provision/json";
    let verify = format!("things/{thing}/provisioned");
    let log = cloud.handle.packet_log();
    assert_eq!(
        log.len(),
        2,
        "one claim and one verifying connection: {log:?}"
    );

    // The claim connection: CONNECT + SUBSCRIBE for both APIs' answers in
    // one flight, then the two requests, nothing else.
    let claim = &log[0];
    assert!(claim.client_id.starts_with("prov-"), "{claim:?}");
    let mut filters = answers(csr).to_vec();
    filters.extend(answers(prod));
    assert_subscribed_behind_connect(claim, &filters);
    assert_eq!(publishes(claim), [csr, prod], "{claim:?}");

    // The verifying connection, as the thing.
    let verifying = &log[1];
    assert_eq!(verifying.client_id, thing);
    assert_subscribed_behind_connect(verifying, std::slice::from_ref(&verify));
    assert_eq!(publishes(verifying), [verify.as_str()], "{verifying:?}");

    // A rotation: the same shape over the current identity, and the
    // report of the replaced certificate, after the commit, over the
    // verifying connection.
    let out = device.run(&["rotate", "--json"]).await;
    assert!(out.status.success(), "rotate: {}", text(&out));
    let log = cloud.handle.packet_log();
    let rotation: Vec<_> = log[2..].iter().collect();
    assert_eq!(rotation.len(), 2, "{rotation:?}");
    assert!(
        rotation.iter().all(|c| c.client_id == thing),
        "{rotation:?}"
    );
    let rotate = "$aws/provisioning-templates/RotationTemplate/provision/json";
    let mut filters = answers(csr).to_vec();
    filters.extend(answers(rotate));
    assert_subscribed_behind_connect(rotation[0], &filters);
    assert_eq!(publishes(rotation[0]), [csr, rotate]);
    assert_subscribed_behind_connect(rotation[1], std::slice::from_ref(&verify));
    let report = format!("things/{thing}/rotation");
    assert_eq!(
        publishes(rotation[1]),
        [verify.as_str(), report.as_str()],
        "{:?}",
        rotation[1]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_report_without_a_verifying_connection_sends_connect_and_publish_together() {
    let cloud = TestCloud::start_with(|c| c.record_packets = true).await;
    let device = Device::enrolled(&cloud, Backend::File, "MODE = csr\n").await;
    let thing = device.identity().unwrap().thing_name;
    // The rotation stops after the commit, before its report; the next
    // run sends the report on a connection of its own.
    let out = device
        .run_env(&["rotate"], &[("PROV_AGENT_FAULT", "old-key-deleted")])
        .await;
    assert!(
        !out.status.success(),
        "rotate should have stopped: {}",
        text(&out)
    );
    let before = cloud.handle.packet_log().len();
    let out = device.run(&["rotate", "--json"]).await;
    assert!(out.status.success(), "rotate: {}", text(&out));
    let log = cloud.handle.packet_log();
    let report = &log[before];
    assert_eq!(report.client_id, thing);
    assert!(matches!(report.packets[0].packet, LoggedPacket::Connect));
    let topic = format!("things/{thing}/rotation");
    assert_eq!(publishes(report), [topic.as_str()], "{report:?}");
    assert_eq!(report.packets[0].read, report.packets[1].read, "{report:?}");
    assert!(subscribes(report).is_empty(), "{report:?}");
}

/// When `log`'s request on `topic` reached the emulator (the packet log's
/// clock).
fn request_seq(log: &ConnectionLog, topic: &str) -> u64 {
    log.packets
        .iter()
        .find(|p| matches!(&p.packet, LoggedPacket::Publish { topic: t, .. } if t == topic))
        .unwrap_or_else(|| panic!("no request on {topic}: {log:?}"))
        .seq
}

/// The verifying connection costs no round trip of its own for TCP and
/// the TLS hello: it is dialed while the certificate request is in flight,
/// before the certificate it presents exists. Seen from the emulator
/// behind a simulated 60 ms round trip: the verifying connection's TCP
/// accept comes before the certificate request (sent at the same moment)
/// has crossed the link, in csr and keys mode, for enroll and rotate.
#[tokio::test(flavor = "multi_thread")]
async fn the_verifying_connection_is_dialed_while_the_certificate_is_requested() {
    let cloud = TestCloud::start_with(|c| {
        c.record_packets = true;
        c.link = LinkSimulation {
            latency: std::time::Duration::from_millis(30),
            ..Default::default()
        };
    })
    .await;
    for (mode, api) in [
        ("csr", "$aws/certificates/create-from-csr/json"),
        ("keys", "$aws/certificates/create/json"),
    ] {
        let device = Device::new(&cloud, Backend::File, &format!("MODE = {mode}\n"));
        device.import_claim().await;
        for op in ["enroll", "rotate"] {
            let before = cloud.handle.packet_log().len();
            let out = device.run(&[op, "--json"]).await;
            assert!(out.status.success(), "{mode} {op}: {}", text(&out));
            let thing = device.identity().unwrap().thing_name;
            let log = cloud.handle.packet_log();
            let [requests, verifying] = &log[before..] else {
                panic!("{mode} {op}: not two connections: {:?}", &log[before..]);
            };
            assert_eq!(verifying.client_id, thing, "{mode} {op}");
            let requested = request_seq(requests, api);
            assert!(
                verifying.accepted_seq < requested,
                "{mode} {op}: the verifying connection was accepted at {} but the \
                 certificate request came at {requested}: {requests:?} {verifying:?}",
                verifying.accepted_seq
            );
        }
    }
}
