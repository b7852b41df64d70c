//! The web console in a real browser: Debian's Chromium, headless, driven by
//! `tests/peers/browser/console.mjs` (playwright-core, pinned by its package-lock.json). Two
//! tenants with their own product name, colours, custom domain and logo (real PNGs of different
//! sizes), and a third without any branding; each console is loaded by path, by custom domain
//! and by subdomain (Chromium maps the test host names to the server on 127.0.0.1), and the
//! browser must show that tenant's branding applied (title, heading, computed colours, the logo
//! decoded at its own size; the defaults for the unbranded one), run the console's script under
//! its CSP without a violation, an error or a failed request, sign in through the form (a wrong
//! password, another tenant's member, then the tenant's own member), and show nothing of another
//! tenant (name, slug, member, domain, logo; product name and colours where it has its own)
//! anywhere in the DOM, its computed colours or its requests.
//!
//! The script only reports what the browser saw; every assertion is here. It fails, never
//! skips, when Chromium or the script's node_modules is missing: `bash scripts/install-peers`.
//! `AGENTPLANE_CONSOLE_SCREENSHOTS=DIR` keeps a screenshot of every page there (`console-N.png`,
//! N the visit's index; both backends write the same names).

use crate::both_backends;
use crate::helpers::{status_json, Backend, TestApp};
use reqwest::Method;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncWriteExt as _;

both_backends!(a_real_browser_shows_each_tenant_its_own_branded_console_and_nothing_else);

const CHROMIUM: &str = "/usr/bin/chromium";
const PASSWORD: &str = "correct horse battery staple";
const BASE_DOMAIN: &str = "agentplane.test";
/// The whole browser run (Chromium's start, 8 pages, 24 sign-ins), at most.
const BROWSER_TIMEOUT: Duration = Duration::from_secs(180);

/// The default branding the console shows a tenant that set none.
const DEFAULT_PRODUCT: &str = "Agentplane";
const DEFAULT_PRIMARY: &str = "#1f2937";
const DEFAULT_ACCENT: &str = "#2563eb";

struct Spec {
    name: &'static str,
    member: &'static str,
    branding: Option<Brand>,
}

struct Brand {
    product: &'static str,
    primary: &'static str,
    accent: &'static str,
    domain: &'static str,
    /// The logo's size in pixels: each tenant's differs, so the decoded image tells whose it is.
    logo_size: (u32, u32),
    logo_rgb: [u8; 3],
}

const SPECS: [Spec; 3] = [
    Spec {
        name: "Acme",
        member: "ada@acme.test",
        branding: Some(Brand {
            // Markup characters: the browser must show them as text, never parse them.
            product: "Acme <AI> & Co",
            primary: "#c0392b",
            accent: "#8e44ad",
            domain: "ai.acme.test",
            logo_size: (2, 1),
            logo_rgb: [0xf1, 0xc4, 0x0f],
        }),
    },
    Spec {
        name: "Globex",
        member: "gus@globex.test",
        branding: Some(Brand {
            product: "Globex Assist",
            primary: "#16a085",
            accent: "#2c3e50",
            domain: "assist.globex.test",
            logo_size: (3, 2),
            logo_rgb: [0xec, 0xf0, 0xf1],
        }),
    },
    Spec {
        name: "Initech",
        member: "ivy@initech.test",
        branding: None,
    },
];

/// A tenant as seeded, and what its console must show.
struct Tenant {
    name: &'static str,
    slug: String,
    member: &'static str,
    branded: bool,
    product: &'static str,
    primary: &'static str,
    accent: &'static str,
    domain: Option<&'static str>,
    /// The logo's URL (with its hash) and size.
    logo: Option<(String, (u32, u32))>,
}

/// A valid PNG of `w`×`h` pixels of one colour (8-bit RGB, zlib-compressed scanlines).
fn png(w: u32, h: u32, rgb: [u8; 3]) -> Vec<u8> {
    // Each scanline: filter type 0 (none), then the pixels.
    let line: Vec<u8> = std::iter::once(0).chain((0..w).flat_map(|_| rgb)).collect();
    let raw = line.repeat(usize::try_from(h).unwrap());
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    z.write_all(&raw).unwrap();
    let idat = z.finish().unwrap();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]); // 8 bits, truecolour, deflate, no filter/interlace
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    for (kind, data) in [(b"IHDR", ihdr), (b"IDAT", idat), (b"IEND", Vec::new())] {
        out.extend_from_slice(&u32::try_from(data.len()).unwrap().to_be_bytes());
        out.extend_from_slice(kind);
        out.extend_from_slice(&data);
        let mut crc = flate2::Crc::new();
        crc.update(kind);
        crc.update(&data);
        out.extend_from_slice(&crc.sum().to_be_bytes());
    }
    out
}

