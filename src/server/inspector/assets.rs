//! The page and its scripts, styles and icon, embedded in the binary, and the security
//! headers every inspector answer carries: a Content-Security-Policy that allows only
//! this origin's own scripts, styles and connections (no inline code, no CDN, no frames).

use axum::extract::Path;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// Everything from this origin only; `connect-src 'self'` covers the hub's own `ws://`
/// and `wss://` in current browsers (CSP Level 3), which the "try it" panel uses.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; base-uri 'none'; frame-ancestors 'none'; \
     form-action 'self'";

const INDEX_HTML: &str = include_str!("assets/index.html");

/// (file name, content type, bytes).
const FILES: &[(&str, &str, &[u8])] = &[
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("assets/app.js"),
    ),
    (
        "views.js",
        "text/javascript; charset=utf-8",
        include_bytes!("assets/views.js"),
    ),
    (
        "tryit.js",
        "text/javascript; charset=utf-8",
        include_bytes!("assets/tryit.js"),
    ),
    (
        "phoenix.js",
        "text/javascript; charset=utf-8",
        include_bytes!("assets/phoenix.js"),
    ),
    (
        "chart.js",
        "text/javascript; charset=utf-8",
        include_bytes!("assets/chart.js"),
    ),
    (
        "theme.js",
        "text/javascript; charset=utf-8",
        include_bytes!("assets/theme.js"),
    ),
    (
        "app.css",
        "text/css; charset=utf-8",
        include_bytes!("assets/app.css"),
    ),
    (
        "icon.svg",
        "image/svg+xml",
        include_bytes!("assets/icon.svg"),
    ),
];

/// Assets change only with the binary; browsers revalidate rather than guess.
const ASSET_CACHE: &str = "no-cache";

pub async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, ASSET_CACHE),
        ],
        INDEX_HTML,
    )
        .into_response()
}

pub async fn asset(Path(name): Path<String>) -> Response {
    match FILES.iter().find(|(n, _, _)| *n == name) {
        Some((_, content_type, bytes)) => (
            [
                (header::CONTENT_TYPE, *content_type),
                (header::CACHE_CONTROL, ASSET_CACHE),
            ],
            *bytes,
        )
            .into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

/// Adds the security headers to every inspector answer; data is never cached.
pub async fn security_headers(mut res: Response) -> Response {
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_only_embedded_same_origin_files_and_no_inline_code() {
        let lower = INDEX_HTML.to_ascii_lowercase();
        assert!(!lower.contains("<style"), "no inline styles");
        assert!(!lower.contains(" style="), "no style attributes");
        assert!(
            !lower.contains("http://") && !lower.contains("https://"),
            "no external URLs"
        );
        // Every script is an embedded file, and no <script> has a body.
        for part in lower.split("<script").skip(1) {
            let src = part
                .split("src=\"")
                .nth(1)
                .and_then(|s| s.split('"').next())
                .expect("every script has a src");
            let name = src.strip_prefix("/inspector/assets/").expect("served here");
            assert!(
                FILES.iter().any(|(n, _, _)| *n == name),
                "{name} is embedded"
            );
            let tag_end = part.find('>').unwrap();
            assert!(
                part[tag_end + 1..].starts_with("</script>"),
                "script {name} has no body"
            );
        }
        for (name, _, bytes) in FILES.iter().filter(|(_, t, _)| !t.starts_with("image/")) {
            let text = String::from_utf8_lossy(bytes);
            for forbidden in ["http://", "https://", "eval(", "new Function"] {
                assert!(!text.contains(forbidden), "{name} contains {forbidden}");
            }
        }
    }
}
