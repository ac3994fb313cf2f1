//! The HTTP/1.1 listener (hyper): reads a request, routes it, and writes
//! the reply or the error in AWS's REST-JSON shape.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::error::ApiError;
use super::request::ApiRequest;
use super::router;
use super::{ControlPlane, Reply};

/// Requests of the IoT control plane are small; a larger body is refused.
const MAX_BODY: usize = 1024 * 1024;

/// Accepts connections until `shutdown`, each served on its own task (which
/// ends at shutdown too).
pub(crate) async fn serve(
    listener: TcpListener,
    cp: Arc<ControlPlane>,
    mut shutdown: watch::Receiver<bool>,
) {
    while let Some((tcp, peer)) =
        crate::listener::next_connection(&listener, &mut shutdown, "control-plane API").await
    {
        let cp = cp.clone();
        let mut shutdown = shutdown.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let cp = cp.clone();
                async move { Ok::<_, Infallible>(handle(&cp, req).await) }
            });
            let conn = http1::Builder::new().serve_connection(TokioIo::new(tcp), service);
            tokio::select! {
                r = conn => if let Err(e) = r {
                    tracing::debug!(%peer, "control-plane API connection ended: {e}");
                },
                _ = shutdown.changed() => {}
            }
        });
    }
}

async fn handle(cp: &ControlPlane, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let method = req.method().as_str().to_owned();
    let path = req.uri().path().to_owned();
    let request_id = request_id();
    match answer(cp, req).await {
        Ok((operation, reply)) => {
            tracing::debug!(%method, %path, operation, "control-plane API request");
            let body = match reply {
                Reply::Json(v) => Bytes::from(serde_json::to_vec(&v).unwrap_or_default()),
                Reply::Empty => Bytes::new(),
            };
            response(StatusCode::OK, &request_id, None, body)
        }
        Err(e) => {
            let (code, status) = e.kind.code_and_status();
            tracing::info!(%method, %path, code, "control-plane API request refused: {}", e.message);
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let body = Bytes::from(serde_json::to_vec(&e.body()).unwrap_or_default());
            response(status, &request_id, Some(code), body)
        }
    }
}

/// Routes, reads the body and runs the operation.
async fn answer(
    cp: &ControlPlane,
    req: Request<Incoming>,
) -> Result<(&'static str, Reply), ApiError> {
    let (route, labels) = router::route(req.method().as_str(), req.uri().path())?;
    let (parts, body) = req.into_parts();
    let body = Limited::new(body, MAX_BODY)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                ApiError::invalid(format!(
                    "{}: the request body is larger than {MAX_BODY} bytes",
                    route.operation
                ))
            } else {
                ApiError::invalid(format!(
                    "{}: reading the request body: {e}",
                    route.operation
                ))
            }
        })?
        .to_bytes();
    let request = ApiRequest::new(
        route.operation,
        labels,
        parts.uri.query(),
        parts.headers,
        body.to_vec(),
    )?;
    Ok((route.operation, route.handle(cp, &request)?))
}

fn response(
    status: StatusCode,
    request_id: &str,
    error_code: Option<&'static str>,
    body: Bytes,
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Ok(v) = HeaderValue::from_str(request_id) {
        h.insert("x-amzn-RequestId", v);
    }
    if let Some(code) = error_code {
        // botocore's RestJSONParser reads the error code from this header.
        h.insert("x-amzn-ErrorType", HeaderValue::from_static(code));
    }
    r
}

/// A random id in UUID form, as AWS's `x-amzn-RequestId` (botocore puts it
/// in `ResponseMetadata.RequestId`).
fn request_id() -> String {
    super::uuid_text(&rand::random::<[u8; 16]>())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::error::ErrorKind;

    #[test]
    fn errors_carry_code_header_and_message_body() {
        let e = ApiError::new(ErrorKind::VersionConflict, "stale");
        let (code, status) = e.kind.code_and_status();
        let r = response(
            StatusCode::from_u16(status).unwrap(),
            "id-1",
            Some(code),
            Bytes::from(serde_json::to_vec(&e.body()).unwrap()),
        );
        assert_eq!(r.status(), StatusCode::CONFLICT);
        assert_eq!(r.headers()["x-amzn-errortype"], "VersionConflictException");
        assert_eq!(r.headers()["x-amzn-requestid"], "id-1");
        assert_eq!(r.headers()["content-type"], "application/json");
    }

    #[test]
    fn request_ids_look_like_uuids() {
        let id = request_id();
        assert_eq!(id.len(), 36);
        assert_ne!(id, request_id());
    }
}
