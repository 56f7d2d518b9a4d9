//! The console's static files, embedded in the binary at build time from
//! `hub/console/` (`static/` as written, `dist/` as `hub/console/build.sh`
//! compiles it from `src/`; both committed, so `cargo build` needs no
//! Node.js). `.ci/console-assets-check` fails when `dist/` is stale.

use http::{HeaderValue, Method, Response, StatusCode, header};

use super::{Reply, error, full};

/// One embedded file.
struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

/// Every file the console serves, by path.
const ASSETS: &[Asset] = &[
    Asset {
        path: "/ui/",
        content_type: "text/html; charset=utf-8",
        body: include_bytes!("../../console/static/index.html"),
    },
    Asset {
        path: "/ui/style.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../../console/static/style.css"),
    },
    Asset {
        path: "/ui/icon.svg",
        content_type: "image/svg+xml",
        body: include_bytes!("../../console/static/icon.svg"),
    },
    Asset {
        path: "/ui/app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../console/dist/app.js"),
    },
];

/// Serves an embedded file (`GET` or `HEAD`), else 404 or 405.
pub fn serve(method: &Method, path: &str) -> Reply {
    let path = if path == "/ui/index.html" { "/ui/" } else { path };
    let Some(asset) = ASSETS.iter().find(|a| a.path == path) else {
        return error(StatusCode::NOT_FOUND, format!("no console page {path:?}: the console is at /ui/"));
    };
    if *method != Method::GET && *method != Method::HEAD {
        return error(StatusCode::METHOD_NOT_ALLOWED, "console files answer GET and HEAD");
    }
    let body = if *method == Method::HEAD { full("") } else { full(asset.body) };
    let mut r = Response::new(body);
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(asset.content_type));
    // Revalidated at every load: a hub upgrade shows its own pages at once.
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_load_only_the_hubs_own_script_and_style() {
        let html = std::str::from_utf8(ASSETS[0].body).expect("utf8");
        assert!(html.contains("src=\"/ui/app.js\"") && html.contains("href=\"/ui/style.css\""));
        // Nothing inline for the CSP to refuse, nothing from elsewhere.
        assert!(!html.contains("<script>") && !html.contains("style=") && !html.contains("onclick"));
        assert!(!html.contains("http://") && !html.contains("https://"));
        let js = std::str::from_utf8(ASSETS[3].body).expect("utf8");
        assert!(!js.contains("eval(") && !js.contains("new Function") && !js.contains("innerHTML"));
        assert_eq!(serve(&Method::GET, "/ui/nope").status(), StatusCode::NOT_FOUND);
        assert_eq!(serve(&Method::POST, "/ui/app.js").status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(serve(&Method::GET, "/ui/index.html").status(), StatusCode::OK);
    }
}
