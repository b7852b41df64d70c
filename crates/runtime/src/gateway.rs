//! Running an agent: what `POST /v1/chat/completions` and `POST /v1/tenants/{id}/runs` do.
//!
//! The order is the contract: the tenant comes from the API key; the agent is the tenant's
//! (and within the key's scopes); the plan's rate and concurrency limits admit the request;
//! the quota reserves one message and an upper bound of its tokens before anything is sent;
//! the provider's sealed secret is opened only for the call; the run is settled with the
//! provider's real figures, whatever happens to the client, before the client sees the end of
//! the answer.

use crate::limits::{LimitError, Limits, RunPermit};
use crate::quota::{QuotaError, Quotas, Reservation};
use crate::relabel::{relabel, Seen};
use crate::trace::TraceContext;
use crate::upstream::{StreamEvent, UpstreamAuth, UpstreamError, UpstreamTarget, Upstreams};
use agentplane_control::{ControlError, ControlPlane};
use agentplane_core::agent::Agent;
use agentplane_core::api_key::VerifiedApiKey;
use agentplane_core::authz::TenantCtx;
use agentplane_core::plan::PlanLimits;
use agentplane_core::provider::{Provider, ProviderAuth, ProviderKind};
use agentplane_core::quota::{reserve_tokens, Amount, Exhausted};
use agentplane_core::time::Timestamp;
use agentplane_core::usage::UsageRecord;
use agentplane_core::{DomainError, PlanId, TenantId, UsageRecordId};
use bytes::Bytes;
use futures::StreamExt;
use reqwest::Url;
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use zeroize::Zeroizing;

/// Request fields passed to the provider as sent (after validation of their type).
const PASSTHROUGH: &[&str] = &[
    "temperature",
    "top_p",
    "stop",
    "presence_penalty",
    "frequency_penalty",
    "seed",
    "user",
    "response_format",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "logit_bias",
    "logprobs",
    "top_logprobs",
];
const ROLES: &[&str] = &[
    "system",
    "developer",
    "user",
    "assistant",
    "tool",
    "function",
];
const MAX_MESSAGES: usize = 4096;

