//! The gossip transport over loopback: admission, message delivery with node attribution,
//! refusal of intruders, backoff, size limits and robustness against junk.
//!
//! Every node binds an ephemeral port on a 127.0.0.0/8 address; tests that get an address
//! banned use an address of their own so that the other tests' nodes are unaffected.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::time::timeout;
use weft_crypto::admission::{AdmissionKey, Proof, Role, EXPORTER_LABEL, EXPORT_LEN};
use weft_crypto::{ClusterSecret, IdentityKey};
use weft_gossip::transport::{
    unadmitted_client_config, Error, Incoming, Kind, RefusalReason, Transport, TransportConfig,
    CLOSE_ADMISSION_FAILED, MAX_DATAGRAM_LEN,
};

const WAIT: Duration = Duration::from_secs(10);

fn config(secret: &ClusterSecret) -> TransportConfig {
    TransportConfig::new(Arc::new(IdentityKey::generate()), secret.clone())
}

fn bind(ip: [u8; 4], config: TransportConfig) -> (Transport, SocketAddr) {
    let t = Transport::bind(SocketAddr::from((ip, 0)), config).expect("bind");
    let addr = t.local_addr().expect("local addr");
    (t, addr)
}

async fn next(t: &Transport) -> Incoming {
    timeout(WAIT, t.recv())
        .await
        .expect("a message within the wait")
        .expect("transport open")
}

/// Bytes with a pattern, so that a shifted or truncated copy does not compare equal.
fn pattern(len: usize, seed: u8) -> Bytes {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect::<Vec<u8>>()
        .into()
}

#[tokio::test]
async fn members_exchange_datagrams_and_streams_both_ways() {
    let secret = ClusterSecret::generate();
    let (a, a_addr) = bind([127, 0, 0, 1], config(&secret));
    let (b, b_addr) = bind([127, 0, 0, 1], config(&secret));

    // A datagram of exactly the limit opens the connection and arrives whole.
    let probe = pattern(MAX_DATAGRAM_LEN, 1);
    a.send_datagram(b_addr, probe.clone())
        .await
        .expect("a→b datagram");
    let got = next(&b).await;
    assert_eq!(
        (got.from, got.node, got.kind),
        (a_addr, a.node_id(), Kind::Datagram)
    );
    assert_eq!(got.bytes, probe);

    // b answers over the connection a opened.
    b.send_datagram(a_addr, Bytes::from_static(b"ack from b"))
        .await
        .expect("b→a datagram");
    let got = next(&a).await;
    assert_eq!(
        (got.from, got.node, got.kind),
        (b_addr, b.node_id(), Kind::Datagram)
    );
    assert_eq!(&got.bytes[..], b"ack from b");

    // Streams both ways, one large (several flow-control windows) and one empty.
    let big = pattern(3 << 20, 7);
    a.send_stream(b_addr, big.clone())
        .await
        .expect("a→b stream");
    b.send(a_addr, Kind::Stream, Bytes::new())
        .await
        .expect("b→a stream");
    let got = next(&b).await;
    assert_eq!(
        (got.from, got.node, got.kind),
        (a_addr, a.node_id(), Kind::Stream)
    );
    assert_eq!(got.bytes.len(), big.len());
    assert!(got.bytes == big, "stream content differs");
    let got = next(&a).await;
    assert_eq!(
        (got.from, got.node, got.kind),
        (b_addr, b.node_id(), Kind::Stream)
    );
    assert!(got.bytes.is_empty());

    // One connection carried everything.
    assert_eq!(a.open_connections(), 1);
    assert_eq!(b.open_connections(), 1);
    assert_eq!(a.connected_peers(), vec![(b_addr, b.node_id())]);
    assert_eq!(b.connected_peers(), vec![(a_addr, a.node_id())]);

    a.close().await;
    assert!(matches!(
        a.send_datagram(b_addr, Bytes::from_static(b"late")).await,
        Err(Error::Closed)
    ));
    assert!(a.recv().await.is_none(), "recv ends after close");
}

