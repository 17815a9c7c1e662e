//! A hand-driven protocol client, to send exactly the message sequences
//! drivers send (or split data exactly where a test wants) and see every
//! response.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use bytes::{BufMut, BytesMut};

/// A hand-driven protocol client (trust authentication), to send exactly
/// the pipelines drivers send and see every response tag.
pub struct Raw {
    stream: tokio::net::TcpStream,
    buf: BytesMut,
}

impl Raw {
    pub async fn connect(port: u16, db: &str) -> Raw {
        use tokio::io::AsyncWriteExt;
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let mut body = BytesMut::new();
        body.put_i32(196_608);
        for (k, v) in [("user", "postgres"), ("database", db)] {
            body.put_slice(k.as_bytes());
            body.put_u8(0);
            body.put_slice(v.as_bytes());
            body.put_u8(0);
        }
        body.put_u8(0);
        let mut msg = BytesMut::new();
        msg.put_i32(body.len() as i32 + 4);
        msg.put_slice(&body);
        stream.write_all(&msg).await.unwrap();
        let mut raw = Raw {
            stream,
            buf: BytesMut::new(),
        };
        raw.until_ready().await;
        raw
    }

    pub async fn send(&mut self, msgs: &[BytesMut]) {
        use tokio::io::AsyncWriteExt;
        for m in msgs {
            self.stream.write_all(m).await.unwrap();
        }
    }

    /// Messages up to and including ReadyForQuery, as (tag, body).
    pub async fn until_ready(&mut self) -> Vec<(u8, Vec<u8>)> {
        self.until(b'Z').await
    }

    /// Messages up to and including the first one tagged `stop`.
    pub async fn until(&mut self, stop: u8) -> Vec<(u8, Vec<u8>)> {
        use tokio::io::AsyncReadExt;
        let mut out = Vec::new();
        loop {
            while self.buf.len() >= 5 {
                let len = i32::from_be_bytes(self.buf[1..5].try_into().unwrap()) as usize;
                if self.buf.len() < len + 1 {
                    break;
                }
                let m = self.buf.split_to(len + 1);
                out.push((m[0], m[5..].to_vec()));
                if m[0] == stop {
                    return out;
                }
            }
            let n = tokio::time::timeout(
                std::time::Duration::from_secs(20),
                self.stream.read_buf(&mut self.buf),
            )
            .await
            .expect("response in time")
            .unwrap();
            assert!(n > 0, "connection closed; got {out:?}");
        }
    }
}

pub fn msg(tag: u8, body: &[u8]) -> BytesMut {
    let mut b = BytesMut::new();
    b.put_u8(tag);
    b.put_i32(body.len() as i32 + 4);
    b.put_slice(body);
    b
}

pub fn parse_msg(name: &str, sql: &str) -> BytesMut {
    let mut b = BytesMut::new();
    for s in [name, sql] {
        b.put_slice(s.as_bytes());
        b.put_u8(0);
    }
    b.put_i16(0);
    msg(b'P', &b)
}

pub fn bind_msg(stmt: &str, params: &[&str]) -> BytesMut {
    let mut b = BytesMut::new();
    b.put_u8(0);
    b.put_slice(stmt.as_bytes());
    b.put_u8(0);
    b.put_i16(0);
    b.put_i16(params.len() as i16);
    for p in params {
        b.put_i32(p.len() as i32);
        b.put_slice(p.as_bytes());
    }
    b.put_i16(0);
    msg(b'B', &b)
}

pub fn execute_msg() -> BytesMut {
    msg(b'E', b"\0\0\0\0\0")
}

pub fn tags(msgs: &[(u8, Vec<u8>)]) -> String {
    msgs.iter().map(|(t, _)| *t as char).collect()
}