#[derive(Clone, Copy, Debug)]
pub struct RuntimeConfig {
    /// Completion bound when neither the request nor the agent sets `max_tokens`.
    pub default_max_tokens: i64,
    /// Azure providers may authenticate with an API key (`ALLOW_API_KEY_FALLBACK`); else
    /// they must use an Entra ID identity.
    pub allow_api_key_fallback: bool,
    /// How long an agent's and its provider's configuration is cached per process at most
    /// (zero: read on every run). Changes drop it sooner: at once when made through this
    /// process, as announced by the store otherwise (see [`Store::config_changed_since`]).
    ///
    /// [`Store::config_changed_since`]: agentplane_store::Store::config_changed_since
    pub config_cache: Duration,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            default_max_tokens: 1024,
            allow_api_key_fallback: false,
            config_cache: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Invalid(#[from] DomainError),
    /// The agent (the `model`) is not the tenant's, or not within the key's scopes.
    #[error("no agent {0:?} for this key")]
    UnknownAgent(String),
    #[error(transparent)]
    Limit(#[from] LimitError),
    #[error("{} quota exhausted", .0.quota.as_str())]
    Quota(Exhausted),
    /// The provider's configuration is refused by policy.
    #[error("{0}")]
    Policy(String),
    /// The provider is outside the tenant's data-residency region (the refusal is audited).
    #[error("the provider {host} is not in the tenant's region {region}")]
    Residency { region: String, host: String },
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error("usage could not be recorded: {0}")]
    Metering(String),
    /// Concurrent runs kept taking what grants added (retry).
    #[error("the quota is contended")]
    QuotaBusy,
    #[error(transparent)]
    Control(#[from] ControlError),
}

impl From<QuotaError> for RunError {
    fn from(e: QuotaError) -> Self {
        match e {
            QuotaError::Exhausted(x) => Self::Quota(x),
            QuotaError::Store(s) => Self::Control(s.into()),
            QuotaError::Busy => Self::QuotaBusy,
        }
    }
}

/// A validated chat request.
#[derive(Clone, Debug)]
pub struct ChatInput {
    /// The agent's name or id (OpenAI's `model`).
    pub agent: String,
    pub messages: Vec<Value>,
    pub stream: bool,
    pub max_tokens: Option<i64>,
    pub n: i64,
    pub passthrough: Map<String, Value>,
}

fn invalid(field: &'static str, reason: impl Into<String>) -> DomainError {
    DomainError::invalid(field, reason)
}

impl ChatInput {
    /// Validates an OpenAI chat-completions request body.
    pub fn from_openai(body: Value) -> Result<Self, DomainError> {
        let Value::Object(mut body) = body else {
            return Err(invalid("body", "must be a JSON object"));
        };
        let agent = match body.remove("model") {
            Some(Value::String(m)) if !m.is_empty() && m.len() <= 128 => m,
            _ => return Err(invalid("model", "must be the name of one of your agents")),
        };
        let messages = match body.remove("messages") {
            Some(Value::Array(m)) if !m.is_empty() && m.len() <= MAX_MESSAGES => m,
            _ => {
                return Err(invalid(
                    "messages",
                    format!("must be an array of 1-{MAX_MESSAGES} messages"),
                ))
            }
        };
        for m in &messages {
            let role = m.get("role").and_then(Value::as_str);
            if !role.is_some_and(|r| ROLES.contains(&r)) {
                return Err(invalid(
                    "messages",
                    "every message needs a role: system, developer, user, assistant or tool",
                ));
            }
            match m.get("content") {
                None | Some(Value::Null | Value::String(_) | Value::Array(_)) => {}
                Some(_) => {
                    return Err(invalid(
                        "messages",
                        "content must be a string or an array of parts",
                    ))
                }
            }
        }
        let stream = match body.remove("stream") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => b,
            Some(_) => return Err(invalid("stream", "must be a boolean")),
        };
        let mut max_tokens = None;
        for field in ["max_tokens", "max_completion_tokens"] {
            match body.remove(field) {
                None | Some(Value::Null) => {}
                Some(v) => match v.as_i64() {
                    Some(t) if (1..=1_000_000).contains(&t) => {
                        max_tokens = Some(max_tokens.map_or(t, |m: i64| m.min(t)));
                    }
                    _ => {
                        return Err(invalid(
                            "max_tokens",
                            "must be an integer from 1 to 1000000",
                        ))
                    }
                },
            }
        }
        let n = match body.remove("n") {
            None | Some(Value::Null) => 1,
            Some(v) => match v.as_i64() {
                Some(n) if (1..=8).contains(&n) => n,
                _ => return Err(invalid("n", "must be an integer from 1 to 8")),
            },
        };
        // Usage always comes in the final chunk; what the client asked here changes nothing.
        if !matches!(
            body.remove("stream_options"),
            None | Some(Value::Null | Value::Object(_))
        ) {
            return Err(invalid("stream_options", "must be an object"));
        }
        let mut passthrough = Map::new();
        for (k, v) in body {
            if !PASSTHROUGH.contains(&k.as_str()) {
                return Err(DomainError::Invalid {
                    field: "body",
                    reason: format!("unsupported field {k:?}"),
                });
            }
            passthrough.insert(k, v);
        }
        Ok(Self {
            agent,
            messages,
            stream,
            max_tokens,
            n,
            passthrough,
        })
    }
}

/// The answer of a run, with `model` naming the agent the client asked for.
pub enum ChatOutput {
    /// A `chat.completion` object's JSON text (its `usage` the provider's figures).
    Complete(Bytes),
    /// Server-sent events, each a whole `data: ...\n\n` frame: `chat.completion.chunk`
    /// objects in order, the last one carrying `usage`, then `data: [DONE]`; or, once
    /// something failed, an error event (`{"error": {...}}`) last. The channel closes after
    /// the last frame.
    Stream(mpsc::Receiver<Bytes>),
}

/// The length of `v` serialized as JSON, counted without building the text.
fn json_len(v: &Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut n = Count(0);
    serde_json::to_writer(&mut n, v).map_or(usize::MAX, |()| n.0)
}

/// What a run calls: the agent, its provider, the provider's secret.
struct Target {
    agent: Agent,
    provider: Provider,
    secret: Zeroizing<String>,
    /// A shared provider: the plans that grant it (checked against the key's plan per run).
    granted_to: Option<Vec<String>>,
    /// The provider's base URL, parsed once (or why it is not a URL), and its host.
    base: Result<Url, String>,
    host: String,
}

/// Cached targets: when each was read, and the store's configuration generation then.
type TargetCache = HashMap<(TenantId, String), (Instant, u64, Arc<Target>)>;

/// The runtime plane.
#[derive(Clone)]
pub struct Runtime {
    control: ControlPlane,
    upstreams: Arc<Upstreams>,
    quotas: Quotas,
    limits: Limits,
    /// Plans never change once created: their limits are cached.
    plans: Arc<Mutex<HashMap<PlanId, PlanLimits>>>,
    targets: Arc<Mutex<TargetCache>>,
    cfg: RuntimeConfig,
}

struct Prepared {
    agent: Agent,
    provider_name: String,
    target: UpstreamTarget,
    body: Value,
    reservation: Reservation,
    permit: RunPermit,
    /// The prompt's reserved bound, charged when the provider reports no usage.
    prompt_estimate: i64,
}

impl Runtime {
    pub fn new(
        control: ControlPlane,
        upstreams: Upstreams,
        quotas: Quotas,
        cfg: RuntimeConfig,
    ) -> Self {
        Self {
            control,
            upstreams: Arc::new(upstreams),
            quotas,
            limits: Limits::default(),
            plans: Arc::default(),
            targets: Arc::default(),
            cfg,
        }
    }

