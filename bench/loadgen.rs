//! Load generator for the gateway benchmark (`bench/gateway.sh`): what `oha` cannot do.
//!
//! - `run`: `POST {url}` with an OpenAI chat-completion body, round-robin over API keys read from
//!   a file (one per line; `oha` sends one fixed `Authorization` header), either
//!   - open loop (`--rate R`): request `i` is scheduled at `start + i/R` by a dedicated thread
//!     (precise `nanosleep`, not the 1 ms tokio timer) and its latency is measured from that
//!     scheduled time, so a stalled server is charged for the requests it delayed (latency
//!     correction, like `oha -q R --latency-correction` or wrk2); or
//!   - closed loop (`--concurrency C`, no rate): C workers send back to back, for throughput.
//!
//!   It reports requests/s, latency p50/p90/p99/p99.9/max and errors by status; with
//!   `--stream`, time to first token (the first `data:` event) and the frames' integrity: the
//!   concatenated content must be `"0 1 ... N-1 "` (`--expect-chunks N`, what the mock sends),
//!   so a lost, duplicated or reordered frame is counted, as are a missing `[DONE]` or (with
//!   `--expect-usage`) a missing usage chunk. `--rss-pid` samples a process's VmRSS meanwhile.
//!   In-flight requests are awaited at the deadline, never aborted.
//! - `setup`: a plan with huge limits and N tenants through the HTTP API, each with three
//!   providers (the `zero`, `delay20` and `sse` mocks), three agents (`bench-zero`,
//!   `bench-delay20`, `bench-sse`) and an API key; keys and tenant ids appended to files.
//! - `usage`: the sum of `GET /v1/admin/tenants/{id}/usage` over tenant ids (a settlement check).
//!
//! ```sh
//! cargo run --release --example loadgen -- run --url http://127.0.0.1:18101/v1/chat/completions \
//!     --no-auth --rate 2000 --duration 8
//! cargo run --release --example loadgen -- run --url http://127.0.0.1:18180/v1/chat/completions \
//!     --keys keys.txt --model bench-sse --stream --expect-chunks 16 --concurrency 256 --duration 10
//! ```

// A benchmark tool: printing its figures is its job.
#![allow(clippy::print_stdout)]

use anyhow::{bail, Context, Result};
use clap::{Args as ClapArgs, Parser, Subcommand};
use futures::StreamExt;
use reqwest::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(name = "loadgen", about = "Gateway benchmark load generator")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Drive load and report latency, throughput, errors (and TTFT for streams).
    Run(RunArgs),
    /// Create a plan and tenants, each with mock providers, agents and an API key.
    Setup(SetupArgs),
    /// Sum the usage (messages, tokens, used and reserved) of tenants.
    Usage(UsageArgs),
}

