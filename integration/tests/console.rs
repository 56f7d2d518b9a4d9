//! The web console (`/ui/`), with real processes: its HTTP surface as an
//! attacker and a careless client meet it (security headers, sessions,
//! CSRF, origins, limits, single-use manifest links, live events), and the
//! whole onboarding flow in headless Chromium driven through chromedriver:
//! sign in, register in the UI, run the agent with the manifest's values,
//! see Ready appear without a reload, download a kubeconfig and use it with
//! kubectl. Screenshots of every page go to `target/console-screenshots/`.
//!
//! Chromium and chromedriver come from Debian (`apt-get install chromium
//! chromium-driver`; `.ci/run` installs them). Without them the browser
//! test fails with that message: it never skips.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use common::manifest::AgentManifest;
use common::*;
use fantoccini::{Client, ClientBuilder, Locator};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// How long the browser test waits for any one element.
const UI_TIMEOUT: Duration = Duration::from_secs(60);

// ------------------------------------------------------------ HTTPS client

/// One answer.
struct Answer {
    status: u16,
    headers: http::HeaderMap,
    body: String,
}

impl Answer {
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    fn header(&self, name: &str) -> &str {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
    }
}

/// A small HTTPS client that trusts only the hub CA (what `curl --cacert`
/// does), optionally presenting a client certificate.
struct Https {
    addr: String,
    connector: tokio_rustls::TlsConnector,
}

impl Https {
    fn new(
        hub_url: &str,
        ca: &Path,
        client: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    ) -> Https {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(ca).expect("read CA") {
            roots.add(c.expect("CA PEM")).expect("add CA");
        }
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(roots);
        let mut config = match client {
            Some((chain, key)) => builder.with_client_auth_cert(chain, key).expect("client cert"),
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Https {
            addr: hub_url.trim_start_matches("https://").trim_end_matches('/').to_owned(),
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
        }
    }

    /// The hub's origin, as a browser sends it.
    fn origin(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// Sends one request; the whole answer.
    async fn send(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Answer {
        let resp = self.start(method, path, headers, body).await;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        Answer { status, headers, body: String::from_utf8_lossy(&body).into_owned() }
    }

    /// Sends one request; the answer's head, its body still streaming.
    async fn start(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> http::Response<hyper::body::Incoming> {
        let tcp = tokio::net::TcpStream::connect(&self.addr).await.expect("connect to the hub");
        let host = self.addr.rsplit_once(':').map_or(self.addr.as_str(), |(h, _)| h).to_owned();
        let name = ServerName::try_from(host).expect("server name");
        let tls = self.connector.connect(name, tcp).await.expect("TLS handshake");
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.expect("HTTP");
        tokio::spawn(conn);
        let mut req = http::Request::builder().method(method).uri(path).header("host", &self.addr);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Full::new(Bytes::from(body.to_owned()))).expect("request");
        sender.send_request(req).await.expect("send")
    }
}

/// The session cookie pair (`name=value`) from a `Set-Cookie`.
fn cookie_pair(set_cookie: &str) -> String {
    set_cookie.split(';').next().expect("a pair").trim().to_owned()
}

/// The client certificate and key of a kubeconfig.
fn kubeconfig_identity(path: &Path) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    let v: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(path).expect("read")).expect("yaml");
    let b64 = |k: &str| {
        base64::engine::general_purpose::STANDARD
            .decode(v["users"][0]["user"][k].as_str().unwrap_or_else(|| panic!("no {k}")))
            .expect("base64")
    };
    let chain =
        CertificateDer::pem_slice_iter(&b64("client-certificate-data")).map(|c| c.expect("cert")).collect();
    let key = PrivateKeyDer::from_pem_slice(&b64("client-key-data")).expect("key");
    (chain, key)
}

fn ferryctl(data: &Path, args: &[&str]) -> String {
    let out = Command::new(bin("ferryctl"))
        .arg("--kubeconfig")
        .arg(data.join("admin.kubeconfig"))
        .args(args)
        .output()
        .expect("ferryctl");
    assert!(out.status.success(), "ferryctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf8").trim().to_owned()
}

// --------------------------------------------------------- the HTTP surface

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_is_locked_down_sessions_csrf_origins_limits_and_one_time_links() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("hub");
    let (_hub, url) = start_hub(&data, "127.0.0.1:0", &[]);
    let web = Https::new(&url, &data.join("ca.crt"), None);
    let origin = web.origin();
    let token =
        ferryctl(&data, &["token", "create", "--user", "ada", "--group", "ferry:admins", "-o", "token"]);