    pub fn quotas(&self) -> &Quotas {
        &self.quotas
    }

    /// The agent, its provider and the provider's opened secret, cached until they change
    /// (or for `config_cache` at most).
    async fn target(&self, ctx: &TenantCtx, agent_ref: &str) -> Result<Arc<Target>, RunError> {
        let key = (ctx.tenant_id(), agent_ref.to_owned());
        let ttl = self.cfg.config_cache;
        let store = self.control.store();
        if let Some((at, read_at, t)) = self.targets.lock().ok().and_then(|m| m.get(&key).cloned())
        {
            if at.elapsed() < ttl && !store.config_changed_since(ctx.tenant_id(), read_at) {
                return Ok(t);
            }
        }
        // Taken before reading: a change committed meanwhile makes what is read stale at once.
        let read_at = store.config_generation();
        let agent = match self.control.agent_by_ref(ctx, agent_ref).await {
            Ok(a) => a,
            Err(ControlError::NotFound(_)) => {
                return Err(RunError::UnknownAgent(agent_ref.to_owned()))
            }
            Err(e) => return Err(e.into()),
        };
        let (provider, secret, granted_to) = self
            .control
            .provider_target(ctx, &agent.provider_id.to_string())
            .await?;
        let base =
            Url::parse(&provider.base_url).map_err(|e| format!("the base URL is not a URL: {e}"));
        let host = agentplane_control::provider_host(&provider);
        let target = Arc::new(Target {
            agent,
            provider,
            secret: Zeroizing::new(String::from_utf8_lossy(&secret).into_owned()),
            granted_to,
            base,
            host,
        });
        if !ttl.is_zero() {
            if let Ok(mut m) = self.targets.lock() {
                if m.len() >= 10_000 {
                    m.clear();
                }
                m.insert(key, (Instant::now(), read_at, target.clone()));
            }
        }
        Ok(target)
    }

