//! The same MCP exchange over HTTP/1.1, h2c, TLS (h1 and h2) and HTTP/3.

use http::Version;
use serde_json::json;

use std::time::Duration;

use crate::{
    clients::{self, text_of},
    harness::{Gateway, GatewaySpec, Reference},
    http::{ACCEPT_BOTH, H3, Http, Session},
};

async fn echo_over(http: &Http, url: &str, auth: &str) -> (Version, String) {
    let mut s = Session::new(http, url, auth);
    s.initialize().await;
    let r = s
        .request(
            "tools/call",
            json!({"name": "echo", "arguments": {"message": "over the wire"}}),
        )
        .await;
    (r.version, text_of(&r.json()["result"]))
}

#[tokio::test(flavor = "multi_thread")]
async fn every_http_version_reaches_the_upstream() {
    let reference = Reference::start(None);
    let (mut spec, key) = GatewaySpec::open(&[("reference", &reference.url)]);
    spec.tls = true;
    let gw = Gateway::start(&spec).await;
    let auth = key.bearer();
    let plain = format!("{}/mcp/reference", gw.url());
    let tls = format!("{}/mcp/reference", gw.tls_url());

    assert_eq!(
        echo_over(&Http::h1(), &plain, &auth).await,
        (Version::HTTP_11, "over the wire".into())
    );
    assert_eq!(
        echo_over(&Http::h2c(), &plain, &auth).await,
        (Version::HTTP_2, "over the wire".into())
    );
    assert_eq!(
        echo_over(&Http::tls(&gw.ca(), false), &tls, &auth).await,
        (Version::HTTP_11, "over the wire".into())
    );
    assert_eq!(
        echo_over(&Http::tls(&gw.ca(), true), &tls, &auth).await,
        (Version::HTTP_2, "over the wire".into())
    );

    // TLS answers advertise HTTP/3 on the same port number.
    let r = Http::tls(&gw.ca(), true)
        .send(
            http::Method::GET,
            &format!("{}/healthz", gw.tls_url()),
            &[],
            None,
        )
        .await;
    let port = gw.tls_url().rsplit(':').next().unwrap().to_owned();
    assert_eq!(
        r.header("alt-svc"),
        Some(format!("h3=\":{port}\"; ma=86400").as_str())
    );

    // A real third-party QUIC client (niquests/qh3), HTTP/3 only.
    let h3_url = format!("https://127.0.0.1:{port}/mcp/reference");
    let out = clients::h3(
        &h3_url,
        &gw.ca(),
        &auth,
        ("echo", json!({"message": "over quic"})),
    )
    .await;
    assert_eq!(out["http_version"], 30, "{out}");
    assert!(clients::tool_names(&out).contains(&"echo".to_string()));
    assert_eq!(text_of(&out["result"]), "over quic");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_renewed_certificate_is_served_without_a_restart() {
    let reference = Reference::start(None);
    let (mut spec, _key) = GatewaySpec::open(&[("reference", &reference.url)]);
    spec.tls = true;
    let gw = Gateway::start(&spec).await;
    let health = format!("{}/healthz", gw.tls_url());
    let old_ca = crate::harness::temp_dir("old-ca").join("ca.pem");
    std::fs::copy(gw.ca(), &old_ca).unwrap();
    assert_eq!(
        Http::tls(&old_ca, false)
            .try_send(http::Method::GET, &health)
            .await,
        Ok(http::StatusCode::OK)
    );

    // A new CA and leaf, written over the files the gateway serves.
    let renewed = crate::harness::temp_dir("renewed");
    let files = stoa_gateway::tls::CertFiles::development(&renewed).unwrap();
    let served = gw.ca().parent().unwrap().to_owned();
    std::fs::copy(&files.key, served.join("key.pem")).unwrap();
    std::fs::copy(&files.cert, served.join("cert.pem")).unwrap();
    let new_ca = files.dev_ca.unwrap();
    crate::harness::eventually(
        "the renewed certificate to be served",
        std::time::Duration::from_secs(10),
        || async {
            let ok = Http::tls(&new_ca, false)
                .try_send(http::Method::GET, &health)
                .await
                == Ok(http::StatusCode::OK);
            ok.then_some(())
        },
    )
    .await;
    assert!(
        Http::tls(&old_ca, false)
            .try_send(http::Method::GET, &health)
            .await
            .is_err(),
        "the old certificate is gone"
    );
    assert!(gw.log().contains("TLS certificate reloaded"));
}

/// An `https://` upstream behind a private CA (`upstream_ca_file`): here a
/// second gateway's TLS listener, reached with that gateway's own key as the
/// upstream's configured credential. Calls reuse the pooled TLS connection.
#[tokio::test(flavor = "multi_thread")]
async fn an_https_upstream_is_reached_with_a_private_ca() {
    let reference = Reference::start(None);
    let (mut inner_spec, inner_key) = GatewaySpec::open(&[("reference", &reference.url)]);
    inner_spec.tls = true;
    let inner = Gateway::start(&inner_spec).await;
    let inner_url = format!("{}/mcp/reference", inner.tls_url());

    let (mut outer_spec, key) = GatewaySpec::open(&[("inner", &inner_url)]);
    outer_spec.extra = format!("upstream_ca_file: {:?}\n", inner.ca());
    // The inner gateway's key rides as the upstream's credential header.
    let dir = crate::harness::temp_dir("gw");
    let yaml = outer_spec.yaml(&dir).replace(
        &format!("{{name: inner, url: \"{inner_url}\"}}"),
        &format!(
            "{{name: inner, url: \"{inner_url}\", headers: {{Authorization: \"{}\"}}}}",
            inner_key.bearer()
        ),
    );
    assert!(yaml.contains("headers: {Authorization"), "{yaml}");
    let config = dir.join("gateway.yaml");
    std::fs::write(&config, &yaml).unwrap();
    let outer = Gateway::start_with(dir, config).await;
    let url = format!("{}/mcp/inner", outer.url());
    for _ in 0..3 {
        assert_eq!(
            echo_over(&Http::h1(), &url, &key.bearer()).await,
            (Version::HTTP_11, "over the wire".into())
        );
    }

    // Without the private CA the same upstream is refused by name.
    let (plain_spec, key) = GatewaySpec::open(&[("inner", &inner_url)]);
    let untrusting = Gateway::start(&plain_spec).await;
    let r = Http::h1()
        .send(
            http::Method::POST,
            &format!("{}/mcp/inner", untrusting.url()),
            &[
                ("authorization", key.bearer().as_str()),
                ("content-type", "application/json"),
                ("accept", "application/json, text/event-stream"),
            ],
            Some(r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#),
        )
        .await;
    assert_eq!(r.status, http::StatusCode::BAD_GATEWAY, "{}", r.body);
    assert_eq!(r.json()["error"]["data"]["reason"], "upstream_unavailable");
    assert!(r.body.contains("TLS"), "{}", r.body);
}

/// An HTTP/3 client whose address changes mid-connection (NAT rebinding:
/// a new UDP port) keeps its connection and its MCP session. Each worker
/// thread has a QUIC socket of its own on the port, and the kernel picks
/// one by the client's address, so after a move the datagrams usually land
/// on a worker that does not hold the connection: it hands them over.
#[tokio::test(flavor = "multi_thread")]
async fn an_http3_client_that_changes_address_keeps_its_connection() {
    let reference = Reference::start(None);
    let (mut spec, key) = GatewaySpec::open(&[("reference", &reference.url)]);
    spec.tls = true;
    // With 8 sockets, 10 moves all landing on the first one has odds 8^-10.
    spec.workers = Some(8);
    let gw = Gateway::start(&spec).await;
    let mut h3 = H3::connect(&gw).await;
    let url = format!("{}/mcp/reference", h3.base);
    let mut headers = vec![
        ("authorization".to_string(), key.bearer()),
        ("content-type".into(), "application/json".into()),
        ("accept".into(), ACCEPT_BOTH.into()),
    ];
    let init = h3.post(&url, &headers, &initialize("mover")).await;
    assert_eq!(init.status, 200);
    headers.push((
        "mcp-session-id".into(),
        init.header("mcp-session-id").unwrap().into(),
    ));
    headers.push(("mcp-protocol-version".into(), "2025-11-25".into()));

    let mut ports = std::collections::HashSet::new();
    for i in 0..10 {
        h3.endpoint
            .rebind(std::net::UdpSocket::bind("127.0.0.1:0").unwrap())
            .unwrap();
        ports.insert(h3.endpoint.local_addr().unwrap().port());
        let call = json!({"jsonrpc": "2.0", "id": i + 1, "method": "tools/call",
            "params": {"name": "echo", "arguments": {"message": format!("move {i}")}}});
        let r = h3.post(&url, &headers, &call).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(text_of(&r.json()["result"]), format!("move {i}"));
    }
    assert_eq!(ports.len(), 10, "ten different client ports");
    assert!(
        h3.conn.close_reason().is_none(),
        "{:?}",
        h3.conn.close_reason()
    );

    let metrics = gw.metrics().await;
    let handed: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("stoa_quic_handovers_total{outcome=\"handed_over\"} "))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(handed > 0, "{metrics}");
}

/// On shutdown, an HTTP/3 call in flight completes, and then the gateway
/// closes the connection itself (H3_NO_ERROR) instead of waiting out the
/// drain timeout for a client that keeps its connection open.
#[tokio::test(flavor = "multi_thread")]
async fn draining_closes_http3_connections_once_their_calls_are_answered() {
    let (_everything, ev_url) = crate::harness::everything().await;
    let (mut spec, key) = GatewaySpec::open(&[("everything", &ev_url)]);
    spec.tls = true;
    spec.extra = "limits: {drain_timeout: 120s}\n".into();
    let mut gw = Gateway::start(&spec).await;
    let h3 = H3::connect(&gw).await;
    let url = format!("{}/mcp/everything", h3.base);
    let mut headers = vec![
        ("authorization".to_string(), key.bearer()),
        ("content-type".into(), "application/json".into()),
        ("accept".into(), ACCEPT_BOTH.into()),
    ];
    let mut post = h3.clone_sender();
    let init = post.post(&url, &headers, &initialize("drainee")).await;
    assert_eq!(init.status, 200, "{}", init.body);
    headers.push((
        "mcp-session-id".into(),
        init.header("mcp-session-id").unwrap().into(),
    ));
    headers.push(("mcp-protocol-version".into(), "2025-11-25".into()));
    let note = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    assert_eq!(post.post(&url, &headers, &note).await.status, 202);

    // A 2-second call is in flight when the gateway is told to stop.
    let long = json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {
        "name": "trigger-long-running-operation", "arguments": {"duration": 2, "steps": 2}}});
    let (u, h) = (url.clone(), headers.clone());
    let in_flight = tokio::spawn(async move { post.post(&u, &h, &long).await });
    crate::harness::eventually(
        "the call to be in flight",
        Duration::from_secs(10),
        || async {
            let m = gw.metrics().await;
            m.contains("stoa_active_streams{kind=\"post\"} 1")
                .then_some(())
        },
    )
    .await;
    gw.proc.signal("TERM");

    let done = in_flight.await.unwrap();
    assert_eq!(done.status, 200, "{}", done.body);
    assert!(
        text_of(&done.json()["result"]).contains("completed"),
        "{}",
        done.body
    );
    // The client never closes; the gateway does, with HTTP/3's "no error".
    match h3.conn.closed().await {
        quinn::ConnectionError::ApplicationClosed(c) => {
            assert_eq!(c.error_code, quinn::VarInt::from_u32(0x100), "{c:?}")
        }
        other => panic!("closed by {other:?}"),
    }
    // Well before the 120 s drain timeout.
    let status = gw.proc.wait_exit(Duration::from_secs(30)).await;
    assert!(status.success(), "{status:?}\n{}", gw.log());
    assert!(!gw.log().contains("drain timeout reached"), "{}", gw.log());
}

