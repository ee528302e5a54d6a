//! TLS transports for tonic: [`incoming`] turns a TCP listener into a stream of TLS 1.3
//! connections, each carrying the verified identity of its client ([`ConnInfo`], which tonic
//! puts into every request's extensions); [`channel`] is a lazily connecting gRPC channel that
//! speaks TLS with a given client configuration.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tonic::transport::server::Connected;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::{Identity, NODE_SERVER_NAME};

/// A handshake that does not complete within this is dropped (a silent client cannot hold a
/// connection slot).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What a server knows about a connection: where it comes from and, when the client presented
/// a certificate from the cluster CA, whose it is.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub remote: Option<SocketAddr>,
    pub identity: Option<Identity>,
}

/// A server-side TLS connection.
pub struct TlsConn {
    inner: tokio_rustls::server::TlsStream<TcpStream>,
    info: ConnInfo,
}

impl Connected for TlsConn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Accepts TCP connections and completes their TLS handshakes concurrently (a slow client
/// does not hold up the others); yields the established connections until the stream is
/// dropped.
pub fn incoming(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
) -> impl tokio_stream::Stream<Item = Result<TlsConn, std::io::Error>> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<TlsConn, std::io::Error>>(64);
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    tokio::spawn(async move {
        loop {
            let (tcp, remote) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::debug!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = tx.closed() => return,
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let identity = tls
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|c| c.first())
                            .and_then(|c| Identity::from_der(c));
                        let info = ConnInfo {
                            remote: Some(remote),
                            identity,
                        };
                        let _ = tx.send(Ok(TlsConn { inner: tls, info })).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%remote, error = %e, "TLS handshake refused"),
                    Err(_) => tracing::debug!(%remote, "TLS handshake timed out"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// Connects TCP + TLS for tonic's channel (`Endpoint::connect_with_connector`).
#[derive(Clone)]
pub struct Connector {
    config: Arc<rustls::ClientConfig>,
}

impl Connector {
    pub fn new(config: Arc<rustls::ClientConfig>) -> Self {
        Self { config }
    }
}

impl tower::Service<Uri> for Connector {
    type Response = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let config = self.config.clone();
        Box::pin(async move {
            let authority = uri
                .authority()
                .map(|a| a.as_str().to_string())
                .ok_or_else(|| {
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidInput,
                        format!("no address in {uri}"),
                    )
                })?;
            let tcp = TcpStream::connect(&authority).await?;
            tcp.set_nodelay(true)?;
            let name = rustls::pki_types::ServerName::try_from(NODE_SERVER_NAME)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await
                .map_err(|e| std::io::Error::new(e.kind(), format!("TLS with {authority}: {e}")))?;
            Ok(TokioIo::new(tls))
        })
    }
}

/// A lazily connecting gRPC channel to `addr` (HOST:PORT) over TLS with `config`.
pub fn channel(
    addr: &str,
    config: Arc<rustls::ClientConfig>,
) -> Result<Channel, tonic::transport::Error> {
    Ok(Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(Duration::from_secs(2))
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_while_idle(true)
        .connect_with_connector_lazy(Connector { config }))
}

/// An error and its sources on one line (tonic's transport errors hide the cause).
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}