#[tokio::test]
async fn intruder_without_the_secret_is_cut_off_and_receives_nothing() {
    let secret = ClusterSecret::generate();
    let (a, a_addr) = bind([127, 0, 0, 1], config(&secret));
    let (b, _) = bind([127, 0, 0, 1], config(&secret));

    // The intruder speaks the protocol by hand so that it can see everything it gets.
    let mut endpoint =
        quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 2], 0))).expect("client endpoint");
    endpoint.set_default_client_config(unadmitted_client_config().expect("client config"));
    let conn = endpoint
        .connect(a_addr, "weft")
        .expect("connect")
        .await
        .expect("the TLS handshake itself succeeds");
    // Data sent before admission must never reach a's application.
    conn.send_datagram(Bytes::from_static(b"intruder datagram"))
        .expect("datagram queued");
    let mut export = [0u8; EXPORT_LEN];
    conn.export_keying_material(&mut export, EXPORTER_LABEL, &[])
        .expect("export");
    let wrong = AdmissionKey::new(&ClusterSecret::generate());
    let proof = Proof::create(&wrong, &IdentityKey::generate(), &export, Role::Client);
    let (mut send, mut recv) = conn.open_bi().await.expect("open admission stream");
    send.write_all(&proof.to_bytes()).await.expect("send proof");
    send.finish().expect("finish");

    match timeout(WAIT, recv.read_to_end(1 << 16))
        .await
        .expect("answer in time")
    {
        Err(quinn::ReadToEndError::Read(quinn::ReadError::ConnectionLost(
            quinn::ConnectionError::ApplicationClosed(close),
        ))) => assert_eq!(close.error_code, CLOSE_ADMISSION_FAILED),
        other => panic!("expected the admission close, got {other:?}"),
    }
    assert!(conn.read_datagram().await.is_err());
    assert_eq!(a.refusals().get(RefusalReason::WrongSecret), 1);
    assert_eq!(a.refusals().total(), 1);
    let stats = conn.stats();
    assert_eq!(
        stats.frame_rx.stream, 0,
        "no stream data reached the intruder"
    );
    assert_eq!(
        stats.frame_rx.datagram, 0,
        "no datagram reached the intruder"
    );
    assert_eq!(
        stats.frame_rx.max_streams_uni, 0,
        "streams were never opened to it"
    );

    // a's application got nothing from the intruder: the first message it sees is b's.
    b.send_datagram(a_addr, Bytes::from_static(b"member"))
        .await
        .expect("member still admitted");
    let got = next(&a).await;
    assert_eq!((got.node, &got.bytes[..]), (b.node_id(), &b"member"[..]));
    assert_eq!(
        a.connected_peers(),
        vec![(b.local_addr().expect("addr"), b.node_id())]
    );
}

#[tokio::test]
async fn wrong_secret_fails_then_is_refused_during_backoff() {
    let mut cfg = config(&ClusterSecret::generate());
    // Long enough that a slow machine still makes the second attempt within it.
    cfg.backoff_base = Duration::from_secs(10);
    let (a, a_addr) = bind([127, 0, 0, 1], cfg);
    let (intruder, _) = bind([127, 0, 0, 3], config(&ClusterSecret::generate()));

    let first = intruder
        .send_datagram(a_addr, Bytes::from_static(b"let me in"))
        .await;
    assert!(
        matches!(first, Err(Error::AdmissionRejected { addr }) if addr == a_addr),
        "{first:?}"
    );

    // Refused outright, before any handshake: not a timeout, not another admission round.
    let start = Instant::now();
    let second = intruder
        .send_datagram(a_addr, Bytes::from_static(b"again"))
        .await;
    assert!(matches!(second, Err(Error::Refused { .. })), "{second:?}");
    assert!(start.elapsed() < Duration::from_secs(5));

    // Neither side's application saw anything, and the intruder holds no connection.
    assert!(timeout(Duration::from_millis(300), intruder.recv())
        .await
        .is_err());
    assert!(timeout(Duration::from_millis(300), a.recv()).await.is_err());
    assert!(intruder.connected_peers().is_empty());
    assert!(a.connected_peers().is_empty());
    // a counted both: the wrong secret, then the refusal while backing off. The intruder
    // refused nobody.
    let refusals = a.refusals();
    assert_eq!(refusals.get(RefusalReason::WrongSecret), 1);
    assert_eq!(refusals.get(RefusalReason::Backoff), 1);
    assert_eq!(refusals.total(), 2);
    assert_eq!(intruder.refusals().total(), 0);
}