fn initialize(name: &str) -> serde_json::Value {
    json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {},
        "clientInfo": {"name": name, "version": "0"}}})
}

/// The GOAWAY sent on drain names the stream after the last request the
/// gateway accepted, so a request still being answered is never announced
/// as "not processed" (which invites a retry: a tool run twice); a request
/// that arrives after the GOAWAY is refused with H3_REQUEST_REJECTED; the
/// one in flight is answered. Spoken in raw HTTP/3 frames, as a client that
/// ignores GOAWAY would (the h3 crate's client refuses to send after one).
#[tokio::test(flavor = "multi_thread")]
async fn draining_http3_names_the_next_stream_in_goaway_and_refuses_later_requests() {
    let reference = Reference::start(None);
    let (mut spec, key) = GatewaySpec::open(&[("reference", &reference.url)]);
    spec.tls = true;
    let mut gw = Gateway::start(&spec).await;
    let (_endpoint, conn, port) = crate::http::quic_connect(&gw).await;
    let authority = format!("localhost:{port}");
    // Our control stream: its type, then empty SETTINGS.
    let mut control = conn.open_uni().await.unwrap();
    control.write_all(&[0x00, 0x04, 0x00]).await.unwrap();
    let goaway = tokio::spawn(read_goaway(conn.clone()));

    // Stream 0: a POST whose body is held back, so it stays in flight (the
    // gateway waits for the body). Stream 4: a GET answered at once, which
    // tells that both are accepted (QUIC hands streams over in order).
    let (mut s0_tx, mut s0_rx) = conn.open_bi().await.unwrap();
    let bearer = key.bearer();
    let mut fields = vec![0xd4, 0xd7]; // :method POST, :scheme https
    fields.extend(literal(0, &authority)); // :authority
    fields.extend(literal(1, "/mcp/reference")); // :path
    fields.push(0xee); // content-type: application/json
    fields.extend(literal(29, ACCEPT_BOTH)); // accept
    fields.extend(literal(84, &bearer)); // authorization
    s0_tx.write_all(&headers_frame(&fields)).await.unwrap();
    let mut s4_rx = get_healthz(&conn, &authority).await;
    let answered = s4_rx.read_to_end(1 << 16).await.unwrap();
    assert!(!answered.is_empty());

    gw.proc.signal("TERM");
    // The last accepted request stream is 4: GOAWAY must name 8 (naming
    // 4 would announce an answered request as not processed).
    assert_eq!(goaway.await.unwrap(), 8);

    // Stream 8, sent after the GOAWAY: refused, not served.
    let mut s8_rx = get_healthz(&conn, &authority).await;
    match s8_rx.read_to_end(1 << 16).await {
        Err(quinn::ReadToEndError::Read(quinn::ReadError::Reset(code))) => {
            assert_eq!(code, quinn::VarInt::from_u32(0x10b), "H3_REQUEST_REJECTED")
        }
        other => panic!("stream 8 was not refused: {other:?}"),
    }

    // Stream 0 gets its body now, and its answer.
    let init = initialize("held").to_string();
    let mut data = varint(0x00);
    data.extend(varint(init.len() as u64));
    data.extend(init.as_bytes());
    s0_tx.write_all(&data).await.unwrap();
    s0_tx.finish().unwrap();
    let answer = s0_rx.read_to_end(1 << 20).await.unwrap();
    let text = String::from_utf8_lossy(&answer);
    assert!(text.contains("\"protocolVersion\""), "{text}");

    let status = gw.proc.wait_exit(Duration::from_secs(30)).await;
    assert!(status.success(), "{status:?}\n{}", gw.log());
}