#[derive(ClapArgs)]
struct RunArgs {
    /// Full URL, e.g. http://127.0.0.1:18180/v1/chat/completions.
    #[arg(long)]
    url: String,
    /// File of API keys, one per line, used round-robin.
    #[arg(long, conflicts_with_all = ["key", "no_auth"])]
    keys: Option<PathBuf>,
    /// Use only the first N keys of the file.
    #[arg(long)]
    keys_limit: Option<usize>,
    /// One API key.
    #[arg(long)]
    key: Option<String>,
    /// Send no Authorization header (the mock called directly).
    #[arg(long)]
    no_auth: bool,
    /// `model` of the request (the agent's name at the gateway).
    #[arg(long, default_value = "bench-zero")]
    model: String,
    /// Open loop at this many requests per second (latency from the scheduled time).
    #[arg(long)]
    rate: Option<f64>,
    /// Closed loop with this many workers (when no --rate); with --rate, the in-flight cap.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Measured seconds.
    #[arg(long, default_value_t = 8.0)]
    duration: f64,
    /// Seconds of load before the measured window (not recorded).
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Ask for a stream (`stream: true`, `stream_options.include_usage`).
    #[arg(long)]
    stream: bool,
    /// Content chunks each stream must carry, in order (0 = do not check the content).
    #[arg(long, default_value_t = 16)]
    expect_chunks: u32,
    /// Count a stream without a usage chunk as bad.
    #[arg(long)]
    expect_usage: bool,
    /// Sample this process's VmRSS every 50 ms.
    #[arg(long)]
    rss_pid: Option<u32>,
    /// Per-request timeout, seconds.
    #[arg(long, default_value_t = 60.0)]
    timeout: f64,
    /// A name for the report.
    #[arg(long, default_value = "run")]
    label: String,
    /// Write the figures as one JSON object to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(ClapArgs)]
struct SetupArgs {
    /// The server, e.g. http://127.0.0.1:18180.
    #[arg(long)]
    base: String,
    /// A platform-admin JWT.
    #[arg(long, env = "BENCH_ADMIN_TOKEN", hide_env_values = true)]
    token: String,
    #[arg(long, default_value = "bench")]
    plan: String,
    /// Tenants to create.
    #[arg(long, default_value_t = 1)]
    tenants: usize,
    /// Index of the first tenant (names are `Bench <index>`).
    #[arg(long, default_value_t = 0)]
    start: usize,
    /// Base URLs of the three mocks (as a provider's base_url).
    #[arg(long)]
    mock_zero: String,
    #[arg(long)]
    mock_delay20: String,
    #[arg(long)]
    mock_sse: String,
    /// Append the API keys here, one per line, in tenant order.
    #[arg(long)]
    keys_out: PathBuf,
    /// Append the tenant ids here, one per line, in tenant order.
    #[arg(long)]
    ids_out: PathBuf,
    /// Tenants set up at once.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
}

#[derive(ClapArgs)]
struct UsageArgs {
    #[arg(long)]
    base: String,
    #[arg(long, env = "BENCH_ADMIN_TOKEN", hide_env_values = true)]
    token: String,
    /// File of tenant ids, one per line.
    #[arg(long)]
    ids: PathBuf,
    #[arg(long)]
    json: Option<PathBuf>,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("loadgen: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        match cli.command {
            Command::Run(a) => run(a).await,
            Command::Setup(a) => setup(a).await,
            Command::Usage(a) => usage(a).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loadgen: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

// ---------------------------------------------------------------------------------------------
// run

#[derive(Default)]
struct Recorder {
    /// Latency of each recorded request, microseconds (successes only).
    latency_us: Vec<u64>,
    /// Time to the first `data:` event of each recorded stream, microseconds.
    ttft_us: Vec<u64>,
    ok: u64,
    /// Successes completed inside the measured window (closed loop: the throughput).
    ok_in_window: u64,
    errors: BTreeMap<String, u64>,
    stream_bad: BTreeMap<String, u64>,
    frames: u64,
}

struct Shared {
    client: reqwest::Client,
    url: String,
    auth: Vec<Option<HeaderValue>>,
    next_key: AtomicUsize,
    body: Vec<u8>,
    stream: bool,
    expected: Option<String>,
    expect_usage: bool,
    rec: Mutex<Recorder>,
    late: AtomicU64,
}

enum Outcome {
    Ok {
        ttft: Option<Duration>,
        frames: u64,
        bad: Option<&'static str>,
    },
    Err(String),
}

async fn run(a: RunArgs) -> Result<()> {
    let auth = read_auth(&a)?;
    let mut body = json!({
        "model": a.model,
        "messages": [
            {"role": "system", "content": "You are a terse benchmark assistant."},
            {"role": "user", "content": "Say hello in one short sentence."}
        ],
    });
    if a.stream {
        body["stream"] = json!(true);
        body["stream_options"] = json!({"include_usage": true});
    }
    let expected = (a.stream && a.expect_chunks > 0).then(|| {
        (0..a.expect_chunks)
            .map(|i| format!("{i} "))
            .collect::<String>()
    });
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(usize::MAX)
        .pool_idle_timeout(Duration::from_secs(90))
        .tcp_nodelay(true)
        .timeout(Duration::from_secs_f64(a.timeout))
        .build()?;
    let shared = Arc::new(Shared {
        client,
        url: a.url.clone(),
        auth,
        next_key: AtomicUsize::new(0),
        body: serde_json::to_vec(&body)?,
        stream: a.stream,
        expected,
        expect_usage: a.expect_usage,
        rec: Mutex::new(Recorder::default()),
        late: AtomicU64::new(0),
    });

    let rss = a.rss_pid.map(|pid| {
        let stop = Arc::new(AtomicU64::new(0));
        let max = Arc::new(AtomicU64::new(0));
        let (s, m) = (stop.clone(), max.clone());
        let task = tokio::spawn(async move {
            while s.load(Ordering::Relaxed) == 0 {
                if let Some(kb) = proc_status_kb(pid, "VmRSS:") {
                    m.fetch_max(kb, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        (pid, stop, max, task)
    });

    let warmup = Duration::from_secs_f64(a.warmup);
    let window = Duration::from_secs_f64(a.duration);
    let started = Instant::now();
    match a.rate {
        Some(rate) => open_loop(&shared, rate, a.concurrency, warmup, window).await?,
        None => closed_loop(&shared, a.concurrency, warmup, window).await,
    }
    let elapsed = started.elapsed();

    let rss_kb = match rss {
        Some((pid, stop, max, task)) => {
            stop.store(1, Ordering::Relaxed);
            let _ = task.await;
            Some((
                max.load(Ordering::Relaxed),
                proc_status_kb(pid, "VmRSS:"),
                proc_status_kb(pid, "VmHWM:"),
            ))
        }
        None => None,
    };

    let rec = std::mem::take(&mut *shared.rec.lock().map_err(|_| anyhow::anyhow!("poisoned"))?);
    report(&a, rec, &shared, window, elapsed, rss_kb)
}

fn read_auth(a: &RunArgs) -> Result<Vec<Option<HeaderValue>>> {
    if a.no_auth {
        return Ok(vec![None]);
    }
    let keys: Vec<String> = match (&a.keys, &a.key) {
        (Some(path), _) => std::fs::read_to_string(path)
            .with_context(|| format!("reading {}", path.display()))?
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .take(a.keys_limit.unwrap_or(usize::MAX))
            .collect(),
        (None, Some(k)) => vec![k.clone()],
        (None, None) => bail!("give --keys FILE, --key KEY or --no-auth"),
    };
    if keys.is_empty() {
        bail!("no API keys");
    }
    keys.into_iter()
        .map(|k| Ok(Some(HeaderValue::from_str(&format!("Bearer {k}"))?)))
        .collect()
}

/// Requests scheduled at `start + i/rate` by a dedicated OS thread (nanosleep: tens of
/// microseconds of jitter, where tokio's timer wheel has a millisecond); each is timed from
/// its scheduled instant. At most `cap` in flight: the rest wait, and the wait is charged.
async fn open_loop(
    shared: &Arc<Shared>,
    rate: f64,
    cap: usize,
    warmup: Duration,
    window: Duration,
) -> Result<()> {
    if rate <= 0.0 {
        bail!("--rate must be positive");
    }
    let sem = Arc::new(tokio::sync::Semaphore::new(cap.max(1)));
    let handle = tokio::runtime::Handle::current();
    let s = shared.clone();
    let total = ((warmup + window).as_secs_f64() * rate).round() as u64;
    let warm_count = (warmup.as_secs_f64() * rate).round() as u64;
    let handles = tokio::task::spawn_blocking(move || {
        let start = Instant::now() + Duration::from_millis(20);
        let window_end = start + warmup + window;
        let mut handles = Vec::with_capacity(total as usize);
        for i in 0..total {
            let at = start + Duration::from_secs_f64(i as f64 / rate);
            let now = Instant::now();
            if at > now {
                std::thread::sleep(at - now);
            } else if now - at > Duration::from_millis(1) {
                s.late.fetch_add(1, Ordering::Relaxed);
            }
            let (s2, sem2) = (s.clone(), sem.clone());
            let record = i >= warm_count;
            handles.push(handle.spawn(async move {
                let _permit = sem2.acquire_owned().await;
                let outcome = one_request(&s2, at).await;
                if record {
                    s2.record(outcome, at, Instant::now() <= window_end);
                }
            }));
        }
        handles
    })
    .await?;
    for h in handles {
        let _ = h.await;
    }
    Ok(())
}

async fn closed_loop(shared: &Arc<Shared>, workers: usize, warmup: Duration, window: Duration) {
    let start = Instant::now();
    let warm_end = start + warmup;
    let end = warm_end + window;
    let tasks: Vec<_> = (0..workers.max(1))
        .map(|_| {
            let s = shared.clone();
            tokio::spawn(async move {
                loop {
                    let t0 = Instant::now();
                    if t0 >= end {
                        break;
                    }
                    let outcome = one_request(&s, t0).await;
                    if t0 >= warm_end {
                        s.record(outcome, t0, Instant::now() <= end);
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        let _ = t.await;
    }
}

impl Shared {
    fn record(&self, outcome: Outcome, from: Instant, in_window: bool) {
        let now = Instant::now();
        let Ok(mut rec) = self.rec.lock() else { return };
        match outcome {
            Outcome::Ok { ttft, frames, bad } => {
                rec.frames += frames;
                if let Some(reason) = bad {
                    *rec.stream_bad.entry(reason.to_owned()).or_default() += 1;
                }
                rec.ok += 1;
                if in_window {
                    rec.ok_in_window += 1;
                }
                rec.latency_us.push(micros(now - from));
                if let Some(t) = ttft {
                    rec.ttft_us.push(micros(t));
                }
            }
            Outcome::Err(kind) => *rec.errors.entry(kind).or_default() += 1,
        }
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

async fn one_request(s: &Shared, from: Instant) -> Outcome {
    let i = s.next_key.fetch_add(1, Ordering::Relaxed) % s.auth.len();
    let mut req = s
        .client
        .post(&s.url)
        .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
        .body(s.body.clone());
    if let Some(h) = &s.auth[i] {
        req = req.header(AUTHORIZATION, h.clone());
    }
    let mut resp = match req.send().await {
        Ok(r) => r,
        Err(e) => return Outcome::Err(error_kind(&e)),
    };
    let status = resp.status();
    if !status.is_success() {
        let _ = resp.bytes().await;
        return Outcome::Err(status.as_u16().to_string());
    }
    if !s.stream {
        return match resp.bytes().await {
            Ok(b) if serde_json::from_slice::<Value>(&b).is_ok() => Outcome::Ok {
                ttft: None,
                frames: 0,
                bad: None,
            },
            Ok(_) => Outcome::Err("bad_json".into()),
            Err(e) => Outcome::Err(error_kind(&e)),
        };
    }
    let mut sse = SseCheck::default();
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => sse.feed(&chunk, from),
            Ok(None) => break,
            Err(e) => return Outcome::Err(error_kind(&e)),
        }
    }
    sse.finish(from);
    let bad = sse.verdict(s.expected.as_deref(), s.expect_usage);
    Outcome::Ok {
        ttft: sse.ttft,
        frames: sse.events,
        bad,
    }
}

fn error_kind(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timeout".into()
    } else if e.is_connect() {
        "connect".into()
    } else {
        "io".into()
    }
}

/// An incremental server-sent-events reader that checks what the mock sent arrived whole.
#[derive(Default)]
struct SseCheck {
    line: Vec<u8>,
    data: Vec<u8>,
    has_data: bool,
    ttft: Option<Duration>,
    events: u64,
    content: String,
    done: bool,
    after_done: bool,
    usage: bool,
    bad_json: bool,
}

impl SseCheck {
    fn feed(&mut self, chunk: &[u8], from: Instant) {
        for &b in chunk {
            if b == b'\n' {
                let line = std::mem::take(&mut self.line);
                self.on_line(&line, from);
            } else {
                self.line.push(b);
            }
        }
    }

    fn on_line(&mut self, line: &[u8], from: Instant) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            self.dispatch(from);
        } else if let Some(rest) = line.strip_prefix(b"data:") {
            let rest = rest.strip_prefix(b" ").unwrap_or(rest);
            if self.has_data {
                self.data.push(b'\n');
            }
            self.data.extend_from_slice(rest);
            self.has_data = true;
        }
        // Comments (`:`), `event:`, `id:` and `retry:` lines carry no content here.
    }

    fn dispatch(&mut self, from: Instant) {
        if !self.has_data {
            return;
        }
        self.has_data = false;
        let data = std::mem::take(&mut self.data);
        if self.ttft.is_none() {
            self.ttft = Some(from.elapsed());
        }
        self.events += 1;
        if self.done {
            self.after_done = true;
        }
        if data == b"[DONE]" {
            self.done = true;
            return;
        }
        match serde_json::from_slice::<Value>(&data) {
            Ok(v) => {
                if let Some(c) = v
                    .pointer("/choices/0/delta/content")
                    .and_then(Value::as_str)
                {
                    self.content.push_str(c);
                }
                if v.get("usage").is_some_and(Value::is_object) {
                    self.usage = true;
                }
            }
            Err(_) => self.bad_json = true,
        }
    }

    fn finish(&mut self, from: Instant) {
        if !self.line.is_empty() {
            let line = std::mem::take(&mut self.line);
            self.on_line(&line, from);
        }
        self.dispatch(from);
    }

    fn verdict(&self, expected: Option<&str>, expect_usage: bool) -> Option<&'static str> {
        if self.bad_json {
            Some("bad_json")
        } else if expected.is_some_and(|e| e != self.content) {
            Some("lost_or_reordered")
        } else if !self.done {
            Some("no_done")
        } else if self.after_done {
            Some("data_after_done")
        } else if expect_usage && !self.usage {
            Some("no_usage")
        } else {
            None
        }
    }
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1] as f64 / 1000.0
}

fn stats(mut v: Vec<u64>) -> Value {
    v.sort_unstable();
    let mean = if v.is_empty() {
        f64::NAN
    } else {
        v.iter().sum::<u64>() as f64 / v.len() as f64 / 1000.0
    };
    json!({
        "n": v.len(),
        "mean_ms": mean,
        "p50_ms": percentile(&v, 50.0),
        "p90_ms": percentile(&v, 90.0),
        "p99_ms": percentile(&v, 99.0),
        "p999_ms": percentile(&v, 99.9),
        "max_ms": percentile(&v, 100.0),
    })
}

fn report(
    a: &RunArgs,
    rec: Recorder,
    shared: &Shared,
    window: Duration,
    elapsed: Duration,
    rss_kb: Option<(u64, Option<u64>, Option<u64>)>,
) -> Result<()> {
    let secs = window.as_secs_f64();
    let rps = rec.ok_in_window as f64 / secs;
    let errors: u64 = rec.errors.values().sum();
    let bad: u64 = rec.stream_bad.values().sum();
    let lat = stats(rec.latency_us);
    let ttft = (!rec.ttft_us.is_empty()).then(|| stats(rec.ttft_us));
    let mode = match a.rate {
        Some(r) => format!("open loop {r}/s (cap {} in flight)", a.concurrency),
        None => format!("closed loop, {} workers", a.concurrency),
    };
    let mut out = json!({
        "label": a.label,
        "url": a.url,
        "model": a.model,
        "mode": mode,
        "rate": a.rate,
        "concurrency": a.concurrency,
        "keys": shared.auth.len(),
        "stream": a.stream,
        "window_s": secs,
        "elapsed_s": elapsed.as_secs_f64(),
        "ok": rec.ok,
        "rps": rps,
        "errors": errors,
        "errors_by_kind": rec.errors,
        "latency": lat,
        "scheduler_late": shared.late.load(Ordering::Relaxed),
    });
    if a.stream {
        out["ttft"] = ttft.clone().unwrap_or(Value::Null);
        out["frames"] = json!(rec.frames);
        out["stream_bad"] = json!(bad);
        out["stream_bad_by_kind"] = json!(rec.stream_bad);
    }
    if let Some((max, last, hwm)) = rss_kb {
        out["rss_max_kb"] = json!(max);
        out["rss_last_kb"] = json!(last);
        out["rss_hwm_kb"] = json!(hwm);
    }
    let f = |v: &Value, k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    let lat = &out["latency"];
    let mut line = format!(
        "{}: {} keys, {mode}: {rps:.0} req/s, ok {}, errors {errors} {}; latency p50 {:.3} p90 {:.3} p99 {:.3} p99.9 {:.3} max {:.3} ms",
        a.label,
        shared.auth.len(),
        rec.ok,
        out["errors_by_kind"],
        f(lat, "p50_ms"),
        f(lat, "p90_ms"),
        f(lat, "p99_ms"),
        f(lat, "p999_ms"),
        f(lat, "max_ms"),
    );
    if let Some(t) = &ttft {
        line.push_str(&format!(
            "; TTFT p50 {:.3} p99 {:.3} ms; {} frames, {bad} bad streams {}",
            f(t, "p50_ms"),
            f(t, "p99_ms"),
            rec.frames,
            out["stream_bad_by_kind"],
        ));
    }
    if let Some((max, _, _)) = rss_kb {
        line.push_str(&format!("; RSS max {:.1} MB", max as f64 / 1024.0));
    }
    let late = shared.late.load(Ordering::Relaxed);
    if late > 0 {
        line.push_str(&format!("; {late} sends >1 ms late"));
    }
    println!("{line}");
    if let Some(path) = &a.json {
        std::fs::write(path, serde_json::to_vec_pretty(&out)?)?;
    }
    Ok(())
}

fn proc_status_kb(pid: u32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

// ---------------------------------------------------------------------------------------------
// setup and usage

struct Api {
    client: reqwest::Client,
    base: String,
    auth: String,
}

impl Api {
    fn new(base: &str, token: &str) -> Result<Api> {
        Ok(Api {
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()?,
            base: base.trim_end_matches('/').to_owned(),
            auth: format!("Bearer {token}"),
        })
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(u16, Value)> {
        let mut req = self
            .client
            .request(method.clone(), format!("{}{path}", self.base))
            .header(AUTHORIZATION, &self.auth);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("{method} {path}"))?;
        let status = resp.status().as_u16();
        let text = resp.text().await?;
        let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok((status, v))
    }

    async fn post(&self, path: &str, body: Value) -> Result<Value> {
        let (status, v) = self.call(reqwest::Method::POST, path, Some(body)).await?;
        if !(200..300).contains(&status) {
            bail!("POST {path}: {status} {v}");
        }
        Ok(v)
    }

    async fn get(&self, path: &str) -> Result<Value> {
        let (status, v) = self.call(reqwest::Method::GET, path, None).await?;
        if !(200..300).contains(&status) {
            bail!("GET {path}: {status} {v}");
        }
        Ok(v)
    }
}

fn str_field<'a>(v: &'a Value, ptr: &str) -> Result<&'a str> {
    v.pointer(ptr)
        .and_then(Value::as_str)
        .with_context(|| format!("no {ptr} in {v}"))
}

const HUGE: u64 = 1_000_000_000_000;

async fn setup(a: SetupArgs) -> Result<()> {
    let api = Arc::new(Api::new(&a.base, &a.token)?);
    let (status, _) = api
        .call(
            reqwest::Method::GET,
            &format!("/v1/admin/plans/{}", a.plan),
            None,
        )
        .await?;
    if status == 404 {
        api.post(
            "/v1/admin/plans",
            json!({
                "id": a.plan, "name": "Benchmark (unlimited)",
                "limits": {
                    "monthly_messages": HUGE, "monthly_tokens": HUGE,
                    "requests_per_minute": HUGE, "max_concurrent_runs": HUGE,
                },
            }),
        )
        .await?;
    }
    let started = Instant::now();
    let mocks = Arc::new([
        ("zero", a.mock_zero.clone()),
        ("delay20", a.mock_delay20.clone()),
        ("sse", a.mock_sse.clone()),
    ]);
    let plan = Arc::new(a.plan.clone());
    let done = Arc::new(AtomicUsize::new(0));
    let mut results: Vec<(usize, String, String)> =
        futures::stream::iter(a.start..a.start + a.tenants)
            .map(|i| {
                let (api, mocks, plan, done) =
                    (api.clone(), mocks.clone(), plan.clone(), done.clone());
                async move {
                    let r = setup_tenant(&api, i, &plan, &mocks).await?;
                    let n = done.fetch_add(1, Ordering::Relaxed) + 1;
                    if n % 100 == 0 {
                        eprintln!("  {n} tenants set up");
                    }
                    Ok::<_, anyhow::Error>((i, r.0, r.1))
                }
            })
            .buffer_unordered(a.concurrency.max(1))
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<_>>()?;
    results.sort_by_key(|r| r.0);
    let mut keys = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&a.keys_out)?;
    let mut ids = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&a.ids_out)?;
    for (_, id, key) in &results {
        writeln!(ids, "{id}")?;
        writeln!(keys, "{key}")?;
    }
    println!(
        "set up {} tenants in {:.1} s",
        results.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// One tenant: create, wait until provisioned, three providers, three agents, one key.
async fn setup_tenant(
    api: &Api,
    i: usize,
    plan: &str,
    mocks: &[(&str, String); 3],
) -> Result<(String, String)> {
    let created = api
        .post(
            "/v1/tenants",
            json!({"name": format!("Bench {i}"), "admin_email": format!("admin{i}@bench.example"),
                   "plan_id": plan}),
        )
        .await?;
    let id = str_field(&created, "/tenant/id")?.to_owned();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let t = api.get(&format!("/v1/tenants/{id}")).await?;
        if str_field(&t, "/status")? == "active" {
            break;
        }
        if Instant::now() > deadline {
            bail!("tenant {id} not provisioned after 120 s");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    for (name, url) in mocks {
        let p = api
            .post(
                &format!("/v1/tenants/{id}/providers"),
                json!({"name": format!("mock-{name}"), "kind": "openai", "base_url": url,
                       "api_key": "sk-bench-mock"}),
            )
            .await?;
        let pid = str_field(&p, "/id")?;
        api.post(
            &format!("/v1/tenants/{id}/agents"),
            json!({"name": format!("bench-{name}"), "provider_id": pid, "model": "mock-model",
                   "params": {"max_tokens": 64}}),
        )
        .await?;
    }
    let k = api
        .post(
            &format!("/v1/tenants/{id}/api-keys"),
            json!({"name": "bench"}),
        )
        .await?;
    Ok((id, str_field(&k, "/key")?.to_owned()))
}

async fn usage(a: UsageArgs) -> Result<()> {
    let api = Arc::new(Api::new(&a.base, &a.token)?);
    let ids: Vec<String> = std::fs::read_to_string(&a.ids)?
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
    let sums: Vec<Value> = futures::stream::iter(ids)
        .map(|id| {
            let api = api.clone();
            async move { api.get(&format!("/v1/admin/tenants/{id}/usage")).await }
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_>>()?;
    let total = |ptr: &str| -> i64 {
        sums.iter()
            .filter_map(|v| v.pointer(ptr).and_then(Value::as_i64))
            .sum()
    };
    let out = json!({
        "tenants": sums.len(),
        "messages_used": total("/messages/used"),
        "messages_reserved": total("/messages/reserved"),
        "tokens_used": total("/tokens/used"),
        "tokens_reserved": total("/tokens/reserved"),
    });
    println!("{out}");
    if let Some(path) = &a.json {
        std::fs::write(path, serde_json::to_vec_pretty(&out)?)?;
    }
    Ok(())
}
