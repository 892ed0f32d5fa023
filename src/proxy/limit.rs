//! Middleware: buffers a request body up to a byte limit and a deadline,
//! answering 413 / 408 itself; the inner service sees `Request<Bytes>`.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, header};
use http_body::Body as HttpBody;
use http_body_util::{BodyExt, Limited};
use tower::{Layer, Service};

use super::body::ProxyBody;
use super::error::ProxyError;

/// Builds [`BufferBody`] services.
#[derive(Debug, Clone, Copy)]
pub struct BufferBodyLayer {
    limit: usize,
    timeout: Duration,
}

/// The body-buffering layer: at most `limit` bytes, received within `timeout`.
pub fn layer(limit: usize, timeout: Duration) -> BufferBodyLayer {
    BufferBodyLayer { limit, timeout }
}

impl<S> Layer<S> for BufferBodyLayer {
    type Service = BufferBody<S>;
    fn layer(&self, inner: S) -> Self::Service {
        BufferBody {
            inner,
            limit: self.limit,
            timeout: self.timeout,
        }
    }
}

/// See [`layer`].
#[derive(Debug, Clone)]
pub struct BufferBody<S> {
    inner: S,
    limit: usize,
    timeout: Duration,
}

impl<S, B> Service<Request<B>> for BufferBody<S>
where
    S: Service<Request<Bytes>, Response = Response<ProxyBody>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
    B: HttpBody + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<ProxyBody>, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        // The clone that was driven to readiness serves this call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let (limit, timeout) = (self.limit, self.timeout);
        Box::pin(async move {
            let declared = req
                .headers()
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            if declared.is_some_and(|n| n > limit as u64) {
                return Ok(ProxyError::BodyTooLarge { limit }.into_response());
            }
            let (parts, body) = req.into_parts();
            let collected =
                tokio::time::timeout(timeout, Limited::new(body, limit).collect()).await;
            let bytes = match collected {
                Err(_) => {
                    return Ok(ProxyError::BodyTimeout {
                        secs: timeout.as_secs(),
                    }
                    .into_response());
                }
                Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
                    return Ok(ProxyError::BodyTooLarge { limit }.into_response());
                }
                Ok(Err(e)) => {
                    return Ok(ProxyError::BadRequest(format!(
                        "could not read the request body: {e}"
                    ))
                    .into_response());
                }
                Ok(Ok(c)) => c.to_bytes(),
            };
            inner.call(Request::from_parts(parts, bytes)).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;
    use http_body_util::{Full, StreamBody};
    use tower::ServiceExt;

    fn echo_len() -> impl Service<
        Request<Bytes>,
        Response = Response<ProxyBody>,
        Error = Infallible,
        Future = impl Send,
    > + Clone
    + Send
    + 'static {
        tower::service_fn(|req: Request<Bytes>| async move {
            Ok::<_, Infallible>(Response::new(crate::proxy::body::boxed(Full::new(
                Bytes::from(req.body().len().to_string()),
            ))))
        })
    }

    #[tokio::test]
    async fn a_body_within_the_limit_reaches_the_inner_service() {
        let svc = layer(10, Duration::from_secs(1)).layer(echo_len());
        let resp = svc
            .oneshot(Request::new(Full::new(Bytes::from_static(b"0123456789"))))
            .await
            .expect("infallible");
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(
            resp.into_body().collect().await.expect("body").to_bytes(),
            "10"
        );
    }

    #[tokio::test]
    async fn an_oversized_body_gets_413_even_without_content_length() {
        let svc = layer(10, Duration::from_secs(1)).layer(echo_len());
        let resp = svc
            .oneshot(Request::new(Full::new(Bytes::from_static(b"01234567890"))))
            .await
            .expect("infallible");
        assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    }

    #[tokio::test]
    async fn a_declared_oversized_length_is_refused_before_reading() {
        let svc = layer(10, Duration::from_secs(1)).layer(echo_len());
        let req = Request::builder()
            .header("content-length", "1000000")
            .body(Full::new(Bytes::new()))
            .expect("request");
        assert_eq!(
            svc.oneshot(req).await.expect("infallible").status(),
            StatusCode::PAYLOAD_TOO_LARGE
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_never_finishes_its_body_gets_408() {
        let svc = layer(1000, Duration::from_secs(30)).layer(echo_len());
        let (_tx, rx) =
            tokio::sync::mpsc::channel::<Result<http_body::Frame<Bytes>, Infallible>>(1);
        let body = StreamBody::new(tokio_stream_from(rx));
        let resp = svc.oneshot(Request::new(body)).await.expect("infallible");
        assert_eq!(resp.status(), StatusCode::REQUEST_TIMEOUT);
    }

    fn tokio_stream_from<T>(
        mut rx: tokio::sync::mpsc::Receiver<T>,
    ) -> impl futures_util::Stream<Item = T> {
        futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
    }
}