#[tokio::test]
async fn backoff_covers_the_whole_ip_and_then_expires() {
    let secret = ClusterSecret::generate();
    let mut cfg = config(&secret);
    cfg.backoff_base = Duration::from_secs(2);
    let (a, a_addr) = bind([127, 0, 0, 1], cfg);
    let (intruder, _) = bind([127, 0, 0, 4], config(&ClusterSecret::generate()));
    let (member, member_addr) = bind([127, 0, 0, 4], config(&secret));

    let first = intruder
        .send_datagram(a_addr, Bytes::from_static(b"x"))
        .await;
    assert!(
        matches!(first, Err(Error::AdmissionRejected { .. })),
        "{first:?}"
    );
    // The backoff is per source IP: a member behind the same address waits too.
    let refused = member
        .send_datagram(a_addr, Bytes::from_static(b"hi"))
        .await;
    assert!(matches!(refused, Err(Error::Refused { .. })), "{refused:?}");

    tokio::time::sleep(Duration::from_millis(2200)).await;
    member
        .send_datagram(a_addr, Bytes::from_static(b"hi"))
        .await
        .expect("admitted once the backoff is over");
    let got = next(&a).await;
    assert_eq!((got.from, got.node), (member_addr, member.node_id()));
}

#[tokio::test]
async fn oversized_messages_are_errors() {
    let secret = ClusterSecret::generate();
    let (a, _) = bind([127, 0, 0, 1], config(&secret));
    let (b, b_addr) = bind([127, 0, 0, 1], config(&secret));

    let err = a
        .send_datagram(b_addr, pattern(MAX_DATAGRAM_LEN + 1, 0))
        .await
        .expect_err("too large");
    assert!(
        matches!(err, Error::DatagramTooLarge { len, max } if len == MAX_DATAGRAM_LEN + 1 && max == MAX_DATAGRAM_LEN),
        "{err:?}"
    );
    let max = weft_gossip::transport::DEFAULT_MAX_STREAM_LEN;
    let err = a
        .send_stream(b_addr, pattern(max + 1, 0))
        .await
        .expect_err("too large");
    assert!(
        matches!(err, Error::StreamTooLarge { len, .. } if len == max + 1),
        "{err:?}"
    );
    // Refused locally: no connection was even opened for them.
    assert_eq!(a.open_connections(), 0);
    assert!(timeout(Duration::from_millis(200), b.recv()).await.is_err());
}

#[tokio::test]
async fn oversized_stream_from_a_member_is_refused_by_the_receiver() {
    let secret = ClusterSecret::generate();
    let mut small = config(&secret);
    small.max_stream_len = 64 * 1024;
    let (receiver, receiver_addr) = bind([127, 0, 0, 1], small);
    let (sender, _) = bind([127, 0, 0, 1], config(&secret));

    // The sender's own limit is larger, so only the receiver can refuse this.
    sender
        .send_stream(receiver_addr, pattern(64 * 1024 + 1, 3))
        .await
        .expect("handed to QUIC");
    sender
        .send_stream(receiver_addr, pattern(64 * 1024, 4))
        .await
        .expect("handed to QUIC");
    let got = next(&receiver).await;
    assert_eq!(
        got.bytes,
        pattern(64 * 1024, 4),
        "only the message within the limit arrives"
    );
    assert!(timeout(Duration::from_millis(300), receiver.recv())
        .await
        .is_err());
    // The connection survives the refusal.
    sender
        .send_datagram(receiver_addr, Bytes::from_static(b"still here"))
        .await
        .expect("datagram");
    assert_eq!(&next(&receiver).await.bytes[..], b"still here");
}

#[tokio::test]
async fn garbage_udp_does_not_disturb_the_transport() {
    let secret = ClusterSecret::generate();
    let (a, a_addr) = bind([127, 0, 0, 1], config(&secret));

    let junk = UdpSocket::bind("127.0.0.1:0").expect("udp socket");
    let mut datagrams: Vec<Vec<u8>> = vec![vec![], vec![0], vec![0xff; 1200], vec![0xc0; 1500]];
    // Long-header packets that claim QUIC v1 Initial, Handshake and Retry, with junk payloads.
    for first in [0xc0u8, 0xe0, 0xf0] {
        let mut p = vec![first, 0, 0, 0, 1, 8, 1, 2, 3, 4, 5, 6, 7, 8, 0];
        p.extend(pattern(1200, first).iter());
        datagrams.push(p);
    }
    // Short-header packets with random-looking connection ids.
    for i in 0..50u8 {
        datagrams.push(
            pattern(40 + usize::from(i) * 20, i)
                .iter()
                .map(|b| b & 0x7f | 0x40)
                .collect(),
        );
    }
    for d in &datagrams {
        junk.send_to(d, a_addr).expect("send junk");
    }

    // An honest member (from the same IP as the junk) is served as usual afterwards.
    let (b, b_addr) = bind([127, 0, 0, 1], config(&secret));
    b.send_stream(a_addr, Bytes::from_static(b"after the junk"))
        .await
        .expect("member admitted");
    let got = next(&a).await;
    assert_eq!((got.from, &got.bytes[..]), (b_addr, &b"after the junk"[..]));
    a.send_datagram(b_addr, Bytes::from_static(b"reply"))
        .await
        .expect("reply");
    assert_eq!(&next(&b).await.bytes[..], b"reply");
}