/// `#rrggbb` as the browser's computed style writes it: `rgb(r, g, b)`.
fn computed(hex: &str) -> String {
    let c = |i: usize| u8::from_str_radix(&hex[i..i + 2], 16).unwrap();
    format!("rgb({}, {}, {})", c(1), c(3), c(5))
}

fn peer_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/browser")
}

/// Chromium and the script's node_modules must be there: a clear failure, never a skip.
fn require_browser() {
    let fix = "run `bash scripts/install-peers` (it installs Debian's chromium and `npm ci`s tests/peers/browser)";
    assert!(
        Path::new(CHROMIUM).exists(),
        "console browser test: no {CHROMIUM}: {fix}"
    );
    assert!(
        peer_dir()
            .join("node_modules/playwright-core/package.json")
            .exists(),
        "console browser test: no playwright-core in {}/node_modules: {fix}",
        peer_dir().display()
    );
}

/// Runs console.mjs with `input` on its stdin: its report.
async fn run_browser(input: &Value) -> Value {
    let mut child = tokio::process::Command::new("node")
        .arg(peer_dir().join("console.mjs"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("console browser test: cannot run `node` (is Node.js installed?): {e}; then run `bash scripts/install-peers`"));
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(&serde_json::to_vec(input).unwrap())
        .await
        .unwrap();
    drop(stdin);
    let out = tokio::time::timeout(BROWSER_TIMEOUT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("console.mjs did not finish within {BROWSER_TIMEOUT:?}"))
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "console.mjs failed ({}): {stderr}\n(if Chromium or playwright-core is missing: bash scripts/install-peers)",
        out.status
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "console.mjs printed no JSON report ({e}): {}\nstderr: {stderr}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// Creates the tenant with its branding and logo, if any, and a member who signs in with
/// `PASSWORD`.
async fn seed(app: &TestApp, spec: &Spec) -> Tenant {
    let id = app.active_tenant(spec.name).await;
    let admin = app.tenant_user("tenant_admin", &id);
    let mut logo = None;
    if let Some(b) = &spec.branding {
        let (s, body) = status_json(
            app.call(
                Method::PUT,
                &format!("/v1/tenants/{id}/branding"),
                Some(&admin),
                Some(json!({
                    "product_name": b.product, "primary_color": b.primary,
                    "accent_color": b.accent, "custom_domain": b.domain,
                })),
            )
            .await,
        )
        .await;
        assert_eq!(s, 200, "{body}");
        let bytes = png(b.logo_size.0, b.logo_size.1, b.logo_rgb);
        let res = app
            .client
            .put(format!("{}/v1/tenants/{id}/branding/logo", app.base))
            .bearer_auth(&admin)
            .header("content-type", "image/png")
            .body(bytes.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
        logo = Some((hex::encode(Sha256::digest(&bytes)), b.logo_size));
    }
    let (s, inv) = status_json(
        app.post(
            &format!("/v1/tenants/{id}/invitations"),
            &admin,
            json!({"email": spec.member, "roles": ["member"]}),
        )
        .await,
    )
    .await;
    assert_eq!(s, 201, "{inv}");
    let (s, t) = status_json(
        app.call(
            Method::POST,
            "/v1/auth/invitations/accept",
            None,
            Some(json!({"token": inv["token"], "name": spec.name, "password": PASSWORD})),
        )
        .await,
    )
    .await;
    assert_eq!(s, 200, "{t}");
    let (_, t) = status_json(app.get(&format!("/v1/tenants/{id}"), &admin).await).await;
    let slug = t["slug"].as_str().unwrap().to_owned();
    let b = spec.branding.as_ref();
    Tenant {
        name: spec.name,
        member: spec.member,
        branded: b.is_some(),
        product: b.map_or(DEFAULT_PRODUCT, |b| b.product),
        primary: b.map_or(DEFAULT_PRIMARY, |b| b.primary),
        accent: b.map_or(DEFAULT_ACCENT, |b| b.accent),
        domain: b.map(|b| b.domain),
        logo: logo.map(|(sha, size)| (format!("/console/{slug}/logo?v={sha}"), size)),
        slug,
    }
}

/// Everything of `other` that must not reach another tenant's console (lowercase): who it is,
/// and its branding if it has its own.
fn traces_of(other: &Tenant) -> Vec<String> {
    let mut t = vec![
        other.name.to_lowercase(),
        other.slug.clone(),
        other.member.to_owned(),
        format!("/console/{}/", other.slug),
    ];
    if other.branded {
        t.extend([
            other.product.to_lowercase(),
            other.primary.to_owned(),
            other.accent.to_owned(),
        ]);
    }
    t.extend(other.domain.map(str::to_owned));
    t.extend(other.logo.iter().map(|(src, _)| src.to_lowercase()));
    t
}

fn strs(v: &Value) -> Vec<&str> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// Checks one visit's report against `own`'s console; what fails, with the visit's label.
/// `others[0]`'s member is the one who tried to sign in here.
fn check_visit(r: &Value, own: &Tenant, others: &[&Tenant], fails: &mut Vec<String>) {
    let label = r["label"].as_str().unwrap_or("?").to_owned();
    let mut expect = |ok: bool, what: String| {
        if !ok {
            fails.push(format!("{label}: {what}"));
        }
    };
    let l = &r["loaded"];

    // The page itself, as loaded (no redirect, no upgrade to another scheme), with its CSP.
    expect(r["status"] == 200, format!("status {}", r["status"]));
    expect(
        r["final_url"] == r["url"],
        format!("ended at {} instead of {}", r["final_url"], r["url"]),
    );
    let csp = r["content_security_policy"].as_str().unwrap_or("");
    expect(
        csp.contains("default-src 'none'") && csp.contains("script-src 'self'"),
        format!("CSP {csp:?}"),
    );

    // The tenant's branding (or the defaults), as the browser applied it.
    expect(
        l["title"] == own.product,
        format!("title {} (want {:?})", l["title"], own.product),
    );
    expect(
        l["h1"] == format!("Sign in to {}", own.product),
        format!("heading {}", l["h1"]),
    );
    expect(
        l["product"] == own.product,
        format!("header's product name {}", l["product"]),
    );
    expect(
        !strs(&l["tags"]).contains(&"ai"),
        format!("the product name was parsed as markup: tags {}", l["tags"]),
    );
    expect(
        l["data_tenant"] == own.slug.as_str(),
        format!("data-tenant {} (want {})", l["data_tenant"], own.slug),
    );
    expect(
        l["primary_var"] == own.primary,
        format!("--primary {} (want {})", l["primary_var"], own.primary),
    );
    expect(
        l["header_background"] == computed(own.primary),
        format!(
            "header background {} (want the primary colour {})",
            l["header_background"],
            computed(own.primary)
        ),
    );
    expect(
        l["header_visible"] == true,
        "the header is not rendered".into(),
    );
    expect(
        l["button_background"] == computed(own.accent),
        format!(
            "button background {} (want the accent colour {})",
            l["button_background"],
            computed(own.accent)
        ),
    );
    expect(
        l["form_visible"] == true && l["status"] == "",
        format!(
            "before signing in: form visible {}, status {}",
            l["form_visible"], l["status"]
        ),
    );

    // Its logo, decoded: the image of its own size, shown 32 px high, and the tab's icon; no
    // image and the neutral icon without one.
    let want_icons: Vec<&str> = match &own.logo {
        Some((src, _)) => vec![src.as_str()],
        None => vec!["/console/icon.svg"],
    };
    expect(
        strs(&l["icons"]) == want_icons,
        format!("icons {} (want {want_icons:?})", l["icons"]),
    );
    let images = l["images"].as_array().cloned().unwrap_or_default();
    match (&own.logo, images.as_slice()) {
        (Some((src, (w, h))), [img]) => {
            expect(
                img["src"] == src.as_str(),
                format!("logo src {} (want {src})", img["src"]),
            );
            expect(
                img["complete"] == true
                    && img["natural_width"] == *w
                    && img["natural_height"] == *h,
                format!("logo not decoded as its {w}x{h} PNG: {img}"),
            );
            expect(
                img["rendered_height"] == 32,
                format!("logo rendered {} px high, not 32", img["rendered_height"]),
            );
        }
        (None, []) => {}
        (want, got) => expect(false, format!("want the logo {want:?}, got images {got:?}")),
    }

    // The console's script loaded and ran under the CSP: no violation, error or failure.
    expect(
        strs(&l["scripts"]) == ["/console/app.js"],
        format!("scripts {}", l["scripts"]),
    );
    let responses = r["responses"].as_array().cloned().unwrap_or_default();
    let app_js = responses.iter().find(|x| {
        x["url"]
            .as_str()
            .is_some_and(|u| u.ends_with("/console/app.js"))
    });
    expect(
        app_js.is_some_and(|x| {
            x["status"] == 200
                && x["content_type"]
                    .as_str()
                    .is_some_and(|c| c.starts_with("text/javascript"))
        }),
        format!("app.js response {app_js:?}"),
    );
    for x in &responses {
        if x["phase"] == "load" {
            expect(
                x["status"].as_u64().is_some_and(|s| s < 400),
                format!("while loading: {} answered {}", x["url"], x["status"]),
            );
        }
    }
    expect(
        l["csp_violations"] == json!([]),
        format!("CSP violations while loading: {}", l["csp_violations"]),
    );
    expect(
        r["page_errors"] == json!([]),
        format!("script errors: {}", r["page_errors"]),
    );
    expect(
        r["failed_requests"] == json!([]),
        format!("failed requests: {}", r["failed_requests"]),
    );
    for m in r["console"].as_array().cloned().unwrap_or_default() {
        if m["phase"] == "canary" {
            continue; // checked below
        }
        let bad = matches!(m["type"].as_str(), Some("error" | "warning"));
        // A refused sign-in is a 401 the browser logs, as it does every failed fetch.
        let text = m["text"].as_str().unwrap_or("");
        let expected_401 = m["phase"] != "load" && text.contains("status of 401");
        expect(
            !bad || expected_401,
            format!(
                "console {} ({}, {}): {}",
                m["type"], m["phase"], m["url"], m["text"]
            ),
        );
    }

    // Signing in through the form: a wrong password and another tenant's member are refused
    // alike (no hint which), the tenant's own member gets in, and no token is stored.
    let sign_ins = r["sign_ins"].as_array().cloned().unwrap_or_default();
    let origin = r["url"].as_str().unwrap_or("").split("/console").next();
    let want_token_url = format!("{}/v1/auth/{}/token", origin.unwrap_or("?"), own.slug);
    for s in &sign_ins {
        expect(
            s["token_url"] == want_token_url.as_str(),
            format!("signed in at {} (want {want_token_url})", s["token_url"]),
        );
        expect(
            s["csp_violations"] == json!([]),
            format!("CSP violations signing in: {}", s["csp_violations"]),
        );
    }
    match sign_ins.as_slice() {
        [wrong, stranger, member] => {
            expect(
                wrong["token_status"] == 401 && wrong["form_visible"] == true,
                format!(
                    "wrong password: {} {}",
                    wrong["token_status"], wrong["status"]
                ),
            );
            let refused = wrong["status"].as_str().unwrap_or("");
            expect(
                !refused.is_empty() && !refused.starts_with("Signed in"),
                format!("a wrong password shows {refused:?}"),
            );
            expect(
                stranger["token_status"] == 401
                    && stranger["form_visible"] == true
                    && stranger["status"] == refused,
                format!(
                    "{}'s member on this console: {} {} (want 401 {refused:?})",
                    others[0].name, stranger["token_status"], stranger["status"]
                ),
            );
            expect(
                member["token_status"] == 200,
                format!(
                    "own member: {} {}",
                    member["token_status"], member["status"]
                ),
            );
            expect(
                member["status"] == format!("Signed in as {}.", own.member),
                format!(
                    "own member sees {} (want \"Signed in as {}.\")",
                    member["status"], own.member
                ),
            );
            expect(
                member["form_visible"] == false,
                "the form is still shown after signing in".into(),
            );
            for key in ["local_storage_keys", "session_storage_keys", "cookies"] {
                expect(
                    member[key] == json!([]),
                    format!(
                        "the token is kept in memory only, but {key}: {}",
                        member[key]
                    ),
                );
            }
        }
        _ => expect(false, format!("want 3 sign-ins, got {}", sign_ins.len())),
    }

    // The canary: the page's CSP refuses an inline script, and the report sees it, so a
    // violation while loading would not go unnoticed.
    let canary = &r["canary"];
    expect(
        canary["inline_ran"] == false
            && canary["violations"][0]["directive"]
                .as_str()
                .is_some_and(|d| d.starts_with("script-src")),
        format!("an injected inline script was not refused as a CSP violation: {canary}"),
    );

    // Nothing of another tenant anywhere: the DOM as loaded and after each sign-in, the colours
    // the browser computed, the requests the page made.
    let mut doms = vec![("as loaded", l["html"].as_str().unwrap_or("").to_lowercase())];
    for s in &sign_ins {
        doms.push((
            "after a sign-in",
            s["html"].as_str().unwrap_or("").to_lowercase(),
        ));
    }
    let colours = strs(&l["colours"]);
    for other in others {
        let traces = traces_of(other);
        for (when, dom) in &doms {
            expect(!dom.is_empty(), format!("no DOM {when}"));
            for t in &traces {
                expect(
                    !dom.contains(t.as_str()),
                    format!("the DOM {when} holds {t:?} of {}", other.name),
                );
            }
        }
        if other.branded {
            for c in [other.primary, other.accent] {
                expect(
                    !colours.contains(&computed(c).as_str()),
                    format!("an element has {}'s colour {c}", other.name),
                );
            }
        }
        for x in &responses {
            let url = x["url"].as_str().unwrap_or("").to_lowercase();
            expect(
                !traces.iter().any(|t| url.contains(t.as_str())),
                format!("requested {url}, of {}", other.name),
            );
        }
    }
}

async fn a_real_browser_shows_each_tenant_its_own_branded_console_and_nothing_else(b: Backend) {
    require_browser();
    let app = TestApp::spawn_with(b, |env| {
        env.insert("AGENTPLANE_BASE_DOMAIN".into(), BASE_DOMAIN.into());
    })
    .await;
    let mut tenants = Vec::new();
    for spec in &SPECS {
        tenants.push(seed(&app, spec).await);
    }
    let port = app.base.rsplit(':').next().unwrap().to_owned();

    // Each console by path, by custom domain (if it has one) and by subdomain; on each, sign in
    // with a wrong password, as the next tenant's member, then as the tenant's own member.
    let mut visits = Vec::new();
    let mut expected = Vec::new();
    for (i, own) in tenants.iter().enumerate() {
        let others: Vec<&Tenant> = (1..tenants.len())
            .map(|k| &tenants[(i + k) % tenants.len()])
            .collect();
        let sign_in = json!([
            {"email": own.member, "password": "not the password"},
            {"email": others[0].member, "password": PASSWORD},
            {"email": own.member, "password": PASSWORD},
        ]);
        let mut urls = vec![("path", format!("{}/console/{}", app.base, own.slug))];
        if let Some(d) = own.domain {
            urls.push(("custom domain", format!("http://{d}:{port}/console")));
        }
        urls.push((
            "subdomain",
            format!("http://{}.{BASE_DOMAIN}:{port}/console", own.slug),
        ));
        for (how, url) in urls {
            visits.push(json!({
                "label": format!("{} by {how}", own.name),
                "url": url,
                "sign_in": sign_in,
            }));
            expected.push((own, others.clone()));
        }
    }
    let mut map = vec![format!("*.{BASE_DOMAIN}")];
    map.extend(tenants.iter().filter_map(|t| t.domain.map(str::to_owned)));
    let report = run_browser(&json!({
        "chromium": CHROMIUM,
        "map_to_loopback": map,
        "screenshot_dir": std::env::var("AGENTPLANE_CONSOLE_SCREENSHOTS").ok(),
        "visits": visits,
    }))
    .await;

    let reports = report["visits"].as_array().unwrap();
    assert_eq!(reports.len(), expected.len(), "{report}");
    let mut fails = Vec::new();
    for (r, (own, others)) in reports.iter().zip(&expected) {
        check_visit(r, own, others, &mut fails);
    }
    assert!(
        fails.is_empty(),
        "the console in Chromium {} (playwright-core {}):\n  {}",
        report["browser"],
        report["playwright"],
        fails.join("\n  ")
    );
}
