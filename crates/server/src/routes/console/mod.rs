//! The web console's shell: a sign-in page in the tenant's branding (product name, colours,
//! logo), found by custom domain, subdomain or path. Every value from the tenant is escaped;
//! the page runs only its own script (a strict Content-Security-Policy).

use crate::problem::ApiError;
use crate::state::AppState;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};

const APP_JS: &str = include_str!("app.js");
const CSP: &str = "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; \
                   script-src 'self'; connect-src 'self'; form-action 'none'; \
                   frame-ancestors 'none'; base-uri 'none'";
const DEFAULT_NAME: &str = "Agentplane";
const DEFAULT_PRIMARY: &str = "#1f2937";
const DEFAULT_ACCENT: &str = "#2563eb";
/// The tab icon of a tenant without a logo (a browser asks for `/favicon.ico` otherwise).
const DEFAULT_ICON: &str = "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 16 16\">\
<rect width=\"16\" height=\"16\" rx=\"3\" fill=\"#1f2937\"/></svg>";

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn host(headers: &HeaderMap) -> Option<&str> {
    headers.get(header::HOST).and_then(|h| h.to_str().ok())
}

async fn page(
    state: &AppState,
    host: Option<&str>,
    path: Option<&str>,
) -> Result<Response, ApiError> {
    let (tenant, b) = state.control().console_branding(host, path).await?;
    let name = escape(b.product_name.as_deref().unwrap_or(DEFAULT_NAME));
    let primary = escape(b.primary_color.as_deref().unwrap_or(DEFAULT_PRIMARY));
    let accent = escape(b.accent_color.as_deref().unwrap_or(DEFAULT_ACCENT));
    let slug = escape(tenant.slug.as_str());
    // The logo is the tab's icon too, else a neutral one (a page naming none makes the
    // browser ask for /favicon.ico; an inline `data:` icon would break the CSP).
    let (logo, icon) = match &b.logo {
        Some(l) => {
            let src = format!("/console/{slug}/logo?v={}", escape(&l.sha256));
            (
                format!(r#"<img src="{src}" alt="">"#),
                format!(r#"<link rel="icon" href="{src}">"#),
            )
        }
        None => (
            String::new(),
            r#"<link rel="icon" href="/console/icon.svg">"#.to_owned(),
        ),
    };
    let html = format!(
        r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{name}</title>
{icon}
<style>
:root {{ --primary: {primary}; --accent: {accent}; }}
body {{ font-family: system-ui, sans-serif; margin: 0; color: #1a1a1a; }}
header {{ background: var(--primary); color: #fff; padding: 12px 20px; display: flex; align-items: center; gap: 12px; }}
header img {{ height: 32px; }}
main {{ max-width: 420px; margin: 48px auto; padding: 0 20px; }}
input {{ display: block; width: 100%; margin: 6px 0 14px; padding: 8px; box-sizing: border-box; }}
button {{ background: var(--accent); color: #fff; border: 0; padding: 10px 16px; border-radius: 6px; }}
</style>
</head>
<body data-tenant="{slug}">
<header>{logo}<span id="product">{name}</span></header>
<main>
<h1>Sign in to {name}</h1>
<form id="sign-in">
<label>E-mail<input name="email" type="email" autocomplete="username" required></label>
<label>Password<input name="password" type="password" autocomplete="current-password" required></label>
<button type="submit">Sign in</button>
</form>
<p id="status" role="status"></p>
</main>
<script src="/console/app.js"></script>
</body>
</html>
"#
    );
    Ok((
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        html,
    )
        .into_response())
}

/// The console of the tenant the host names (custom domain or subdomain).
pub async fn root(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    page(&state, host(&headers), None).await
}

/// The console of the tenant the path names (its slug or id).
pub async fn tenant(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(tenant): Path<String>,
) -> Result<Response, ApiError> {
    page(&state, host(&headers), Some(&tenant)).await
}

/// The tenant's logo, as its console shows it.
pub async fn logo(
    State(state): State<AppState>,
    Path(tenant): Path<String>,
) -> Result<Response, ApiError> {
    let (logo, bytes) = state.control().console_logo(&tenant).await?;
    Ok(super::branding::image(
        &logo.content_type,
        bytes,
        "public, max-age=300",
    ))
}

/// The tab icon of a tenant without a logo.
pub async fn icon() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "image/svg+xml"),
            (header::CACHE_CONTROL, "public, max-age=86400"),
        ],
        DEFAULT_ICON,
    )
}

/// The console's script.
pub async fn app_js() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        APP_JS,
    )
}

#[cfg(test)]
mod tests {
    use super::escape;

    #[test]
    fn escapes_what_html_would_read_as_markup() {
        assert_eq!(
            escape(r#"<b onclick="x">A & 'B'</b>"#),
            "&lt;b onclick=&quot;x&quot;&gt;A &amp; &#39;B&#39;&lt;/b&gt;"
        );
    }
}
