//! Bounds on what the gRPC server takes on: concurrent requests per connection (set on the
//! server builder, see `serve`) and a deadline on every request that is not a stream.
//!
//! The deadline covers the handler's future, i.e. until the reply (or, for a stream, its
//! first frame) is ready. Requests whose handler consumes a client stream before answering
//! (`InstallSnapshot`, `Console`) are exempt, and a streamed reply is never cut: only the
//! handler's setup is, and for server streams that is short anyway. A client's own
//! `grpc-timeout` still applies (tonic honours it) and is usually shorter.

use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::BoxFuture;
use tonic::Status;

/// Concurrent requests one connection may have in flight; more wait (h2 flow control) rather
/// than fail. Raft between two members shares one connection: appends, heartbeats, votes and
/// forwarded proposals all fit well under it. A streamed reply holds no slot once it started.
pub const MAX_REQUESTS_PER_CONNECTION: usize = 256;

/// Longest a unary request may take on this node before it is answered `DEADLINE_EXCEEDED`.
/// Generous: a join waits for the new member to catch up, a membership change for its
/// joint consensus; everything else answers in milliseconds.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// Methods exempt from [`REQUEST_TIMEOUT`]: their handlers read a client stream to its end.
const STREAMING_IN: [&str; 2] = [
    "/blixard.v1.RaftPeer/InstallSnapshot",
    "/blixard.v1.Blixard/Console",
];

/// Whether `path` (a gRPC method path) gets the deadline.
pub fn has_deadline(path: &str) -> bool {
    !STREAMING_IN.contains(&path)
}

/// Puts [`REQUEST_TIMEOUT`] (or `limit`) on every request that is not exempt.
#[derive(Clone, Copy)]
pub struct RequestTimeoutLayer {
    pub limit: Duration,
}

impl Default for RequestTimeoutLayer {
    fn default() -> Self {
        Self {
            limit: REQUEST_TIMEOUT,
        }
    }
}

impl<S> tower::Layer<S> for RequestTimeoutLayer {
    type Service = RequestTimeout<S>;
    fn layer(&self, inner: S) -> RequestTimeout<S> {
        RequestTimeout {
            inner,
            limit: self.limit,
        }
    }
}

#[derive(Clone)]
pub struct RequestTimeout<S> {
    inner: S,
    limit: Duration,
}

impl<S, B> tower::Service<axum::http::Request<B>> for RequestTimeout<S>
where
    S: tower::Service<
            axum::http::Request<B>,
            Response = axum::http::Response<tonic::body::BoxBody>,
        > + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: axum::http::Request<B>) -> Self::Future {
        let path = req.uri().path().to_string();
        let fut = self.inner.call(req);
        if !has_deadline(&path) {
            return Box::pin(fut);
        }
        let limit = self.limit;
        Box::pin(async move {
            match tokio::time::timeout(limit, fut).await {
                Ok(r) => r,
                Err(_) => {
                    tracing::warn!(method = %path, limit_s = limit.as_secs(), "request timed out");
                    Ok(Status::deadline_exceeded(format!(
                        "{path} took longer than {}s on this node; try again (the cluster may be changing leader)",
                        limit.as_secs()
                    ))
                    .into_http())
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::{Layer, Service, ServiceExt};

    #[test]
    fn streams_that_read_the_client_are_exempt() {
        assert!(!has_deadline("/blixard.v1.RaftPeer/InstallSnapshot"));
        assert!(!has_deadline("/blixard.v1.Blixard/Console"));
        assert!(has_deadline("/blixard.v1.Blixard/CreateVm"));
        assert!(has_deadline("/blixard.v1.RaftPeer/AppendEntries"));
    }

    fn slow() -> impl tower::Service<
        axum::http::Request<()>,
        Response = axum::http::Response<tonic::body::BoxBody>,
        Error = std::convert::Infallible,
        Future = BoxFuture<
            'static,
            Result<axum::http::Response<tonic::body::BoxBody>, std::convert::Infallible>,
        >,
    > + Clone {
        tower::service_fn(|_req: axum::http::Request<()>| -> BoxFuture<'static, _> {
            Box::pin(async {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Ok(axum::http::Response::new(tonic::body::empty_body()))
            })
        })
    }

    #[tokio::test]
    async fn a_stuck_unary_request_is_answered_deadline_exceeded() {
        let mut svc = RequestTimeoutLayer {
            limit: Duration::from_millis(20),
        }
        .layer(slow());
        let req = axum::http::Request::builder()
            .uri("/blixard.v1.Blixard/CreateVm")
            .body(())
            .unwrap();
        let res = svc.ready().await.unwrap().call(req).await.unwrap();
        let status = Status::from_header_map(res.headers()).unwrap();
        assert_eq!(status.code(), tonic::Code::DeadlineExceeded);
    }

    #[tokio::test]
    async fn an_exempt_stream_is_not_cut() {
        let mut svc = RequestTimeoutLayer {
            limit: Duration::from_millis(20),
        }
        .layer(slow());
        let req = axum::http::Request::builder()
            .uri("/blixard.v1.RaftPeer/InstallSnapshot")
            .body(())
            .unwrap();
        let fut = svc.ready().await.unwrap().call(req);
        // Still pending well after the limit (the handler sleeps an hour).
        let r = tokio::time::timeout(Duration::from_millis(200), fut).await;
        assert!(r.is_err());
    }
}
