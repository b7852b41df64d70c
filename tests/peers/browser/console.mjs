// Loads web console pages in a real, headless Chromium (Debian's, driven by playwright-core;
// never a browser of Playwright's own) and reports, as one JSON document on stdout, what the
// browser saw. It asserts nothing itself: tests/api/console_browser.rs does, on the report.
//
// Input, a JSON document on stdin:
//   {
//     "chromium": "/usr/bin/chromium",
//     "map_to_loopback": ["*.agentplane.test", "ai.acme.test"],  // host names Chromium resolves to 127.0.0.1
//     "screenshot_dir": null,                                   // optional: a PNG of each page there
//     "visits": [
//       {"label": "acme by path", "url": "http://127.0.0.1:PORT/console/acme",
//        "sign_in": [{"email": "a@b.test", "password": "..."}, ...]}   // submitted in order
//     ]
//   }
// Output (stdout): {"browser": "<version>", "playwright": "<version>", "visits": [REPORT, ...]},
// a REPORT per visit (see `visit` below). Exits non-zero, with the reason on stderr, when the
// browser cannot be started or a page cannot be driven (a navigation that fails, a selector that
// never appears): no report then.
//
// Every visit gets a fresh browser context (no cookies, cache or storage from another visit).
// Nothing waits on the clock: page loads wait for the `load` event (every image settled),
// sign-ins for the token endpoint's response and the status line's final text.

import { chromium } from "playwright-core";
import { createRequire } from "node:module";
import { readFileSync } from "node:fs";
import path from "node:path";

const require = createRequire(import.meta.url);
const PLAYWRIGHT_VERSION = require("playwright-core/package.json").version;
const TIMEOUT_MS = 20_000;

// Runs in every document before its own scripts (injected by the browser, not by the page, so
// the page's CSP does not apply to it): records every CSP violation the page causes.
function recordCspViolations() {
  window.__cspViolations = [];
  document.addEventListener("securitypolicyviolation", (e) => {
    window.__cspViolations.push({
      directive: e.effectiveDirective || e.violatedDirective,
      blocked: e.blockedURI,
      source: e.sourceFile,
      sample: e.sample,
    });
  });
}

// What the rendered page shows (runs in the page).
function snapshot() {
  const css = (el, prop) => (el ? getComputedStyle(el).getPropertyValue(prop).trim() : null);
  const text = (sel) => {
    const el = document.querySelector(sel);
    return el ? el.textContent : null;
  };
  const header = document.querySelector("header");
  const button = document.querySelector("#sign-in button");
  const all = [...document.querySelectorAll("*")];
  const colours = new Set();
  for (const el of all) {
    const s = getComputedStyle(el);
    for (const p of ["color", "background-color", "border-top-color", "outline-color"]) {
      colours.add(s.getPropertyValue(p));
    }
  }
  return {
    title: document.title,
    h1: text("h1"),
    product: text("#product"),
    data_tenant: document.body ? document.body.dataset.tenant ?? null : null,
    primary_var: css(document.documentElement, "--primary"),
    accent_var: css(document.documentElement, "--accent"),
    header_background: css(header, "background-color"),
    header_visible: !!header && header.getBoundingClientRect().height > 0,
    button_background: css(button, "background-color"),
    button_text: button ? button.textContent : null,
    form_visible: !!document.querySelector("#sign-in") && !document.querySelector("#sign-in").hidden,
    status: text("#status"),
    images: [...document.images].map((img) => ({
      src: img.getAttribute("src"),
      current_src: img.currentSrc,
      complete: img.complete,
      natural_width: img.naturalWidth,
      natural_height: img.naturalHeight,
      rendered_height: img.getBoundingClientRect().height,
    })),
    icons: [...document.querySelectorAll('link[rel~="icon"]')].map((l) => l.getAttribute("href")),
    scripts: [...document.scripts].map((s) => s.getAttribute("src")),
    tags: [...new Set(all.map((el) => el.tagName.toLowerCase()))].sort(),
    colours: [...colours].sort(),
    html: document.documentElement.outerHTML,
    csp_violations: window.__cspViolations ?? null,
  };
}