    async fn plan_limits(&self, id: &PlanId) -> Result<PlanLimits, RunError> {
        if let Some(l) = self.plans.lock().ok().and_then(|p| p.get(id).copied()) {
            return Ok(l);
        }
        let plan = self.control.get_plan(id.as_str()).await?;
        if let Ok(mut p) = self.plans.lock() {
            p.insert(id.clone(), plan.limits);
        }
        Ok(plan.limits)
    }

    /// Runs `input` for the key's tenant.
    pub async fn chat(
        &self,
        ctx: &TenantCtx,
        key: &VerifiedApiKey,
        mut input: ChatInput,
        trace: TraceContext,
    ) -> Result<ChatOutput, RunError> {
        let started = Instant::now();
        // Boxed: the handler's future holds what `chat` holds for the whole run, and what
        // preparing needs is needed only briefly.
        let p = Box::pin(self.prepare(ctx, key, &mut input)).await?;
        let run = Run {
            runtime: self.clone(),
            ctx: ctx.clone(),
            agent_ref: input.agent,
            prepared: p,
            trace,
            started,
        };
        if input.stream {
            let (tx, rx) = mpsc::channel(64);
            let (first_tx, first_rx) = oneshot::channel();
            run.spawn_stream(tx, first_tx);
            // The first event tells whether the provider accepted the call: before it, a
            // failure is an HTTP error; after it, an error event in the stream.
            match first_rx.await {
                Ok(Ok(())) => Ok(ChatOutput::Stream(rx)),
                Ok(Err(e)) => Err(e),
                Err(_) => Err(RunError::Metering("the run ended unexpectedly".into())),
            }
        } else {
            // Driven here (no hop to another task), and to completion even if the client goes
            // away: the handler's future dropped, the run goes on in a task of its own.
            run.detached_complete().await.map(ChatOutput::Complete)
        }
    }