#[tokio::test]
async fn simultaneous_dials_settle_on_one_connection() {
    let secret = ClusterSecret::generate();
    let (a, a_addr) = bind([127, 0, 0, 1], config(&secret));
    let (b, b_addr) = bind([127, 0, 0, 1], config(&secret));

    let (ra, rb) = tokio::join!(
        a.send_stream(b_addr, Bytes::from_static(b"from a")),
        b.send_stream(a_addr, Bytes::from_static(b"from b")),
    );
    ra.expect("a→b");
    rb.expect("b→a");
    assert_eq!(&next(&b).await.bytes[..], b"from a");
    assert_eq!(&next(&a).await.bytes[..], b"from b");

    // Both ends close the same duplicate (after a grace period), leaving one connection.
    let deadline = Instant::now() + WAIT;
    while a.open_connections() + b.open_connections() > 2 {
        assert!(
            Instant::now() < deadline,
            "duplicate connection was not closed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!((a.open_connections(), b.open_connections()), (1, 1));
    a.send_datagram(b_addr, Bytes::from_static(b"after"))
        .await
        .expect("a→b after");
    b.send_datagram(a_addr, Bytes::from_static(b"after"))
        .await
        .expect("b→a after");
    assert_eq!(next(&b).await.node, a.node_id());
    assert_eq!(next(&a).await.node, b.node_id());
}

#[tokio::test]
async fn connection_to_self_is_refused() {
    let (a, a_addr) = bind([127, 0, 0, 1], config(&ClusterSecret::generate()));
    let err = a
        .send_datagram(a_addr, Bytes::from_static(b"me?"))
        .await
        .expect_err("self");
    assert!(matches!(err, Error::SelfConnection { .. }), "{err:?}");
}

#[tokio::test]
async fn connection_limit_refuses_extra_peers() {
    let secret = ClusterSecret::generate();
    let mut one = config(&secret);
    one.max_connections = 1;
    let (a, a_addr) = bind([127, 0, 0, 1], one);
    let (b, _) = bind([127, 0, 0, 1], config(&secret));
    let (c, _) = bind([127, 0, 0, 1], config(&secret));

    b.send_datagram(a_addr, Bytes::from_static(b"b"))
        .await
        .expect("first peer fits");
    let err = c
        .send_datagram(a_addr, Bytes::from_static(b"c"))
        .await
        .expect_err("over the limit");
    assert!(matches!(err, Error::Refused { .. }), "{err:?}");
    assert_eq!(next(&a).await.node, b.node_id());
    assert_eq!(a.refusals().get(RefusalReason::ConnectionLimit), 1);
}

#[tokio::test]
async fn restarted_peer_resets_its_stale_connections() {
    let secret = ClusterSecret::generate();
    // Long idle timeout and no keep-alive: only a stateless reset can end the stale
    // connection within this test.
    let mut cfg = config(&secret);
    cfg.idle_timeout = Duration::from_secs(120);
    cfg.keep_alive = None;
    let (a, a_addr) = bind([127, 0, 0, 1], cfg);

    // b runs on its own runtime, which is then dropped: b vanishes without a close frame,
    // as if its process had crashed.
    let b_identity = Arc::new(IdentityKey::generate());
    let b_config = TransportConfig::new(b_identity.clone(), secret.clone());
    let (crash, crashed) = tokio::sync::oneshot::channel::<()>();
    let (bound, b_bound) = tokio::sync::oneshot::channel();
    let b_thread = tokio::task::spawn_blocking(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let b = rt.block_on(async move {
            let (b, b_addr) = bind([127, 0, 0, 1], b_config);
            let _ = bound.send(b_addr);
            // Serve until told to crash.
            let _ = crashed.await;
            b
        });
        drop(rt);
        drop(b);
    });
    let b_addr = b_bound.await.expect("b bound");
    // a dials b: b is the server of this connection, so a holds reset tokens for b's
    // connection ids.
    a.send_datagram(b_addr, Bytes::from_static(b"first life"))
        .await
        .expect("a→b");
    crash.send(()).expect("b still running");
    b_thread.await.expect("b's thread");
    // b starts again on the same address with the same identity key.
    let b2 = Transport::bind(
        b_addr,
        TransportConfig::new(b_identity.clone(), secret.clone()),
    )
    .expect("rebind b's address");
    assert_eq!(a.connected_peers(), vec![(b_addr, b_identity.node_id())]);
    // a's next packet on the stale connection draws a stateless reset.
    let _ = a
        .send_datagram(b_addr, Bytes::from_static(b"lost on the stale connection"))
        .await;
    let deadline = Instant::now() + WAIT;
    while !a.connected_peers().is_empty() {
        assert!(Instant::now() < deadline, "stale connection was not reset");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    a.send_datagram(b_addr, Bytes::from_static(b"hello again"))
        .await
        .expect("a→b2 over a new connection");
    let got = next(&b2).await;
    assert_eq!(
        (got.from, got.node, &got.bytes[..]),
        (a_addr, a.node_id(), &b"hello again"[..])
    );
}

#[tokio::test]
async fn one_ip_cannot_hold_every_slot_with_silent_connections() {
    let secret = ClusterSecret::generate();
    let mut cfg = config(&secret);
    cfg.max_pending_per_ip = 2;
    let (a, a_addr) = bind([127, 0, 0, 1], cfg);

    // Connections that finish the handshake but never prove anything.
    let mut endpoint =
        quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 5], 0))).expect("client endpoint");
    endpoint.set_default_client_config(unadmitted_client_config().expect("client config"));
    let mut silent = Vec::new();
    for _ in 0..2 {
        let conn = endpoint.connect(a_addr, "weft").expect("connect");
        silent.push(
            timeout(WAIT, conn)
                .await
                .expect("in time")
                .expect("handshake"),
        );
    }
    let third = endpoint.connect(a_addr, "weft").expect("connect");
    match timeout(WAIT, third).await.expect("answer in time") {
        Err(quinn::ConnectionError::ConnectionClosed(close)) => {
            assert_eq!(
                close.error_code,
                quinn::TransportErrorCode::CONNECTION_REFUSED
            )
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(a.refusals().get(RefusalReason::PerIpLimit), 1);

    // Members from other addresses are still served meanwhile.
    let (b, _) = bind([127, 0, 0, 1], config(&secret));
    b.send_datagram(a_addr, Bytes::from_static(b"member"))
        .await
        .expect("member admitted");
    assert_eq!(next(&a).await.node, b.node_id());
    assert_eq!(silent.len(), 2);
}

#[tokio::test]
async fn silent_peer_is_cut_off_at_the_admission_timeout_and_backs_off() {
    let mut cfg = config(&ClusterSecret::generate());
    cfg.admission_timeout = Duration::from_millis(300);
    let (a, a_addr) = bind([127, 0, 0, 1], cfg);

    let mut endpoint =
        quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 6], 0))).expect("client endpoint");
    endpoint.set_default_client_config(unadmitted_client_config().expect("client config"));
    let conn = timeout(WAIT, endpoint.connect(a_addr, "weft").expect("connect"))
        .await
        .expect("in time")
        .expect("handshake");
    match timeout(WAIT, conn.closed()).await.expect("closed in time") {
        quinn::ConnectionError::ApplicationClosed(close) => {
            assert_eq!(close.error_code, CLOSE_ADMISSION_FAILED)
        }
        other => panic!("expected the admission close, got {other:?}"),
    }
    assert_eq!(conn.stats().frame_rx.stream, 0);
    // The timeout counts as a failed admission.
    let again = endpoint.connect(a_addr, "weft").expect("connect");
    assert!(matches!(
        timeout(WAIT, again).await.expect("answer in time"),
        Err(quinn::ConnectionError::ConnectionClosed(_))
    ));
    assert_eq!(a.refusals().get(RefusalReason::Timeout), 1);
    assert_eq!(a.refusals().get(RefusalReason::Backoff), 1);
}

