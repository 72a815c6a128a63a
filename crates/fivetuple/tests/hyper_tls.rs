//! TLS stays composable: hyper-rustls wraps fivetuple's connector and serves
//! an https call to a local test server with a self-signed certificate. The
//! connection info and the library's error survive the TLS layer.
//!
//! Host loopback only; no root needed.
#![cfg(feature = "hyper")]

mod hyper_support;

use std::convert::Infallible;
use std::sync::Arc;

use fivetuple::http::{ConnectionInfo, HttpConnector};
use fivetuple::{Connector, KernelDefault};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_support::connect_error_in_chain;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio_rustls::rustls;

/// A self-signed certificate for `localhost` and 127.0.0.1, and the ring
/// provider explicitly (no process-wide default is installed).
fn certificate() -> (
    rustls::pki_types::CertificateDer<'static>,
    rustls::pki_types::PrivateKeyDer<'static>,
) {
    let ck =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .expect("rcgen");
    let key = rustls::pki_types::PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der());
    (ck.cert.der().clone(), key.into())
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Serves https on 127.0.0.1 (random port) until the runtime ends; each
/// response body is the peer's port.
async fn https_server(
    cert: rustls::pki_types::CertificateDer<'static>,
    key: rustls::pki_types::PrivateKeyDer<'static>,
) -> std::net::SocketAddr {
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service =
                    hyper::service::service_fn(move |_req: Request<Incoming>| async move {
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(
                            peer.port().to_string(),
                        ))))
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    addr
}

fn https_client(
    cert: rustls::pki_types::CertificateDer<'static>,
    http: HttpConnector,
) -> Client<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).unwrap();
    let tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new()).build(https)
}

#[tokio::test]
async fn hyper_rustls_wraps_the_connector() {
    let (cert, key) = certificate();
    let addr = https_server(cert.clone(), key).await;
    let mut http = HttpConnector::new(Connector::new(KernelDefault));
    // https:// URIs reach this connector through the TLS layer.
    http.set_enforce_http(false);
    let stats = http.stats().clone();
    let client = https_client(cert, http);

    // By name, so the certificate is checked against "localhost".
    let uri: hyper::Uri = format!("https://localhost:{}/", addr.port())
        .parse()
        .unwrap();
    for _ in 0..3 {
        let response = client.get(uri.clone()).await.expect("https GET");
        assert_eq!(response.status(), 200);
        let info = *response
            .extensions()
            .get::<ConnectionInfo>()
            .expect("ConnectionInfo passes through hyper-rustls");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(info.remote_addr(), addr);
        assert_eq!(body, info.local_addr().port().to_string());
    }
    // Pooled: one TCP connection opened for the three calls.
    assert_eq!(stats.snapshot().opened_kernel, 1, "{:?}", stats.snapshot());
}

#[tokio::test]
async fn connect_error_reachable_through_the_tls_layer() {
    let (cert, _) = certificate();
    // A bound socket that does not listen: the connect is refused.
    let closed = tokio::net::TcpSocket::new_v4().unwrap();
    closed.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let port = closed.local_addr().unwrap().port();
    let mut http = HttpConnector::new(Connector::new(KernelDefault));
    http.set_enforce_http(false);
    let client = https_client(cert, http);

    let uri: hyper::Uri = format!("https://127.0.0.1:{port}/").parse().unwrap();
    let err = client.get(uri).await.expect_err("refused");
    assert!(err.is_connect(), "{err:?}");
    let inner = connect_error_in_chain(&err).expect("ConnectError in the source() chain");
    assert_eq!(
        inner.io_error().kind(),
        std::io::ErrorKind::ConnectionRefused
    );
    assert!(!inner.is_exhaustion());
    assert_eq!(inner.remote_addr().port(), port);
}