    // Pages: the strict headers, the hub's own files only.
    let page = web.send("GET", "/ui/", &[], "").await;
    assert_eq!(page.status, 200);
    assert!(page.header("content-type").starts_with("text/html"));
    let csp = page.header("content-security-policy");
    for part in ["default-src 'none'", "script-src 'self'", "frame-ancestors 'none'", "base-uri 'none'"] {
        assert!(csp.contains(part), "{csp}");
    }
    assert!(!csp.contains("unsafe"), "{csp}");
    assert_eq!(page.header("x-content-type-options"), "nosniff");
    assert_eq!(page.header("referrer-policy"), "no-referrer");
    assert_eq!(
        web.send("GET", "/ui/app.js", &[], "").await.header("content-type"),
        "text/javascript; charset=utf-8"
    );
    let redirect = web.send("GET", "/ui", &[], "").await;
    assert_eq!((redirect.status, redirect.header("location")), (308, "/ui/"));
    assert_eq!(web.send("GET", "/ui/nothing-here", &[], "").await.status, 404);

    // Nothing without a session.
    let anon = web.send("GET", "/ui/api/clusters", &[], "").await;
    assert_eq!(anon.status, 401, "{}", anon.body);
    assert!(anon.json()["error"].as_str().expect("message").contains("sign in"));