async function visit(browser, v, screenshotDir, index) {
  const context = await browser.newContext({ javaScriptEnabled: true });
  await context.addInitScript(recordCspViolations);
  const page = await context.newPage();
  page.setDefaultTimeout(TIMEOUT_MS);
  let phase = "load";
  const consoleMessages = [];
  const pageErrors = [];
  const responses = [];
  const failedRequests = [];
  page.on("console", (m) =>
    consoleMessages.push({ phase, type: m.type(), text: m.text(), url: m.location().url ?? null }),
  );
  page.on("pageerror", (e) => pageErrors.push({ phase, message: String(e && e.message ? e.message : e) }));
  page.on("response", (r) =>
    responses.push({
      phase,
      url: r.url(),
      status: r.status(),
      content_type: r.headers()["content-type"] ?? null,
    }),
  );
  page.on("requestfailed", (r) =>
    failedRequests.push({ phase, url: r.url(), error: r.failure() ? r.failure().errorText : null }),
  );

  const main = await page.goto(v.url, { waitUntil: "load" });
  if (!main) throw new Error(`${v.label}: no response for ${v.url}`);
  const headers = await main.allHeaders();
  const loaded = await page.evaluate(snapshot);
  let screenshot = null;
  if (screenshotDir) {
    screenshot = path.join(screenshotDir, `console-${index}.png`);
    await page.screenshot({ path: screenshot, fullPage: true });
  }

  // Sign in as a person would: type into the form and click its button.
  const signIns = [];
  for (const [i, attempt] of (v.sign_in ?? []).entries()) {
    phase = `sign_in_${i}`;
    await page.fill('#sign-in input[name="email"]', attempt.email);
    await page.fill('#sign-in input[name="password"]', attempt.password);
    const token = page.waitForResponse((r) => /\/v1\/auth\/[^/]+\/token$/.test(new URL(r.url()).pathname));
    await page.click('#sign-in button[type="submit"]');
    const res = await token;
    // The script shows "Signing in…" until it has the answer (and, signed in, who it is).
    await page.waitForFunction(() => {
      const s = document.getElementById("status").textContent;
      return s !== "" && s !== "Signing in…";
    });
    const after = await page.evaluate(snapshot);
    signIns.push({
      email: attempt.email,
      token_url: res.url(),
      token_status: res.status(),
      status: after.status,
      form_visible: after.form_visible,
      local_storage_keys: await page.evaluate(() => Object.keys(localStorage)),
      session_storage_keys: await page.evaluate(() => Object.keys(sessionStorage)),
      cookies: (await context.cookies()).map((c) => c.name),
      html: after.html,
      csp_violations: after.csp_violations,
    });
    if (!after.form_visible) break;
  }

  // The canary: an inline script injected now must be refused by the page's CSP and show up as
  // a violation, which proves the CSP is enforced and that a violation would be seen.
  phase = "canary";
  const injected = await page.evaluate(() => {
    const before = window.__cspViolations.length;
    window.__inlineRan = false;
    const s = document.createElement("script");
    s.textContent = "window.__inlineRan = true;";
    document.body.append(s); // an allowed inline script would have run by now
    s.remove();
    return { before, inline_ran: window.__inlineRan };
  });
  // The violation event comes as a task of its own: wait for it (a few seconds at most, and
  // only when it never comes, which the test then reports).
  const seen = await page
    .waitForFunction((n) => window.__cspViolations.length > n, injected.before, { timeout: 5_000 })
    .then(() => true, () => false);
  const canary = {
    inline_ran: injected.inline_ran,
    violations: seen ? await page.evaluate((n) => window.__cspViolations.slice(n), injected.before) : [],
  };

  await context.close();
  return {
    label: v.label,
    url: v.url,
    final_url: main.url(),
    status: main.status(),
    content_security_policy: headers["content-security-policy"] ?? null,
    loaded,
    sign_ins: signIns,
    canary,
    console: consoleMessages,
    page_errors: pageErrors,
    responses,
    failed_requests: failedRequests,
    screenshot,
  };
}

async function main() {
  const input = JSON.parse(readFileSync(0, "utf8"));
  const rules = (input.map_to_loopback ?? []).map((h) => `MAP ${h} 127.0.0.1`).join(", ");
  const args = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    // Straight to the test's server: no proxy from the environment, no name outside the map.
    "--no-proxy-server",
  ];
  if (rules) args.push(`--host-resolver-rules=${rules}`);
  // A fresh, temporary user-data-dir of Playwright's own, removed on close.
  const browser = await chromium.launch({
    executablePath: input.chromium ?? "/usr/bin/chromium",
    headless: true,
    args,
    timeout: 60_000,
  });
  try {
    const visits = [];
    for (const [i, v] of input.visits.entries()) {
      visits.push(await visit(browser, v, input.screenshot_dir ?? null, i));
    }
    process.stdout.write(
      JSON.stringify({ browser: browser.version(), playwright: PLAYWRIGHT_VERSION, visits }) + "\n",
    );
  } finally {
    await browser.close();
  }
}

main().catch((e) => {
  process.stderr.write(`console.mjs: ${e && e.stack ? e.stack : e}\n`);
  process.exit(1);
});
