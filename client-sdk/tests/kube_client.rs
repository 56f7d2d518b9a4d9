//! `kube_client` reaches a cluster through a hub-like HTTPS gateway: the
//! `/clusters/NAME` prefix of the issued kubeconfig's server is kept, the
//! hub CA is pinned and the client certificate is presented.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use k8s_openapi::api::core::v1::Namespace;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::sync::mpsc;

mod common;
use common::Ca;

/// What the gateway saw of one request.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    path: String,
    /// DER of the client certificate, if one was presented.
    client_cert: Option<Vec<u8>>,
}

const NAMESPACE_JSON: &str = r#"{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"default"}}"#;

#[tokio::test]
async fn requests_go_to_the_cluster_path_with_the_client_certificate() {
    let ca = Ca::new("ferry-ca");
    let server = ca.server();
    let alice = ca.client("alice", &["dev"]);

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(ca.pem.as_bytes()).expect("ca pem")).expect("root");
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .expect("verifier");
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![CertificateDer::from_pem_slice(server.cert.as_bytes()).expect("cert")],
            PrivateKeyDer::from_pem_slice(server.key.as_bytes()).expect("key"),
        )
        .expect("server config");
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (seen_tx, mut seen_rx) = mpsc::channel::<Seen>(8);
    let gateway = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let Ok(stream) = acceptor.accept(tcp).await else { continue };
            let client_cert =
                stream.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| c.to_vec());
            let seen_tx = seen_tx.clone();
            let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
                let seen = Seen { path: req.uri().path().to_owned(), client_cert: client_cert.clone() };
                let seen_tx = seen_tx.clone();
                async move {
                    let _ = seen_tx.send(seen).await;
                    let response = hyper::Response::builder()
                        .header("content-type", "application/json")
                        .body(Full::new(Bytes::from_static(NAMESPACE_JSON.as_bytes())));
                    Ok::<_, Infallible>(response.unwrap_or_default())
                }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        }
    });

    let server_url = format!("https://{addr}/clusters/edge-1");
    let yaml = common::kubeconfig_yaml(&server_url, &ca.pem, &alice);
    let client = ferry_client_sdk::kube_client(&yaml).await.expect("client");
    let ns = kube::Api::<Namespace>::all(client).get("default").await.expect("get namespace");
    assert_eq!(ns.metadata.name.as_deref(), Some("default"));

    let seen = seen_rx.recv().await.expect("request seen");
    assert_eq!(
        seen,
        Seen { path: "/clusters/edge-1/api/v1/namespaces/default".into(), client_cert: Some(alice.der()) }
    );

    gateway.abort();
    let _ = gateway.await;
}
