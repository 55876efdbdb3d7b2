//! A small HTTP(S) server for the webhook and the metrics/health endpoints.

use std::convert::Infallible;
use std::sync::Arc;

use futures::future::BoxFuture;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tracing::debug;

/// What a handler answers: status, content type, body.
pub type Reply = (StatusCode, &'static str, Vec<u8>);

/// A request handler: method, path and body in, reply out.
pub type Handler = Arc<dyn Fn(Method, String, Bytes) -> BoxFuture<'static, Reply> + Send + Sync>;

/// Largest request body accepted (an AdmissionReview of a big pod fits).
const MAX_BODY: usize = 4 << 20;

async fn handle(
    req: Request<Incoming>,
    handler: Handler,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let reply = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(body) => handler(method, path, body.to_bytes()).await,
        Err(_) => (
            StatusCode::PAYLOAD_TOO_LARGE,
            "text/plain",
            b"request body too large or unreadable\n".to_vec(),
        ),
    };
    let (status, content_type, body) = reply;
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        resp.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    Ok(resp)
}

/// Serves `handler` on `listener` until the task is dropped, over TLS when a
/// configuration is given.
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    handler: Handler,
) {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            continue;
        };
        let handler = handler.clone();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| handle(req, handler.clone()));
            let result = match acceptor {
                Some(acceptor) => match acceptor.accept(stream).await {
                    Ok(tls) => {
                        http1::Builder::new()
                            .serve_connection(TokioIo::new(tls), service)
                            .await
                    }
                    Err(err) => {
                        debug!(%peer, error = %err, "TLS handshake failed");
                        return;
                    }
                },
                None => {
                    http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await
                }
            };
            if let Err(err) = result {
                debug!(%peer, error = %err, "connection ended with an error");
            }
        });
    }
}
