//! A tonic channel whose connections go through fivetuple: the gRPC client
//! keeps tonic's HTTP/2, timeouts and (optionally) TLS; only the TCP connect
//! changes, here to port rotation.
//!
//! ```text
//! cargo run -p fivetuple --features hyper --example tonic_channel -- http://127.0.0.1:50051
//! ```
//!
//! For `https://` endpoints add `.tls_config(ClientTlsConfig::new()...)` to
//! the endpoint and turn `enforce_http` off: tonic's TLS layer wraps our
//! connector and hands it the `https://` URI.

use fivetuple::http::HttpConnector;
use fivetuple::{Connector, PortRange, Rotation};
use tonic::transport::Endpoint;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let uri = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "http://127.0.0.1:50051".to_owned());
    let rotation = Rotation::new(PortRange::new(20000, 29999)?)?;
    let mut http = HttpConnector::new(Connector::new(rotation));
    http.set_enforce_http(!uri.starts_with("https://"));
    let stats = http.stats().clone();
    let channel = Endpoint::from_shared(uri.clone())?
        .connect_with_connector(http)
        .await
        .map_err(|e| format!("connecting to {uri}: {e:?}"))?;
    // Use `channel` with any generated client: `MyClient::new(channel)`.
    drop(channel);
    println!("connected to {uri}: {:?}", stats.snapshot());
    Ok(())
}