/// Reads the server's control stream (type 0x00) up to its GOAWAY frame;
/// the stream ID it names.
async fn read_goaway(conn: quinn::Connection) -> u64 {
    loop {
        let mut uni = conn.accept_uni().await.unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 256];
        // The stream type, then frames: (type, length, payload).
        let mut at = None;
        loop {
            match uni.read(&mut chunk).await.unwrap() {
                Some(n) => buf.extend_from_slice(&chunk[..n]),
                None => break,
            }
            let Some((kind, mut i)) = read_varint(&buf, 0) else {
                continue;
            };
            if kind != 0x00 {
                break; // not the control stream
            }
            if let Some(a) = at {
                i = a;
            }
            while let Some((ty, j)) = read_varint(&buf, i) {
                let Some((len, k)) = read_varint(&buf, j) else {
                    break;
                };
                let end = k + len as usize;
                if buf.len() < end {
                    break;
                }
                if ty == 0x07 {
                    return read_varint(&buf, k).unwrap().0;
                }
                i = end;
            }
            at = Some(i);
        }
    }
}

/// Sends `GET /healthz` on a new request stream; its receiving half.
async fn get_healthz(conn: &quinn::Connection, authority: &str) -> quinn::RecvStream {
    let mut fields = vec![0xd1, 0xd7]; // :method GET, :scheme https
    fields.extend(literal(0, authority));
    fields.extend(literal(1, "/healthz"));
    let (mut tx, rx) = conn.open_bi().await.unwrap();
    tx.write_all(&headers_frame(&fields)).await.unwrap();
    tx.finish().unwrap();
    rx
}

