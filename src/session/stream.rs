//! A connection on either hop: plain TCP, or TLS that pgveil terminated
//! (client side) or initiated (upstream side). The relay loops are written
//! once against this type.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// One hop's byte stream.
pub enum Stream {
    /// No TLS on this hop.
    Plain(TcpStream),
    /// A client's TLS, terminated by pgveil.
    Accepted(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    /// pgveil's TLS to PostgreSQL.
    Connected(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Stream {
    /// Whether this hop is encrypted.
    pub fn is_tls(&self) -> bool {
        !matches!(self, Stream::Plain(_))
    }

    /// The peer's end-entity certificate (upstream: the database's).
    pub fn peer_certificate(&self) -> Option<&[u8]> {
        match self {
            Stream::Connected(s) => s
                .get_ref()
                .1
                .peer_certificates()?
                .first()
                .map(|c| c.as_ref()),
            Stream::Accepted(s) => s
                .get_ref()
                .1
                .peer_certificates()?
                .first()
                .map(|c| c.as_ref()),
            Stream::Plain(_) => None,
        }
    }
}

macro_rules! delegate {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            Stream::Plain($s) => $e,
            Stream::Accepted($s) => $e,
            Stream::Connected($s) => $e,
        }
    };
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        delegate!(self, s => Pin::new(s).poll_read(cx, buf))
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, s => Pin::new(s).poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, s => Pin::new(s).poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Accepted(s) => s.is_write_vectored(),
            Stream::Connected(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => Pin::new(s).poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => Pin::new(s).poll_shutdown(cx))
    }
}