    async fn prepare(
        &self,
        ctx: &TenantCtx,
        key: &VerifiedApiKey,
        input: &mut ChatInput,
    ) -> Result<Prepared, RunError> {
        let target = self.target(ctx, &input.agent).await?;
        let (agent, provider) = (&target.agent, &target.provider);
        if !key.scopes.allows_agent(agent.id) || !key.scopes.allows_model(&agent.model) {
            return Err(RunError::UnknownAgent(input.agent.clone()));
        }
        // A shared provider follows the plan of this very request (a downgrade applies now).
        if let Some(plans) = &target.granted_to {
            if !plans.iter().any(|p| p == key.plan_id.as_str()) {
                return Err(RunError::Policy(format!(
                    "the tenant's plan does not include the shared provider {}",
                    provider.name
                )));
            }
        }
        // The plan's limits come first: a refused request (below) still counts against the
        // rate, so a client cannot flood the audit trail with residency refusals.
        let limits = self.plan_limits(&key.plan_id).await?;
        let permit = self.limits.admit(
            ctx.tenant_id(),
            limits.requests_per_minute,
            limits.max_concurrent_runs,
        )?;
        if self
            .control
            .check_residency(ctx, &key.region, provider, &target.host)
            .await?
            .is_err()
        {
            return Err(RunError::Residency {
                region: key.region.clone(),
                host: target.host.clone(),
            });
        }
        let agent_max = agent
            .params
            .max_tokens
            .unwrap_or(self.cfg.default_max_tokens);
        let max_tokens = input.max_tokens.map_or(agent_max, |m| m.min(agent_max));
        let mut messages = Vec::with_capacity(input.messages.len() + 1);
        if !agent.system_prompt.is_empty() {
            messages.push(json!({"role": "system", "content": agent.system_prompt}));
        }
        messages.append(&mut input.messages);
        let prompt = Value::Array(messages);
        let prompt_bytes = json_len(&prompt);
        let tokens = reserve_tokens(prompt_bytes, max_tokens, input.n);
        let reservation = self
            .quotas
            .admit(
                ctx,
                Amount::new(limits.monthly_messages, limits.monthly_tokens),
                tokens,
            )
            .await?;
        let secret = target.secret.clone();
        let azure = provider.kind == ProviderKind::AzureOpenai
            || agentplane_core::residency::is_azure_host(&target.host);
        if let Err(e) = self
            .control
            .check_identity_host(&provider.auth, &provider.base_url)
        {
            return Err(RunError::Policy(e.to_string()));
        }
        let auth = match provider.auth.clone() {
            ProviderAuth::ApiKey if azure && !self.cfg.allow_api_key_fallback => {
                return Err(RunError::Policy(format!(
                    "provider {:?} authenticates to Azure with an API key, which needs \
                     ALLOW_API_KEY_FALLBACK=true (refused in production: use a managed identity)",
                    provider.name
                )));
            }
            ProviderAuth::ApiKey => UpstreamAuth::ApiKey(secret),
            ProviderAuth::ManagedIdentity { client_id } => {
                UpstreamAuth::ManagedIdentity { client_id }
            }
            ProviderAuth::ClientCredentials {
                tenant,
                client_id,
                authority,
            } => UpstreamAuth::ClientCredentials {
                authority: authority.unwrap_or_default(),
                tenant,
                client_id,
                secret,
            },
        };
        let target = UpstreamTarget {
            kind: provider.kind,
            base_url: target
                .base
                .clone()
                .map_err(|e| RunError::Upstream(UpstreamError::Protocol(e)))?,
            api_version: provider.api_version.clone(),
            auth,
            cache_key: format!("{}/{}", ctx.tenant_id(), provider.id),
        };
        let mut body = std::mem::take(&mut input.passthrough);
        for (k, v) in [
            ("temperature", agent.params.temperature),
            ("top_p", agent.params.top_p),
        ] {
            if let (Some(v), false) = (v, body.contains_key(k)) {
                body.insert(k.into(), json!(v));
            }
        }
        body.insert("model".into(), json!(agent.model));
        body.insert("messages".into(), prompt);
        body.insert("max_tokens".into(), json!(max_tokens));
        if input.n != 1 {
            body.insert("n".into(), json!(input.n));
        }
        if input.stream {
            body.insert("stream".into(), json!(true));
            body.insert("stream_options".into(), json!({"include_usage": true}));
        }
        Ok(Prepared {
            agent: agent.clone(),
            provider_name: provider.name.clone(),
            target,
            body: Value::Object(body),
            reservation,
            permit,
            prompt_estimate: i64::try_from(prompt_bytes).unwrap_or(i64::MAX),
        })
    }
}

/// One run in flight, owned by its task.
struct Run {
    runtime: Runtime,
    ctx: TenantCtx,
    agent_ref: String,
    prepared: Prepared,
    trace: TraceContext,
    started: Instant,
}

/// `obj` with `model` naming the agent, as one server-sent event (`data: ...\n\n`).
fn event(obj: &[u8], agent_ref: &str) -> Result<(Vec<u8>, Seen), UpstreamError> {
    let mut frame = Vec::with_capacity(obj.len() + agent_ref.len() + 20);
    frame.extend_from_slice(b"data: ");
    let seen = relabel(obj, agent_ref, &mut frame).map_err(UpstreamError::Protocol)?;
    frame.extend_from_slice(b"\n\n");
    Ok((frame, seen))
}

/// Sends `frame` to the client, forgetting a client that has gone.
async fn send_frame(client: &mut Option<mpsc::Sender<Bytes>>, frame: Vec<u8>) {
    if let Some(c) = client {
        if c.send(Bytes::from(frame)).await.is_err() {
            *client = None;
        }
    }
}

/// `v` as one server-sent event, appended to `frame`.
fn push_event(frame: &mut Vec<u8>, v: &Value) {
    frame.extend_from_slice(b"data: ");
    // Writing values to a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *frame, v);
    frame.extend_from_slice(b"\n\n");
}

const DONE: &[u8] = b"data: [DONE]\n\n";

impl Run {
    // The run's future is made outside `Runtime::chat`: a future built inside an async fn,
    // even when moved out at once, takes room in that fn's state for as long as it is
    // suspended.
    fn detached_complete(self) -> Detached<impl Future<Output = Result<Bytes, RunError>>> {
        Detached(Some(Box::pin(self.complete())))
    }