#[tokio::test]
async fn a_sender_giving_up_does_not_abort_the_admission() {
    let secret = ClusterSecret::generate();
    let (a, a_addr) = bind([127, 0, 0, 1], config(&secret));
    let (b, b_addr) = bind([127, 0, 0, 1], config(&secret));

    // The caller stops waiting long before the handshake can finish...
    let gave_up = timeout(
        Duration::from_micros(1),
        a.send_datagram(b_addr, Bytes::from_static(b"impatient")),
    )
    .await;
    assert!(gave_up.is_err(), "the send was still connecting");
    // ...but the connection is still made and admitted on both sides, with no backoff.
    let deadline = Instant::now() + WAIT;
    while a.connected_peers() != vec![(b_addr, b.node_id())] {
        assert!(Instant::now() < deadline, "the dial did not complete");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    b.send_datagram(a_addr, Bytes::from_static(b"welcome"))
        .await
        .expect("b→a");
    assert_eq!(&next(&a).await.bytes[..], b"welcome");
    assert_eq!((a.open_connections(), b.open_connections()), (1, 1));
}

/// Collects everything the fmt subscriber writes.
#[derive(Clone, Default)]
struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .map_err(|_| std::io::Error::other("poisoned"))?
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn logs_name_the_peer_and_never_the_secret() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    // The test runtime has one thread, so every task logs through this subscriber.
    let _guard = tracing::subscriber::set_default(subscriber);

    let secret = ClusterSecret::generate();
    let wrong = ClusterSecret::generate();
    let a_config = config(&secret);
    let a_identity = a_config.identity.clone();
    let (a, a_addr) = bind([127, 0, 0, 1], a_config);
    let (b, b_addr) = bind([127, 0, 0, 1], config(&secret));
    let (intruder, intruder_addr) = bind([127, 0, 0, 7], config(&wrong));
    b.send_datagram(a_addr, Bytes::from_static(b"hello"))
        .await
        .expect("member");
    next(&a).await;
    let refused = intruder
        .send_datagram(a_addr, Bytes::from_static(b"x"))
        .await;
    assert!(matches!(refused, Err(Error::AdmissionRejected { .. })));

    let text = String::from_utf8_lossy(&captured.0.lock().expect("logs")).into_owned();
    assert!(text.contains("peer admitted"), "{text}");
    assert!(
        text.contains(&format!("peer={b_addr}")),
        "spans name the member"
    );
    assert!(text.contains(&format!("node={}", b.node_id().short())));
    assert!(
        text.contains(&format!("peer={intruder_addr}")),
        "and the intruder"
    );
    // The refusal is logged at warn with the intruder's address and a reason in words.
    let line = format!("node at {intruder_addr} failed admission: wrong cluster secret");
    assert!(
        text.lines()
            .any(|l| l.contains("WARN") && l.contains(&line)),
        "{text}"
    );
    for s in [&secret, &wrong] {
        assert!(!text.contains(s.to_text().as_str()), "secret in the logs");
        assert!(!text.contains(&format!("{:?}", s.expose())));
    }
    assert!(!text.contains(a_identity.to_base64_secret().as_str()));
}

