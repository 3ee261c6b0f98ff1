//! Request bodies through the running gateway: a body that is malformed, too large or too slow
//! is answered by the gateway, and the backend never sees the request; good bodies, buffered or
//! streamed, arrive whole.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{CountingUpstream, Gateway};

fn gateway(upstream: &CountingUpstream) -> Gateway {
    Gateway::start_with(
        "body_timeout = \"1s\"",
        &format!(
            r#"
[upstreams.backend]
targets = ["127.0.0.1:{port}"]

[[routes]]
path = "/buffered"
access = "public"
upstream = "backend"

[[routes]]
path = "/small"
access = "public"
upstream = "backend"
max_body_size = 100

[[routes]]
path = "/upload"
access = "public"
upstream = "backend"
request_buffering = false
max_body_size = 300000
"#,
            port = upstream.port
        ),
        &[],
    )
}

/// Sends `request` on a new connection and reads the answer until the gateway closes or 5 s
/// pass; returns the answer and how long it took.
fn exchange(gw: &Gateway, request: &[u8]) -> (String, Duration) {
    let started = Instant::now();
    let mut conn = TcpStream::connect(("127.0.0.1", gw.port)).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    conn.write_all(request).unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = conn.read(&mut buf) {
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&buf[..n]);
        // One answer is enough: the gateway may keep the connection open after a good one.
        if let Some(end) = answer.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&answer[..end]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if answer.len() >= end + 4 + length {
                break;
            }
        }
    }
    (
        String::from_utf8_lossy(&answer).into_owned(),
        started.elapsed(),
    )
}

fn status(answer: &str) -> &str {
    answer.get(9..12).unwrap_or("")
}

#[tokio::test]
async fn bad_bodies_are_answered_by_the_gateway_and_never_reach_the_backend() {
    let upstream = CountingUpstream::start().await;
    let gw = gateway(&upstream);
    let (gw, upstream) = tokio::task::spawn_blocking(move || {
        // A chunk size that is not hexadecimal.
        let (answer, _) = exchange(
            &gw,
            b"POST /buffered HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\nhello\r\n0\r\n\r\n",
        );
        assert_eq!(status(&answer), "400", "{answer}");
        assert!(answer.contains("invalid_request"), "{answer}");

        // Too large by its Content-Length: refused before a byte of it is sent.
        let (answer, took) = exchange(
            &gw,
            b"POST /buffered HTTP/1.1\r\nHost: gw\r\nContent-Length: 2000000\r\n\r\n",
        );
        assert_eq!(status(&answer), "413", "{answer}");
        assert!(answer.contains("payload_too_large"), "{answer}");
        assert!(took < Duration::from_millis(900), "{took:?}");
        let (answer, _) = exchange(
            &gw,
            b"POST /small HTTP/1.1\r\nHost: gw\r\nContent-Length: 101\r\n\r\n",
        );
        assert_eq!(status(&answer), "413", "{answer}");

        // Too large as it arrives: a chunked body past the 64 KiB a buffered route keeps.
        let mut big = b"POST /buffered HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        for _ in 0..5 {
            big.extend_from_slice(format!("{:x}\r\n", 16384).as_bytes());
            big.extend(std::iter::repeat_n(b'x', 16384));
            big.extend_from_slice(b"\r\n");
        }
        big.extend_from_slice(b"0\r\n\r\n");
        let (answer, _) = exchange(&gw, &big);
        assert_eq!(status(&answer), "413", "{answer}");

        // Too slow: 3 bytes of 10, then nothing; 408 once body_timeout (1 s) passes.
        let (answer, took) = exchange(
            &gw,
            b"POST /buffered HTTP/1.1\r\nHost: gw\r\nContent-Length: 10\r\n\r\nabc",
        );
        assert_eq!(status(&answer), "408", "{answer}");
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_millis(3000),
            "{took:?}"
        );
        (gw, upstream)
    })
    .await
    .unwrap();
    assert_eq!(upstream.connections(), 0, "{}", gw.log());
}

#[tokio::test]
async fn good_bodies_arrive_whole_buffered_or_streamed() {
    let upstream = CountingUpstream::start().await;
    let gw = gateway(&upstream);
    tokio::task::spawn_blocking(move || {
        // A small chunked body, read whole before the backend is contacted.
        let (answer, _) = exchange(
            &gw,
            b"POST /buffered HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
        );
        assert_eq!(status(&answer), "200", "{answer}");
        // Re-framed as one chunk: the body read whole, then sent on.
        assert!(
            answer
                .to_ascii_lowercase()
                .ends_with("\r\n\r\nb\r\nhello world\r\n0\r\n\r\n"),
            "{answer}"
        );

        // A larger upload on a streaming route.
        let mut upload = b"POST /upload HTTP/1.1\r\nHost: gw\r\nContent-Length: 200000\r\n\r\n".to_vec();
        upload.extend(std::iter::repeat_n(b'u', 200_000));
        let (answer, _) = exchange(&gw, &upload);
        assert_eq!(status(&answer), "200", "{answer}");
        assert!(answer.ends_with("\r\n\r\n200000"), "{answer}");

        // A streamed chunked upload that outgrows the route's 300,000 bytes is cut with 413.
        let mut over = b"POST /upload HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        for _ in 0..25 {
            over.extend_from_slice(format!("{:x}\r\n", 16384).as_bytes());
            over.extend(std::iter::repeat_n(b'u', 16384));
            over.extend_from_slice(b"\r\n");
        }
        over.extend_from_slice(b"0\r\n\r\n");
        let (answer, _) = exchange(&gw, &over);
        assert_eq!(status(&answer), "413", "{answer}");
    })
    .await
    .unwrap();
}