    fn spawn_stream(self, tx: mpsc::Sender<Bytes>, first: oneshot::Sender<Result<(), RunError>>) {
        tokio::spawn(self.stream(tx, first));
    }

    fn record(&self, status: &str, tokens: (i64, i64)) -> UsageRecord {
        UsageRecord {
            id: UsageRecordId::new(),
            tenant_id: self.ctx.tenant_id(),
            ts: Timestamp::now(),
            agent_id: Some(self.prepared.agent.id.to_string()),
            model: self.prepared.agent.model.clone(),
            provider: self.prepared.provider_name.clone(),
            tokens_in: tokens.0,
            tokens_out: tokens.1,
            latency_ms: i64::try_from(self.started.elapsed().as_millis()).unwrap_or(i64::MAX),
            status: status.to_owned(),
            trace_id: Some(self.trace.trace_id_hex()),
        }
    }

    /// Settles the reservation: `tokens` is `None` when the provider did no work.
    ///
    /// The run is taken apart before the future: while it waits for its settlement, it holds
    /// the reservation and the record only (a run spends most of its time under load there).
    fn settle(
        self,
        status: &str,
        tokens: Option<(i64, i64)>,
    ) -> impl std::future::Future<Output = Result<(), RunError>> + Send + 'static {
        let record = self.record(status, tokens.unwrap_or((0, 0)));
        let Prepared {
            reservation,
            permit,
            ..
        } = self.prepared;
        async move {
            let res = reservation
                .settle(record, tokens.map(|(i, o)| i + o))
                .await
                .map_err(RunError::Metering);
            drop(permit);
            res
        }
    }

    async fn complete(self) -> Result<Bytes, RunError> {
        let adapter = self.runtime.upstreams.adapter(self.prepared.target.kind);
        let res = adapter
            .chat(&self.prepared.target, &self.prepared.body, &self.trace)
            .await
            .and_then(|obj| {
                let mut out = Vec::with_capacity(obj.as_bytes().len() + self.agent_ref.len() + 12);
                let seen = relabel(obj.as_bytes(), &self.agent_ref, &mut out)
                    .map_err(UpstreamError::Protocol)?;
                Ok((out, seen))
            });
        let (status, tokens, answer) = match res {
            Ok((out, seen)) => {
                // A provider that reports no usage is charged what was reserved.
                let tokens = seen
                    .usage
                    .unwrap_or((self.prepared.reservation.held_tokens(), 0));
                ("ok", Some(tokens), Ok(Bytes::from(out)))
            }
            Err(e) => ("upstream_error", None, Err(e.into())),
        };
        self.settle(status, tokens).await?;
        answer
    }