/// A node behind NAT is reachable only over the connection it opened: its own address (in
/// its record) is not. Sent to that unreachable address with its node id, a message takes
/// the live connection; without the id it would dial the dead address and fail.
#[tokio::test]
async fn a_node_is_reached_over_the_connection_it_opened_when_its_address_is_not() {
    let secret = ClusterSecret::generate();
    let (a, a_addr) = bind([127, 0, 0, 1], config(&secret));
    let (b, _) = bind([127, 0, 0, 1], config(&secret));
    b.send_datagram(a_addr, Bytes::from_static(b"hello from b"))
        .await
        .expect("b→a datagram");
    let got = next(&a).await;
    assert_eq!(got.node, b.node_id());

    // The address B's record would name, unreachable from A (TEST-NET-1, nothing there).
    let unreachable: SocketAddr = "192.0.2.1:6783".parse().expect("address");
    for kind in [Kind::Datagram, Kind::Stream] {
        timeout(
            WAIT,
            a.send_to(
                unreachable,
                Some(b.node_id()),
                kind,
                Bytes::from_static(b"to b"),
            ),
        )
        .await
        .expect("no dial to the unreachable address")
        .expect("a→b over b's connection");
        let got = next(&b).await;
        assert_eq!((got.node, got.kind), (a.node_id(), kind));
        assert_eq!(&got.bytes[..], b"to b");
    }
    assert_eq!(a.open_connections(), 1, "A dialled nothing new");
}
