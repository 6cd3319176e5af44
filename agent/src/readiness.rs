//! Readiness checks: `GET /health` → 200 for llama-server and vLLM, a TCP connect for
//! rpc-server (which speaks only its binary protocol).

use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);

/// One `GET /health`; true on HTTP 200. A tiny HTTP/1.1 client: the agent needs nothing more
/// and stays free of an HTTP stack.
pub async fn health_ok(host: &str, port: u16) -> bool {
    let attempt = async {
        let mut stream = TcpStream::connect((host, port)).await.ok()?;
        let request =
            format!("GET /health HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut head = [0u8; 64];
        let mut read = 0;
        while read < 12 {
            let n = stream.read(&mut head[read..]).await.ok()?;
            if n == 0 {
                break;
            }
            read += n;
        }
        let status_line = String::from_utf8_lossy(&head[..read]).into_owned();
        Some(status_line.split_whitespace().nth(1) == Some("200"))
    };
    matches!(
        tokio::time::timeout(ATTEMPT_TIMEOUT, attempt).await,
        Ok(Some(true))
    )
}

/// One HTTP/1.1 request with `Connection: close`; the status and the whole body (at most
/// 1 MiB). For the build smoke test and the idle check before a switch: small JSON both ways.
pub async fn http_call(
    host: &str,
    port: u16,
    method: &str,
    path: &str,
    json_body: Option<&str>,
    timeout: Duration,
) -> Option<(u16, String)> {
    let attempt = async {
        let mut stream = TcpStream::connect((host, port)).await.ok()?;
        let body = json_body.unwrap_or("");
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut reply = Vec::new();
        (&mut stream)
            .take(1 << 20)
            .read_to_end(&mut reply)
            .await
            .ok()?;
        let text = String::from_utf8_lossy(&reply).into_owned();
        let (head, body) = text.split_once("\r\n\r\n")?;
        let status = head.split_whitespace().nth(1)?.parse().ok()?;
        let chunked = head.lines().any(|l| {
            l.to_ascii_lowercase()
                .starts_with("transfer-encoding: chunked")
        });
        let body = if chunked {
            dechunk(body)
        } else {
            body.to_string()
        };
        Some((status, body))
    };
    tokio::time::timeout(timeout, attempt).await.ok().flatten()
}

/// Joins an HTTP/1.1 chunked body (llama-server chunks some replies).
fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

/// True when something accepts TCP connections on the port.
pub async fn tcp_open(host: &str, port: u16) -> bool {
    matches!(
        tokio::time::timeout(ATTEMPT_TIMEOUT, TcpStream::connect((host, port))).await,
        Ok(Ok(_))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dechunks_bodies() {
        assert_eq!(
            dechunk("5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"),
            "hello world"
        );
    }

    #[tokio::test]
    async fn health_endpoint_200_and_503() {
        for (status, expected) in [("200 OK", true), ("503 Service Unavailable", false)] {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let port = listener.local_addr().expect("addr").port();
            let reply = format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n");
            let server = tokio::spawn(async move {
                if let Ok((mut socket, _)) = listener.accept().await {
                    let mut buf = [0u8; 256];
                    let _ = socket.read(&mut buf).await;
                    let _ = socket.write_all(reply.as_bytes()).await;
                }
            });
            assert_eq!(health_ok("127.0.0.1", port).await, expected);
            let _ = server.await;
            assert!(
                !health_ok("127.0.0.1", port).await,
                "closed port is not healthy"
            );
        }
    }
}
