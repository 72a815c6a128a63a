//! tonic: `Endpoint::connect_with_connector(HttpConnector)` opens gRPC
//! channels through fivetuple, in clear text and under tonic's own TLS. In a
//! namespace with 100 ephemeral ports and `tcp_tw_reuse=0`, a client that
//! re-creates its channel per call runs out of ports with the kernel default
//! and not with rotation; the server reports the source port it saw.
//!
//! A hand-written codec over raw bytes stands in for protobuf, so no protoc
//! or codegen is needed. Needs root (namespaces).
#![cfg(feature = "hyper")]

mod common;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BufMut};
use fivetuple::http::HttpConnector;
use fivetuple::{Connector, KernelDefault, PortRange, Rotation};
use http::uri::PathAndQuery;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Endpoint, Server};
use tonic::{Request, Response, Status};

/// Messages are raw bytes: what is sent is what arrives.
#[derive(Debug, Clone, Copy, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }
    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
    }
}

const METHOD: &str = "/fivetuple.test.Peer/Port";

/// The unary method: answers the source port the server saw, as text.
#[derive(Clone, Copy)]
struct PeerPort;

impl tower_service::Service<Request<Vec<u8>>> for PeerPort {
    type Response = Response<Vec<u8>>;
    type Error = Status;
    type Future = std::future::Ready<Result<Response<Vec<u8>>, Status>>;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, req: Request<Vec<u8>>) -> Self::Future {
        std::future::ready(match req.remote_addr() {
            Some(peer) => Ok(Response::new(peer.port().to_string().into_bytes())),
            None => Err(Status::internal("no peer address")),
        })
    }
}

/// The gRPC server: every path is the unary `PeerPort`.
#[derive(Clone, Copy)]
struct PeerServer;

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl tower_service::Service<http::Request<tonic::body::Body>> for PeerServer {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(RawCodec);
            Ok(grpc.unary(PeerPort, req).await)
        })
    }
}

/// Serves on 127.0.0.1:`port` until the runtime ends, with TLS when
/// `identity` is given.
async fn serve(port: u16, identity: Option<tonic::transport::Identity>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let mut builder = Server::builder();
    if let Some(identity) = identity {
        builder = builder
            .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
            .unwrap();
    }
    tokio::spawn(builder.serve_with_incoming(PeerServer, TcpIncoming::from(listener)));
    addr
}

/// One call on a fresh channel, dropped afterwards (the client closes
/// first, so its side keeps the TIME_WAIT). `Err` carries the connect
/// error; the port is what the server saw.
async fn call_on_new_channel(
    endpoint: &Endpoint,
    http: &HttpConnector,
) -> Result<u16, tonic::transport::Error> {
    let channel: Channel = endpoint.connect_with_connector(http.clone()).await?;
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("channel ready");
    let reply = grpc
        .unary(
            Request::new(Vec::new()),
            PathAndQuery::from_static(METHOD),
            RawCodec,
        )
        .await
        .expect("unary call");
    let text = String::from_utf8(reply.into_inner()).unwrap();
    Ok(text.parse().unwrap())
}

/// The library's error in a tonic error's source chain.
fn connect_error(err: &tonic::transport::Error) -> Option<&fivetuple::ConnectError> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(c) = e.downcast_ref::<fivetuple::ConnectError>() {
            return Some(c);
        }
        cur = e.source();
    }
    None
}

const SYSCTLS: &[(&str, &str)] = &[
    ("ip_local_port_range", "40000 40099"),
    ("tcp_tw_reuse", "0"),
    ("tcp_timestamps", "1"),
];

/// Calls until one fails or `max` succeed; returns the ports the server saw
/// and the error.
fn churn(connector: Connector, max: usize) -> (Vec<u16>, Option<tonic::transport::Error>) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let addr = serve(8080, None).await;
        let endpoint = Endpoint::from_shared(format!("http://{addr}")).unwrap();
        let http = HttpConnector::new(connector);
        let mut ports = Vec::new();
        for _ in 0..max {
            match call_on_new_channel(&endpoint, &http).await {
                Ok(port) => ports.push(port),
                Err(e) => return (ports, Some(e)),
            }
        }
        (ports, None)
    })
}

#[test]
fn tonic_channel_per_call_kernel_default_exhausts_needs_root() {
    let Some((ports, err)) = common::in_netns(
        "tonic_channel_per_call_kernel_default_exhausts_needs_root",
        SYSCTLS,
        || churn(Connector::new(KernelDefault), 150),
    ) else {
        return;
    };
    let err = err.unwrap_or_else(|| panic!("150 calls succeeded in a 100-port range"));
    let inner = connect_error(&err).unwrap_or_else(|| panic!("no ConnectError in {err:?}"));
    assert!(inner.is_exhaustion(), "{inner:?}");
    // About 100: a few ports come back when the server's FIN happens to
    // leave first and its side keeps the TIME_WAIT.
    assert!(
        (50..150).contains(&ports.len()),
        "failed after {} calls",
        ports.len()
    );
    assert!(
        ports.iter().all(|p| (40000..=40099).contains(p)),
        "{ports:?}"
    );
}

#[test]
fn tonic_channel_per_call_rotation_survives_needs_root() {
    let Some((ports, err)) = common::in_netns(
        "tonic_channel_per_call_rotation_survives_needs_root",
        SYSCTLS,
        || {
            let rotation = Rotation::new(PortRange::new(40000, 40099).unwrap()).unwrap();
            churn(Connector::new(rotation), 250)
        },
    ) else {
        return;
    };
    assert!(err.is_none(), "after {} calls: {err:?}", ports.len());
    assert_eq!(ports.len(), 250);
    assert!(
        ports.iter().all(|p| (40000..=40099).contains(p)),
        "{ports:?}"
    );
    // 250 calls over 100 ports: ports were taken over from TIME_WAIT.
    let mut distinct = ports.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(distinct.len(), 100);
}

/// tonic's TLS layer wraps our connector: the URI it passes is `https://`,
/// so `enforce_http` must be off.
#[test]
fn tonic_tls_over_fivetuple_needs_root() {
    let Some(ports) = common::in_netns("tonic_tls_over_fivetuple_needs_root", &[], || {
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let identity =
            tonic::transport::Identity::from_pem(ck.cert.pem(), ck.signing_key.serialize_pem());
        let ca = tonic::transport::Certificate::from_pem(ck.cert.pem());
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let addr = serve(8443, Some(identity)).await;
            let endpoint = Endpoint::from_shared(format!("https://localhost:{}", addr.port()))
                .unwrap()
                .tls_config(
                    tonic::transport::ClientTlsConfig::new()
                        .ca_certificate(ca)
                        .domain_name("localhost"),
                )
                .unwrap();
            let rotation = Rotation::new(PortRange::new(45000, 45009).unwrap()).unwrap();
            let mut http = HttpConnector::new(Connector::new(rotation));
            http.set_enforce_http(false);
            let mut ports = Vec::new();
            for _ in 0..3 {
                ports.push(call_on_new_channel(&endpoint, &http).await.unwrap());
            }
            ports
        })
    }) else {
        return;
    };
    assert!(
        ports.iter().all(|p| (45000..=45009).contains(p)),
        "{ports:?}"
    );
    let mut distinct = ports.clone();
    distinct.dedup();
    assert_eq!(distinct.len(), 3, "rotation moves on each call: {ports:?}");
}
