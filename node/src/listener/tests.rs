//! The listener over real TCP on loopback: caps and timeouts.

use super::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;

fn config() -> ListenerConfig {
    ListenerConfig {
        name: "test",
        max_connections: 64,
        max_connections_per_address: 64,
        header_read_timeout: Duration::from_secs(30),
        idle_timeout: Duration::from_secs(30),
        tls_handshake_timeout: Duration::from_secs(10),
        http2_keep_alive_interval: HTTP2_KEEP_ALIVE_INTERVAL,
        http2_keep_alive_timeout: HTTP2_KEEP_ALIVE_TIMEOUT,
        shutdown_grace: Duration::from_secs(1),
    }
}

/// A listener answering `ok` to everything, on 127.0.0.1; dropping the
/// sender stops it.
async fn start(config: ListenerConfig) -> (SocketAddr, oneshot::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let handler: Handler =
        Arc::new(|_req, _peer| Box::pin(async { Response::new(crate::body::full("ok")) }));
    let (tx, rx) = oneshot::channel::<()>();
    tokio::spawn(serve(listener, None, config, handler, async move {
        let _ = rx.await;
    }));
    (addr, tx)
}

/// A connection to `addr` from the loopback address `from` (all of
/// 127/8 is loopback on Linux).
async fn connect_from(from: [u8; 4], addr: SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((from, 0))).unwrap();
    socket.connect(addr).await.unwrap()
}

/// Send one request on `stream` and read its whole answer (`ok`).
async fn request(stream: &mut TcpStream) -> io::Result<()> {
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
        .await?;
    let mut answer = Vec::new();
    let mut buf = [0u8; 512];
    while !answer.ends_with(b"\r\n\r\nok") {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await??;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        answer.extend_from_slice(&buf[..n]);
    }
    assert!(answer.starts_with(b"HTTP/1.1 200"), "{answer:?}");
    Ok(())
}

/// How long until the server closes `stream` (EOF or reset), if within
/// `deadline`.
async fn closed_after(stream: &mut TcpStream, deadline: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut buf = [0u8; 512];
    loop {
        match tokio::time::timeout_at(start + deadline, stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0) | Err(_)) => return Some(start.elapsed()),
            Ok(Ok(_)) => continue,
        }
    }
}

#[tokio::test]
async fn over_the_per_address_cap_a_new_connection_is_closed_and_other_addresses_are_served() {
    let (addr, _stop) = start(ListenerConfig {
        max_connections_per_address: 2,
        ..config()
    })
    .await;
    // Two silent connections hold 127.0.0.1's share.
    let mut held = vec![
        connect_from([127, 0, 0, 1], addr).await,
        connect_from([127, 0, 0, 1], addr).await,
    ];
    let mut third = connect_from([127, 0, 0, 1], addr).await;
    assert!(
        closed_after(&mut third, Duration::from_secs(5))
            .await
            .is_some(),
        "a third connection from one address was kept"
    );
    // Another address is unaffected.
    let mut other = connect_from([127, 0, 0, 2], addr).await;
    request(&mut other).await.unwrap();
    request(&mut held[0]).await.unwrap();

    // A closed connection gives its slot back.
    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut again = connect_from([127, 0, 0, 1], addr).await;
        if request(&mut again).await.is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "the freed slot never came back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout_and_a_busy_one_kept() {
    let idle = Duration::from_millis(400);
    let (addr, _stop) = start(ListenerConfig {
        idle_timeout: idle,
        ..config()
    })
    .await;
    // A busy connection: a request every 100 ms, over several idle timeouts.
    let mut busy = connect_from([127, 0, 0, 1], addr).await;
    let until = Instant::now() + idle * 4;
    loop {
        request(&mut busy)
            .await
            .expect("a connection in use was closed");
        if Instant::now() >= until {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Then idle: closed after the idle timeout (not the 30 s header one).
    let after = closed_after(&mut busy, Duration::from_secs(10))
        .await
        .expect("an idle keep-alive connection was never closed");
    assert!(
        after >= idle - Duration::from_millis(50),
        "closed after {after:?}"
    );
}

#[tokio::test]
async fn a_silent_connection_and_slow_headers_are_closed_after_the_header_read_timeout() {
    let header_read = Duration::from_millis(400);
    let (addr, _stop) = start(ListenerConfig {
        header_read_timeout: header_read,
        ..config()
    })
    .await;
    let mut silent = connect_from([127, 0, 0, 1], addr).await;
    let mut slow = connect_from([127, 0, 0, 1], addr).await;
    request(&mut slow).await.unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
    for (what, stream) in [("silent", &mut silent), ("slow headers", &mut slow)] {
        let after = closed_after(stream, Duration::from_secs(10)).await;
        assert!(after.is_some(), "{what}: never closed");
    }
}

#[tokio::test]
async fn an_idle_http2_connection_gets_a_goaway() {
    let (addr, _stop) = start(ListenerConfig {
        idle_timeout: Duration::from_millis(400),
        ..config()
    })
    .await;
    let stream = connect_from([127, 0, 0, 1], addr).await;
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    let driver = tokio::spawn(conn);
    let req = Request::get("http://test/")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), http::StatusCode::OK);
    drop(resp);
    // The server ends the connection: the client's driver finishes cleanly.
    let ended = tokio::time::timeout(Duration::from_secs(10), driver)
        .await
        .expect("an idle HTTP/2 connection was kept open");
    ended.unwrap().unwrap();
}