    /// Streams the provider's chunks to `tx`. Keeps reading the provider when the client has
    /// gone, so that the run is settled with the provider's final usage.
    async fn stream(self, tx: mpsc::Sender<Bytes>, first: oneshot::Sender<Result<(), RunError>>) {
        let adapter = self.runtime.upstreams.adapter(self.prepared.target.kind);
        let mut events = match adapter
            .chat_stream(&self.prepared.target, &self.prepared.body, &self.trace)
            .await
        {
            Ok(s) => s,
            Err(e) => {
                let settled = self.settle("upstream_error", None).await;
                let _ = first.send(Err(settled.err().unwrap_or(e.into())));
                return;
            }
        };
        let _ = first.send(Ok(()));
        let mut client = Some(tx);
        let mut usage = None;
        let mut usage_chunk = None;
        let mut chunks = 0i64;
        let mut failure = None;
        // The provider sent an error event: no `[DONE]` follows it.
        let mut errored = false;
        while let Some(ev) = events.next().await {
            let (frame, seen) = match ev.and_then(|ev| match ev {
                StreamEvent::Chunk(chunk) => event(chunk.as_bytes(), &self.agent_ref).map(Some),
                StreamEvent::Done => Ok(None),
            }) {
                Ok(Some(relabelled)) => relabelled,
                Ok(None) => break,
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            };
            chunks += 1;
            errored |= seen.error;
            // The last chunk carrying usage goes out after the settlement. A provider may
            // report usage in every chunk, content included: a held chunk goes out first
            // when another one follows it.
            if let Some(held) = usage_chunk.take() {
                send_frame(&mut client, held).await;
            }
            match seen.usage {
                Some(u) => {
                    usage = Some(u);
                    usage_chunk = Some(frame);
                }
                None => send_frame(&mut client, frame).await,
            }
        }
        // Without the provider's figures (it failed mid-stream, or reports no usage), the
        // prompt is charged its reserved bound and the completion a token a chunk.
        let estimate = (self.prepared.prompt_estimate, chunks);
        let (status, tokens) = match (&failure, usage, &client) {
            (Some(_), u, _) => ("upstream_error", u.unwrap_or(estimate)),
            (None, Some(u), Some(_)) => ("ok", u),
            (None, Some(u), None) => ("client_closed", u),
            (None, None, c) => (if c.is_some() { "ok" } else { "client_closed" }, estimate),
        };
        let agent_ref = self.agent_ref.clone();
        let settled = self.settle(status, Some(tokens)).await;
        let Some(c) = client else { return };
        let error = |e: &dyn std::fmt::Display, code| json!({"error": {"message": e.to_string(), "type": "api_error", "code": code}});
        let mut last = Vec::new();
        match (failure, settled) {
            (_, Err(e)) => push_event(&mut last, &error(&e, "metering_failed")),
            (Some(e), Ok(())) => push_event(&mut last, &error(&e, "upstream_error")),
            (None, Ok(())) => {
                match usage_chunk {
                    Some(frame) => last = frame,
                    None => push_event(
                        &mut last,
                        &json!({"object": "chat.completion.chunk", "model": agent_ref,
                            "choices": [], "usage": {"prompt_tokens": tokens.0,
                            "completion_tokens": tokens.1, "total_tokens": tokens.0 + tokens.1}}),
                    ),
                }
                if !errored {
                    last.extend_from_slice(DONE);
                }
            }
        }
        let _ = c.send(Bytes::from(last)).await;
    }
}

/// A boxed future polled in place that, dropped before it is done, goes on in a task of its
/// own (the box moves, not the future).
struct Detached<F>(Option<Pin<Box<F>>>)
where
    F: Future + Send + 'static,
    F::Output: Send;

impl<F> Future for Detached<F>
where
    F: Future + Send + 'static,
    F::Output: Send,
{
    type Output = F::Output;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let Some(fut) = self.0.as_mut() else {
            return Poll::Pending;
        };
        let out = std::task::ready!(fut.as_mut().poll(cx));
        self.0 = None;
        Poll::Ready(out)
    }
}

impl<F> Drop for Detached<F>
where
    F: Future + Send + 'static,
    F::Output: Send,
{
    fn drop(&mut self) {
        if let Some(fut) = self.0.take() {
            tokio::spawn(fut);
        }
    }
}

/// Seconds until the next calendar month (UTC), when monthly quotas start again.
pub fn until_next_period(now: Timestamp) -> Duration {
    let ms = now.millis();
    let next = now.next_period_start().millis();
    Duration::from_millis(u64::try_from(next - ms).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_prompt_is_measured_as_its_json_text() {
        let prompt = json!([
            {"role": "system", "content": "Be \"terse\".\n"},
            {"role": "user", "content": "héllo \u{1F600} \\ \u{7}"},
        ]);
        assert_eq!(
            json_len(&prompt),
            serde_json::to_vec(&prompt).unwrap().len()
        );
        assert_eq!(json_len(&json!([])), 2);
    }
}