/// A HEADERS frame: the QPACK prefix (no dynamic table), then `fields`.
fn headers_frame(fields: &[u8]) -> Vec<u8> {
    let mut block = vec![0x00, 0x00];
    block.extend_from_slice(fields);
    let mut f = varint(0x01);
    f.extend(varint(block.len() as u64));
    f.extend(block);
    f
}

/// A QPACK literal field line naming static-table entry `index`.
fn literal(index: u64, value: &str) -> Vec<u8> {
    let mut out = prefixed_int(0x50, 4, index);
    out.extend(prefixed_int(0x00, 7, value.len() as u64));
    out.extend(value.as_bytes());
    out
}

/// An HPACK/QPACK integer with an `n`-bit prefix in a byte starting `flags`.
fn prefixed_int(flags: u8, n: u32, mut v: u64) -> Vec<u8> {
    let max = (1u64 << n) - 1;
    if v < max {
        return vec![flags | v as u8];
    }
    let mut out = vec![flags | max as u8];
    v -= max;
    while v >= 128 {
        out.push((v % 128) as u8 | 0x80);
        v /= 128;
    }
    out.push(v as u8);
    out
}

/// A QUIC variable-length integer (values below 2^30).
fn varint(v: u64) -> Vec<u8> {
    match v {
        0..64 => vec![v as u8],
        64..16384 => (0x4000 | v as u16).to_be_bytes().to_vec(),
        _ => (0x8000_0000 | v as u32).to_be_bytes().to_vec(),
    }
}

fn read_varint(buf: &[u8], at: usize) -> Option<(u64, usize)> {
    let first = *buf.get(at)?;
    let len = 1usize << (first >> 6);
    let bytes = buf.get(at..at + len)?;
    let mut v = u64::from(first & 0x3f);
    for b in &bytes[1..] {
        v = (v << 8) | u64::from(*b);
    }
    Some((v, at + len))
}