    // Sign-in: only from the hub's own origin, only with a good credential.
    let body = serde_json::json!({ "token": token }).to_string();
    let json = ("content-type", "application/json");
    assert_eq!(web.send("POST", "/ui/api/session", &[json], &body).await.status, 403, "no Origin");
    let evil = web.send("POST", "/ui/api/session", &[json, ("origin", "https://evil.example")], &body).await;
    assert_eq!(evil.status, 403, "{}", evil.body);
    let cross = [json, ("origin", origin.as_str()), ("sec-fetch-site", "cross-site")];
    assert_eq!(web.send("POST", "/ui/api/session", &cross, &body).await.status, 403);
    let same = [json, ("origin", origin.as_str())];
    let bad = web.send("POST", "/ui/api/session", &same, r#"{"token": "ferryuser.nope.00"}"#).await;
    assert_eq!(bad.status, 401, "{}", bad.body);
    assert_eq!(web.send("POST", "/ui/api/session", &same, "{not json").await.status, 400);
    let signed = web.send("POST", "/ui/api/session", &same, &body).await;
    assert_eq!(signed.status, 200, "{}", signed.body);
    let set = signed.header("set-cookie").to_owned();
    for part in ["__Secure-ferry-session=", "Path=/ui/", "Secure", "HttpOnly", "SameSite=Strict", "Max-Age="]
    {
        assert!(set.contains(part), "{set}");
    }
    let who = signed.json();
    assert_eq!((who["user"].as_str(), who["admin"].as_bool()), (Some("ada"), Some(true)));
    assert!(!signed.body.contains(&token), "the token never comes back");
    let csrf = who["csrf"].as_str().expect("csrf").to_owned();
    let cookie = cookie_pair(&set);
    assert!(!set.contains(&token) && !cookie.contains(&csrf));

    let with = |extra: &[(&'static str, &str)]| {
        let mut h: Vec<(&str, String)> = vec![
            ("cookie", cookie.clone()),
            ("origin", origin.clone()),
            ("content-type", "application/json".into()),
        ];
        h.extend(extra.iter().map(|(k, v)| (*k, (*v).to_owned())));
        h
    };
    let send =
        |method: &'static str, path: &'static str, headers: Vec<(&'static str, String)>, body: String| {
            let web = &web;
            async move {
                let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
                web.send(method, path, &h, &body).await
            }
        };
    assert_eq!(send("GET", "/ui/api/clusters", with(&[]), String::new()).await.status, 200);

    // Every state change needs the session's CSRF token.
    let register =
        serde_json::json!({"name": "edge", "labels": {"env": "lab"}, "approval": "manual"}).to_string();
    let no_csrf = send("POST", "/ui/api/clusters", with(&[]), register.clone()).await;
    assert_eq!(no_csrf.status, 403, "{}", no_csrf.body);
    assert!(no_csrf.body.contains("X-CSRF-Token"));
    let wrong = send("POST", "/ui/api/clusters", with(&[("x-csrf-token", "0000")]), register.clone()).await;
    assert_eq!(wrong.status, 403);
    let mut no_origin = with(&[("x-csrf-token", &csrf)]);
    no_origin.retain(|(k, _)| *k != "origin");
    assert_eq!(
        send("POST", "/ui/api/clusters", no_origin, register.clone()).await.status,
        403,
        "CSRF token but no Origin"
    );

    // Registered: a one-time link to the manifest, served without a session.
    let made = send("POST", "/ui/api/clusters", with(&[("x-csrf-token", &csrf)]), register.clone()).await;
    assert_eq!(made.status, 201, "{}", made.body);
    let made = made.json();
    assert_eq!(made["cluster"]["phase"], "Pending");
    let link = made["manifestUrl"].as_str().expect("link").to_owned();
    assert!(link.starts_with(&format!("{url}/ui/manifests/")), "{link}");
    let link_path = link.trim_start_matches(&url).to_owned();
    let secret = link_path.trim_start_matches("/ui/manifests/");
    assert_eq!(secret.len(), 64, "256 random bits");
    let yaml = web.send("GET", &link_path, &[], "").await;
    assert_eq!(yaml.status, 200);
    assert_eq!(yaml.body, made["manifest"].as_str().expect("manifest"));
    assert!(yaml.body.contains("ferry-agent-bootstrap"));
    let again = web.send("GET", &link_path, &[], "").await;
    assert_eq!(again.status, 404, "single use");
    assert!(again.body.contains("register the cluster again"), "{}", again.body);
    assert_eq!(web.send("GET", "/ui/manifests/0123", &[], "").await.status, 404);

    // Bad input: clear errors with the right codes.
    let csrf_h = [("x-csrf-token", csrf.as_str())];
    let bad_name = send("POST", "/ui/api/clusters", with(&csrf_h), r#"{"name": "Not A Name"}"#.into()).await;
    assert_eq!(bad_name.status, 400);
    assert!(bad_name.body.contains("DNS label"), "{}", bad_name.body);
    let unknown =
        send("POST", "/ui/api/clusters", with(&csrf_h), r#"{"name": "a", "bogus": 1}"#.into()).await;
    assert_eq!(unknown.status, 400, "{}", unknown.body);
    let huge = format!(r#"{{"name": "{}"}}"#, "a".repeat(70 * 1024));
    assert_eq!(send("POST", "/ui/api/clusters", with(&csrf_h), huge).await.status, 413);
    assert_eq!(send("GET", "/ui/api/clusters/nope", with(&[]), String::new()).await.status, 404);
    assert_eq!(send("GET", "/ui/api/nothing", with(&[]), String::new()).await.status, 404);

    // Approve, then the live event stream: the cluster, then a bookmark.
    let approved = send("POST", "/ui/api/clusters/edge/approve", with(&csrf_h), String::new()).await;
    assert_eq!(approved.status, 200, "{}", approved.body);
    let resp = web.start("GET", "/ui/api/clusters/events", &[("cookie", &cookie)], "").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut body = resp.into_body();
    let mut text = String::new();
    let deadline = Instant::now() + READY_TIMEOUT;
    while !text.contains("event: bookmark") {
        let left = deadline.saturating_duration_since(Instant::now());
        let frame = tokio::time::timeout(left, body.frame()).await.expect("events in time");
        let frame = frame.expect("stream open").expect("frame");
        if let Ok(data) = frame.into_data() {
            text.push_str(&String::from_utf8_lossy(&data));
        }
    }
    assert!(text.starts_with("retry: "), "{text}");
    assert!(text.contains("event: added\nid: ") && text.contains("\"name\":\"edge\""), "{text}");

    // Grants and tokens go through the management API's own checks.
    let grant = send(
        "POST",
        "/ui/api/grants",
        with(&csrf_h),
        r#"{"cluster": "edge", "group": "system:masters"}"#.into(),
    )
    .await;
    assert_eq!(grant.status, 400, "{}", grant.body);
    let grant =
        send("POST", "/ui/api/grants", with(&csrf_h), r#"{"cluster": "edge", "user": "bob"}"#.into()).await;
    assert_eq!(grant.status, 201, "{}", grant.body);
    let bob =
        send("POST", "/ui/api/tokens", with(&csrf_h), r#"{"user": "bob", "ttlSeconds": 3600}"#.into()).await;
    assert_eq!(bob.status, 201, "{}", bob.body);
    let bob_token = bob.json()["secret"].as_str().expect("secret").to_owned();
    // Both changes are in the audit log as the console's, from the browser's
    // address, and the token's secret is not.
    let audit = data.join("audit.log");
    let grant_event = wait_audit(&audit, "grant.create", "user bob").await;
    assert_eq!((grant_event["via"].as_str(), grant_event["user"].as_str()), (Some("console"), Some("ada")));
    assert_eq!(
        (grant_event["clientAddress"].as_str(), grant_event["cluster"].as_str()),
        (Some("127.0.0.1"), Some("edge"))
    );
    let token_event = wait_audit(&audit, "token.create", "for user bob").await;
    assert_eq!(
        (token_event["via"].as_str(), token_event["authMethod"].as_str()),
        (Some("console"), Some("token"))
    );
    assert!(!std::fs::read_to_string(&audit).expect("audit.log").contains(&bob_token));

    // A user who is not an admin signs in, sees what their grant covers,
    // and may not register.
    let bob_in = web
        .send("POST", "/ui/api/session", &same, &serde_json::json!({"token": bob_token}).to_string())
        .await;
    assert_eq!(bob_in.status, 200, "{}", bob_in.body);
    let bob_cookie = cookie_pair(bob_in.header("set-cookie"));
    let bob_csrf = bob_in.json()["csrf"].as_str().expect("csrf").to_owned();
    let bob_h = [
        ("cookie", bob_cookie.as_str()),
        ("origin", origin.as_str()),
        ("x-csrf-token", bob_csrf.as_str()),
        json,
    ];
    let listed = web.send("GET", "/ui/api/clusters", &bob_h, "").await.json();
    assert_eq!(listed["clusters"].as_array().map(Vec::len), Some(1));
    let refused = web.send("POST", "/ui/api/clusters", &bob_h, r#"{"name": "mine"}"#).await;
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert!(refused.body.contains("not a hub administrator"), "{}", refused.body);
    let kc = web.send("POST", "/ui/api/kubeconfig", &bob_h, r#"{"cluster": "edge"}"#).await;
    assert_eq!(kc.status, 200, "{}", kc.body);
    assert!(kc.json()["kubeconfig"].as_str().expect("yaml").contains("/clusters/edge"));

    // Revoking bob's token ends what his session may do at once.
    let bob_id = ferryctl(&data, &["token", "list", "-o", "json"]);
    let tokens: serde_json::Value = serde_json::from_str(&bob_id).expect("json");
    let id =
        tokens.as_array().and_then(|t| t.iter().find(|t| t["user"] == "bob")).expect("bob's token")["id"]
            .as_str()
            .expect("id")
            .to_owned();
    ferryctl(&data, &["token", "revoke", &id]);
    let after = web.send("GET", "/ui/api/clusters", &bob_h, "").await;
    assert_eq!(after.status, 401, "{}", after.body);

    // A credential bound to one cluster cannot sign in.
    let bound = ferryctl(&data, &["token", "create", "--user", "carl", "--cluster", "edge", "-o", "token"]);
    let bound =
        web.send("POST", "/ui/api/session", &same, &serde_json::json!({"token": bound}).to_string()).await;
    assert_eq!(bound.status, 403, "{}", bound.body);

    // The browser's client certificate: the admin's, from admin.kubeconfig.
    let with_cert =
        Https::new(&url, &data.join("ca.crt"), Some(kubeconfig_identity(&data.join("admin.kubeconfig"))));
    let cert_in = with_cert.send("POST", "/ui/api/session", &same, r#"{"certificate": true}"#).await;
    assert_eq!(cert_in.status, 200, "{}", cert_in.body);
    assert_eq!(cert_in.json()["method"], "cert");
    let no_cert = web.send("POST", "/ui/api/session", &same, r#"{"certificate": true}"#).await;
    assert_eq!(no_cert.status, 401);
    assert!(no_cert.body.contains("no client certificate"), "{}", no_cert.body);

    // Sign-out ends the session; the cookie is cleared.
    let out = send("DELETE", "/ui/api/session", with(&[]), String::new()).await;
    assert_eq!(out.status, 403, "sign-out needs the CSRF token too");
    let out = send("DELETE", "/ui/api/session", with(&csrf_h), String::new()).await;
    assert_eq!(out.status, 200, "{}", out.body);
    assert!(out.header("set-cookie").contains("Max-Age=0"));
    assert_eq!(send("GET", "/ui/api/clusters", with(&[]), String::new()).await.status, 401);
}

// ------------------------------------------------------------- the browser

/// chromedriver, on a port of its own choosing; killed on drop.
struct Driver {
    _proc: Proc,
    url: String,
}

impl Driver {
    fn start() -> Driver {
        let bin = std::env::var("FERRY_CHROMEDRIVER").unwrap_or_else(|_| "chromedriver".into());
        let found = Command::new(&bin).arg("--version").output();
        assert!(
            found.as_ref().is_ok_and(|o| o.status.success()),
            "{bin} not found: the console test needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver; .ci/run installs them)"
        );
        let mut cmd = Command::new(bin);
        cmd.arg("--port=0");
        let mut proc = Proc::spawn("chromedriver", cmd);
        let line = proc.wait_line("was started successfully on port", READY_TIMEOUT);
        let port: u16 =
            line.trim_end_matches('.').rsplit(' ').next().and_then(|p| p.parse().ok()).expect("port");
        Driver { _proc: proc, url: format!("http://127.0.0.1:{port}") }
    }
}

/// base64 SHA-256 of the hub's serving certificate's public key: Chromium
/// trusts exactly that key (`--ignore-certificate-errors-spki-list`), not
/// any certificate, since the hub's CA is its own.
/// The first audit event of `action` whose target contains `target`, once
/// the hub's audit writer has written it.
async fn wait_audit(path: &Path, action: &str, target: &str) -> serde_json::Value {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let found = text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|e| e["action"] == action && e["target"].as_str().is_some_and(|t| t.contains(target)));
        if let Some(e) = found {
            return e;
        }
        assert!(Instant::now() < deadline, "no {action} of {target:?} in {}:\n{text}", path.display());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn hub_spki(hub_url: &str, ca: &Path) -> String {
    let web = Https::new(hub_url, ca, None);
    let tcp = tokio::net::TcpStream::connect(&web.addr).await.expect("connect");
    let tls =
        web.connector.connect(ServerName::try_from("127.0.0.1").expect("name"), tcp).await.expect("TLS");
    let der = tls.get_ref().1.peer_certificates().and_then(|c| c.first()).expect("a certificate").clone();
    let (_, cert) = x509_parser::parse_x509_certificate(&der).expect("X.509");
    use sha2::Digest;
    base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(cert.public_key().raw))
}

async fn browser(driver: &Driver, downloads: &Path, profile: &Path, spki: &str) -> Client {
    let args = [
        "--headless=new".to_owned(),
        "--no-sandbox".into(),
        "--disable-gpu".into(),
        "--disable-dev-shm-usage".into(),
        "--disable-quic".into(),
        "--no-first-run".into(),
        "--disable-background-networking".into(),
        "--disable-component-update".into(),
        "--disable-sync".into(),
        "--window-size=1280,900".into(),
        format!("--user-data-dir={}", profile.display()),
        format!("--ignore-certificate-errors-spki-list={spki}"),
    ];
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": std::env::var("FERRY_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()),
            "args": args,
            "prefs": {
                "download.default_directory": downloads.display().to_string(),
                "download.prompt_for_download": false,
            },
        }),
    );
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    ClientBuilder::new(connector).capabilities(caps).connect(&driver.url).await.expect("a Chromium session")
}

/// Waits (WebDriver's own polling) for an element.
async fn wait_for(c: &Client, css: &str) -> fantoccini::elements::Element {
    c.wait()
        .at_most(UI_TIMEOUT)
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no element {css:?} within {UI_TIMEOUT:?}: {e}"))
}

async fn wait_xpath(c: &Client, xpath: &str) -> fantoccini::elements::Element {
    c.wait()
        .at_most(UI_TIMEOUT)
        .for_element(Locator::XPath(xpath))
        .await
        .unwrap_or_else(|e| panic!("no element {xpath:?} within {UI_TIMEOUT:?}: {e}"))
}

/// Waits until no element matches `xpath`.
async fn wait_gone(c: &Client, xpath: &str) {
    let deadline = Instant::now() + UI_TIMEOUT;
    while !c.find_all(Locator::XPath(xpath)).await.expect("find").is_empty() {
        assert!(Instant::now() < deadline, "{xpath:?} still there after {UI_TIMEOUT:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits for a downloaded file (Chromium writes `NAME.crdownload` first).
async fn wait_download(dir: &Path, name: &str) -> String {
    let path = dir.join(name);
    let deadline = Instant::now() + UI_TIMEOUT;
    loop {
        if let Ok(text) = std::fs::read_to_string(&path)
            && !text.is_empty()
        {
            return text;
        }
        assert!(Instant::now() < deadline, "{name} was not downloaded to {}", dir.display());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Where screenshots go: `target/console-screenshots/`.
fn screenshot_dir() -> PathBuf {
    let dir = bin_dir().parent().expect("target").join("console-screenshots");
    std::fs::create_dir_all(&dir).expect("mkdir screenshots");
    dir
}

async fn screenshot(c: &Client, name: &str) {
    let png = c.screenshot().await.expect("screenshot");
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    std::fs::write(screenshot_dir().join(format!("{name}.png")), png).expect("save screenshot");
}

async fn type_into(c: &Client, css: &str, text: &str) {
    let e = wait_for(c, css).await;
    e.clear().await.expect("clear");
    e.send_keys(text).await.expect("type");
}

async fn click(c: &Client, css: &str) {
    wait_for(c, css).await.click().await.unwrap_or_else(|e| panic!("click {css}: {e}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn onboarding_in_a_real_browser_register_run_the_agent_see_ready_download_a_kubeconfig() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = |n: &str| dir.path().join(n);
    let mut cmd = Command::new(bin("test-apiserver"));
    cmd.args(["--listen", "127.0.0.1:0", "--strict-rbac", "--kubeconfig-out"]).arg(path("child.kubeconfig"));
    let mut apiserver = Proc::spawn("test-apiserver", cmd);
    apiserver.wait_line("test-apiserver ready", READY_TIMEOUT);
    let data = path("hub");
    let (_hub, url) = start_hub(&data, "127.0.0.1:0", &[]);
    let token = ferryctl(
        &data,
        &[
            "token",
            "create",
            "--user",
            "ada",
            "--group",
            "ferry:admins",
            "--group",
            "platform",
            "-o",
            "token",
        ],
    );

    let driver = Driver::start();
    let downloads = path("downloads");
    std::fs::create_dir_all(&downloads).expect("mkdir");
    let spki = hub_spki(&url, &data.join("ca.crt")).await;
    let c = browser(&driver, &downloads, &path("profile"), &spki).await;

    // Sign in with a token.
    c.goto(&format!("{url}/ui/")).await.expect("open the console");
    wait_for(&c, "#signin-form").await;
    screenshot(&c, "01-sign-in").await;
    type_into(&c, "#token", "ferryuser.wrong.token").await;
    click(&c, "#signin").await;
    let err = wait_xpath(&c, "//p[@id='signin-error'][normalize-space()!='']").await;
    assert!(err.text().await.expect("text").contains("invalid bearer token"));
    type_into(&c, "#token", &token).await;
    click(&c, "#signin").await;
    wait_for(&c, "#clusters-body .empty").await;
    // Keyboard: a new page moves focus to its heading (screen readers read
    // it), Tab then reaches the next control, with a visible focus ring.
    let focused = c.active_element().await.expect("focus");
    assert_eq!(focused.text().await.expect("text"), "Clusters");
    focused.send_keys("\u{E004}").await.expect("tab");
    let focused = c.active_element().await.expect("focus");
    assert_eq!(focused.attr("id").await.expect("id").as_deref(), Some("register-link"));
    let ring = c
        .execute("return getComputedStyle(document.activeElement).outlineStyle;", vec![])
        .await
        .expect("style");
    assert_eq!(ring, serde_json::json!("solid"), "keyboard focus is visible");

    // Register in the UI: the command, the link, the downloads.
    click(&c, "#register-link").await;
    wait_for(&c, "#register-form").await;
    type_into(&c, "#name", "edge").await;
    type_into(&c, "#labels", "env=lab, site=home").await;
    type_into(&c, "#adminGroup", "platform").await;
    screenshot(&c, "02-register-form").await;
    click(&c, "#register").await;
    let apply = wait_for(&c, "#apply-command").await.text().await.expect("text");
    let link = apply.trim().strip_prefix("kubectl apply -f ").expect("a kubectl apply command").to_owned();
    assert!(link.starts_with(&format!("{url}/ui/manifests/")), "{link}");
    let curl = wait_for(&c, "#curl-command").await.text().await.expect("text");
    assert!(curl.contains("--cacert ferry-hub-ca.crt") && curl.contains(&link), "{curl}");
    c.execute("document.getElementById('install-title').scrollIntoView(); return null;", vec![])
        .await
        .expect("scroll");
    screenshot(&c, "03-register-command").await;
    click(&c, "#apply-command + button").await;
    let said = wait_xpath(&c, "//div[@id='status'][normalize-space()!='']").await.text().await.expect("text");
    assert!(said.contains("Copied") || said.contains("Selected"), "{said}");
    click(&c, "#download-manifest").await;
    let downloaded = wait_download(&downloads, "agent.yaml").await;
    click(&c, "#download-ca").await;
    let ca = wait_download(&downloads, "ferry-hub-ca.crt").await;
    assert_eq!(ca, std::fs::read_to_string(data.join("ca.crt")).expect("ca.crt"));
    // The one-time link, fetched as `curl --cacert` would: the same
    // manifest, once.
    let web = Https::new(&url, &downloads.join("ferry-hub-ca.crt"), None);
    let link_path = link.trim_start_matches(&url);
    let fetched = web.send("GET", link_path, &[], "").await;
    assert_eq!(fetched.status, 200);
    assert_eq!(fetched.body, downloaded, "the link serves what the page offered");
    assert_eq!(web.send("GET", link_path, &[], "").await.status, 404, "single use");

    // On the child cluster: apply, then run the agent as its Deployment
    // would, with the manifest's values (hub URL, CA, token).
    let child = path("child.kubeconfig");
    let manifest_file = path("agent.yaml");
    std::fs::write(&manifest_file, &downloaded).expect("write");
    kubectl_ok(&child, &["apply", "-f", manifest_file.to_str().expect("utf8")]);
    let manifest = AgentManifest::parse(&downloaded);
    assert!(
        manifest.args.iter().any(|a| a.contains(&url)),
        "the manifest points at the hub: {:?}",
        manifest.args
    );
    manifest.mount_secret(&path("bootstrap"));
    let sa_token = kubectl_ok(&child, &["create", "token", "ferry-agent", "-n", "ferry-system"]);
    let mut kc: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(&child).expect("read")).expect("yaml");
    kc["users"][0]["user"]["token"] = sa_token.trim().into();
    let agent_kc = path("agent.kubeconfig");
    std::fs::write(&agent_kc, serde_yaml::to_string(&kc).expect("yaml")).expect("write");

    // Back to the list (no reload), mark the page, then start the agent.
    click(&c, "#to-clusters").await;
    wait_for(&c, "tr[data-cluster='edge']").await;
    c.execute("window.ferryNoReload = 'still here'; return null;", vec![]).await.expect("mark the page");
    let mut agent_cmd = Command::new(bin("ferry-agent"));
    for arg in &manifest.args {
        let arg = arg.replace("/etc/ferry/bootstrap", path("bootstrap").to_str().expect("utf8"));
        agent_cmd.arg(arg.replace("0.0.0.0:8081", "127.0.0.1:0"));
    }
    agent_cmd
        .arg("--kubeconfig")
        .arg(&agent_kc)
        .arg("--state-dir")
        .arg(path("agent-state"))
        .env("FERRY_AGENT_ID", uuid::Uuid::new_v4().to_string())
        .env_remove("FERRY_TOKEN")
        .env_remove("FERRY_CREDENTIAL_SECRET");
    let mut agent = Proc::spawn("ferry-agent", agent_cmd);
    agent.wait_line("ferry-agent connected: cluster=edge", READY_TIMEOUT);
    let ready = "//tr[@data-cluster='edge']//span[@data-phase='Ready']";
    wait_xpath(&c, ready).await;
    let marker = c.execute("return window.ferryNoReload || null;", vec![]).await.expect("read the mark");
    assert_eq!(marker, serde_json::json!("still here"), "Ready arrived without a reload");
    let row = wait_for(&c, "tr[data-cluster='edge']").await.text().await.expect("row");
    assert!(row.contains("env=lab") && row.contains("site=home") && row.contains("1/1 ready"), "{row}");
    // (The page's last notice, cleared so the screenshot shows the list.)
    c.execute("document.getElementById('status').textContent = ''; return null;", vec![])
        .await
        .expect("clear");
    screenshot(&c, "04-clusters").await;

    // Cluster detail: agents and phase history.
    click(&c, "tr[data-cluster='edge'] a").await;
    wait_for(&c, "#agents-table").await;
    let history = wait_for(&c, "#history-table").await.text().await.expect("history");
    assert!(history.contains("Ready"), "{history}");
    screenshot(&c, "05-cluster-detail").await;

    // Access: grant a group, create a token (shown once), revoke it.
    click(&c, "nav a[data-page='access']").await;
    wait_for(&c, "#grant-form").await;
    wait_for(&c, "#grant-cluster option[value='edge']").await.click().await.expect("pick edge");
    click(&c, "#kind-group").await;
    type_into(&c, "#grant-subject", "dev").await;
    click(&c, "#grant").await;
    wait_xpath(&c, "//table[@id='grants-table']//td[normalize-space()='group dev']").await;
    type_into(&c, "#token-user", "bob").await;
    type_into(&c, "#token-groups", "dev").await;
    click(&c, "#create-token").await;
    let shown = wait_for(&c, "#new-token").await.text().await.expect("token");
    assert!(shown.starts_with("ferryuser."), "{shown}");
    let bob_row = "//table[@id='tokens-table']//tr[td[normalize-space()='bob']]";
    wait_xpath(&c, bob_row).await;
    screenshot(&c, "06-access").await;
    click(&c, "button[aria-label^='Revoke token'][aria-label$='of bob']").await;
    wait_for(&c, "dialog[open]").await;
    click(&c, "#confirm-ok").await;
    wait_gone(&c, bob_row).await;

    // Kubeconfig for the signed-in user, downloaded, used with kubectl.
    click(&c, "nav a[data-page='kubeconfig']").await;
    wait_for(&c, "#kc-cluster option[value='edge']").await.click().await.expect("pick edge");
    click(&c, "#download-kubeconfig").await;
    wait_for(&c, "#kubeconfig-saved").await;
    screenshot(&c, "07-kubeconfig").await;
    let kubeconfig = wait_download(&downloads, "edge.kubeconfig").await;
    assert!(kubeconfig.contains(&format!("{url}/clusters/edge")), "{kubeconfig}");
    let kc_path = downloads.join("edge.kubeconfig");
    let ns = kubectl_ok(&kc_path, &["get", "namespaces", "-o", "name"]);
    assert!(ns.contains("namespace/ferry-system"), "{ns}");
    kubectl_ok(&kc_path, &["create", "configmap", "from-the-console", "--from-literal=a=b"]);
    let whoami = kubectl_ok(&kc_path, &["auth", "whoami", "-o", "jsonpath={.status.userInfo.username}"]);
    assert_eq!(whoami.trim(), "ada", "the child cluster sees the signed-in user");

    // Approve and delete from the detail page, each confirmed first.
    click(&c, "nav a[data-page='register']").await;
    type_into(&c, "#name", "scratch").await;
    click(&c, "#approval-manual").await;
    click(&c, "#register").await;
    wait_for(&c, "#apply-command").await;
    c.goto(&format!("{url}/ui/#/clusters/scratch")).await.expect("open scratch");
    wait_xpath(&c, "//dl[@id='facts']//span[@data-phase='Pending']").await;
    click(&c, "#approve").await;
    wait_for(&c, "dialog[open]").await;
    click(&c, "#confirm-ok").await;
    wait_xpath(&c, "//dl[@id='facts']//span[@data-phase='Offline']").await;
    click(&c, "#delete").await;
    wait_for(&c, "dialog[open]").await;
    screenshot(&c, "08-confirm-delete").await;
    click(&c, "#confirm-cancel").await;
    wait_gone(&c, "//dialog[@open]").await;
    assert_eq!(
        ferryctl(&data, &["get", "scratch", "-o", "name"]),
        "cluster/scratch",
        "cancel deletes nothing"
    );
    click(&c, "#delete").await;
    click(&c, "#confirm-ok").await;
    wait_for(&c, "#clusters-table").await;
    wait_gone(&c, "//tr[@data-cluster='scratch']").await;

    // A phone's width: no sideways scrolling.
    c.set_window_size(390, 844).await.expect("resize");
    wait_for(&c, "tr[data-cluster='edge']").await;
    let wide = c
        .execute("return document.documentElement.scrollWidth <= window.innerWidth;", vec![])
        .await
        .expect("measure");
    assert_eq!(wide, serde_json::json!(true), "the clusters page fits a phone's width");
    screenshot(&c, "09-clusters-phone").await;
    c.set_window_size(1280, 900).await.expect("resize");

    // Sign out: back to the sign-in page; the list is gone.
    click(&c, "#signout").await;
    wait_for(&c, "#signin-form").await;
    assert!(c.find_all(Locator::Css("tr[data-cluster]")).await.expect("find").is_empty());
    c.close().await.expect("close the browser");
}
