//! Exact quotas at gateway speed (invariant 5).
//!
//! Each server process holds, per tenant and month, a lease: a share of the tenant's quota that
//! the store granted by a conditional update of the tenant's counter row, so that the leases of
//! all processes together never exceed the plan. Runs are admitted from the lease in memory;
//! a finished run is settled through the settlement queue, which writes the usage record,
//! decrements the lease and increments the counter's `used` in one transaction, batching the
//! runs that finish together (group commit), and answers each run once its record is durable.
//! A run that finds the queue idle writes it itself, so that a lone run's settlement costs no
//! hop to another task; while one batch is written the next one gathers, and a task of its own
//! writes it.
//!
//! A lease running low is topped up in the background (a refill), so that in steady state no
//! run waits for a grant; a run that finds the lease short still waits for one.
//!
//! A lease the process stops needing (idle, plan changed, shutdown) is returned through the
//! same ordered queue, after the settlements it covers. The keeper task renews live leases; a
//! lease whose process died stops being renewed, expires, and is returned by the next grant for
//! that tenant: a crash costs the tenant that lease's unspent share until then, never exactness.

use agentplane_core::authz::{PlatformCtx, TenantCtx};
use agentplane_core::quota::{Amount, Exhausted};
use agentplane_core::time::Timestamp;
use agentplane_core::usage::UsageRecord;
use agentplane_core::TenantId;
use agentplane_store::{LeaseRequest, QuotaOp, Store, StoreError};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

/// How leases live.
#[derive(Clone, Copy, Debug)]
pub struct LeaseConfig {
    /// A lease not renewed for this long expires (and the process stops admitting from it
    /// after two thirds of it).
    pub ttl: Duration,
    /// A lease with no run in flight for this long is returned.
    pub idle: Duration,
}

impl Default for LeaseConfig {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(30),
            idle: Duration::from_secs(2),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum QuotaError {
    #[error("{} quota exhausted", .0.quota.as_str())]
    Exhausted(Exhausted),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Grants kept being taken by concurrent runs (not seen in practice; retry).
    #[error("the quota is contended; retry")]
    Busy,
}

type Reply = oneshot::Sender<Result<(), String>>;

/// At most this many operations go into one settlement transaction.
const MAX_BATCH: usize = 512;

/// The settlement queue: operations in order, each answered (if asked) once written; a reply
/// alone asks for an answer once everything before it is written.
struct Queue {
    state: Mutex<QueueState>,
}

#[derive(Default)]
struct QueueState {
    entries: Vec<(Option<QuotaOp>, Option<Reply>)>,
    /// A batch is being written: whoever writes it takes the next one too.
    writing: bool,
}

impl Queue {
    /// Adds an entry; answers whether the caller must write the queue (nobody is).
    fn push(&self, op: Option<QuotaOp>, reply: Option<Reply>) -> bool {
        let mut q = lock(&self.state);
        q.entries.push((op, reply));
        !std::mem::replace(&mut q.writing, true)
    }
}

/// The process's quota leases. Cheap to clone.
#[derive(Clone)]
pub struct Quotas {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn Store>,
    holder: String,
    cfg: LeaseConfig,
    pools: Mutex<HashMap<(TenantId, String), Arc<Pool>>>,
    queue: Queue,
    stop: CancellationToken,
}

/// One tenant-month's lease in this process.
struct Pool {
    state: Mutex<PoolState>,
    /// One grant at a time per pool: the runs waiting for it are admitted from its result.
    granting: tokio::sync::Mutex<()>,
}

struct PoolState {
    lease_id: String,
    /// Granted and not held by a run in flight nor consumed.
    avail: Amount,
    in_flight: u32,
    /// The plan limits the lease was granted under: a plan change starts a new lease.
    limit: Amount,
    has_lease: bool,
    valid_until: Instant,
    last_active: Instant,
    /// What the last grant added: below a quarter of it left, the lease is refilled.
    block: Amount,
    refilling: bool,
}

impl PoolState {
    fn new(limit: Amount) -> Self {
        let now = Instant::now();
        Self {
            lease_id: uuid_like(),
            avail: Amount::ZERO,
            in_flight: 0,
            limit,
            has_lease: false,
            valid_until: now,
            last_active: now,
            block: Amount::ZERO,
            refilling: false,
        }
    }

    /// Whether less than a quarter of the last grant is left.
    fn low(&self) -> bool {
        self.avail.messages * 4 < self.block.messages || self.avail.tokens * 4 < self.block.tokens
    }
}

fn uuid_like() -> String {
    let mut b = [0u8; 16];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut b);
    hex::encode(b)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a pool lock leaves plain counters behind: still consistent enough
    // to go on (the lease in the store is the authority).
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A run's hold on its tenant's lease: one message and the tokens it may use. Settle it with
/// the run's figures; dropped unsettled, the hold goes back to the lease.
pub struct Reservation {
    quotas: Quotas,
    pool: Arc<Pool>,
    ctx: TenantCtx,
    period: String,
    lease_id: String,
    held: Amount,
    /// The plan's limits when the run was admitted (for the 80% / 100% notifications).
    limit: Amount,
    settled: bool,
}

impl Reservation {
    pub fn held_tokens(&self) -> i64 {
        self.held.tokens
    }

    /// Records the run (its usage record) and what it consumed: `tokens` when it ran (one
    /// message and those tokens), `None` when it failed before the provider did any work
    /// (nothing is consumed). Answers once the record is durable.
    pub async fn settle(mut self, record: UsageRecord, tokens: Option<i64>) -> Result<(), String> {
        self.settled = true;
        let consumed = tokens.map_or(Amount::ZERO, |t| Amount::new(1, t.max(0)));
        self.give_back(consumed);
        let op = QuotaOp::Settle {
            ctx: self.ctx.clone(),
            record,
            period: self.period.clone(),
            lease_id: self.lease_id.clone(),
            consumed,
            limit: self.limit,
        };
        self.quotas.submit(Some(op)).await
    }

    fn give_back(&self, consumed: Amount) {
        let mut s = lock(&self.pool.state);
        s.in_flight = s.in_flight.saturating_sub(1);
        s.last_active = Instant::now();
        if s.lease_id == self.lease_id {
            s.avail.messages += self.held.messages - consumed.messages;
            s.avail.tokens = (s.avail.tokens + self.held.tokens - consumed.tokens).max(0);
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.settled {
            self.give_back(Amount::ZERO);
        }
    }
}

impl Quotas {
    /// Starts the keeper (which renews and returns leases until [`Quotas::shutdown`]).
    pub fn start(store: Arc<dyn Store>, cfg: LeaseConfig) -> Self {
        let quotas = Self {
            inner: Arc::new(Inner {
                store,
                holder: uuid_like(),
                cfg,
                pools: Mutex::new(HashMap::new()),
                queue: Queue {
                    state: Mutex::default(),
                },
                stop: CancellationToken::new(),
            }),
        };
        tokio::spawn(keeper(quotas.clone()));
        quotas
    }

    /// Queues `op` (or, with `None`, nothing: a flush) and answers once it and everything
    /// before it is written. Writes the queue itself when nobody is writing it.
    async fn submit(&self, op: Option<QuotaOp>) -> Result<(), String> {
        let (tx, rx) = oneshot::channel();
        if self.inner.queue.push(op, Some(tx)) {
            // Boxed: a run's future would otherwise keep room for the writer's state (batch,
            // retry timer) for as long as the run lives.
            Box::pin(self.write_queue(true)).await;
        }
        rx.await
            .unwrap_or_else(|_| Err("the settlement was abandoned".into()))
    }

    /// Queues `op` without waiting for it (from code that cannot wait).
    fn submit_detached(&self, op: QuotaOp) {
        if self.inner.queue.push(Some(op), None) {
            self.spawn_writer();
        }
    }

    fn spawn_writer(&self) {
        let quotas = self.clone();
        tokio::spawn(async move { quotas.write_queue(false).await });
    }

    /// Writes the queue, batch after batch, for as long as it has entries; the caller holds
    /// the writer's role (`Queue::push` answered true). `once`: a run writing its own
    /// settlement writes one batch and hands what gathered meanwhile to a task of its own,
    /// so that its answer never waits for other runs' batches.
    async fn write_queue(&self, once: bool) {
        // Dropped before it ends (the task was cancelled), the role goes to a new task.
        struct Role<'a>(&'a Quotas, bool);
        impl Drop for Role<'_> {
            fn drop(&mut self) {
                if self.1 && tokio::runtime::Handle::try_current().is_ok() {
                    self.0.spawn_writer();
                }
            }
        }
        let mut role = Role(self, true);
        let mut ops = Vec::new();
        let mut replies = Vec::new();
        let mut wrote = false;
        loop {
            {
                let mut q = lock(&self.inner.queue.state);
                if q.entries.is_empty() {
                    q.writing = false;
                    role.1 = false;
                    return;
                }
                if wrote && once {
                    drop(q);
                    role.1 = false;
                    self.spawn_writer();
                    return;
                }
                let mut taken = 0;
                let n = q
                    .entries
                    .iter()
                    .take_while(|(op, _)| {
                        taken += usize::from(op.is_some());
                        taken <= MAX_BATCH
                    })
                    .count();
                for (op, reply) in q.entries.drain(..n) {
                    ops.extend(op);
                    replies.extend(reply);
                }
            }
            let answer = write_batch(self.inner.store.as_ref(), &ops).await;
            for reply in replies.drain(..) {
                let _ = reply.send(answer.clone());
            }
            ops.clear();
            wrote = true;
        }
    }

    /// Returns every lease, after writing every settlement queued before.
    pub async fn shutdown(&self) {
        self.inner.stop.cancel();
        self.keep(true).await;
        self.flush().await;
    }

    fn pool(&self, tenant: TenantId, period: &str, limit: Amount) -> Arc<Pool> {
        let mut pools = lock(&self.inner.pools);
        pools
            .entry((tenant, period.to_owned()))
            .or_insert_with(|| {
                Arc::new(Pool {
                    state: Mutex::new(PoolState::new(limit)),
                    granting: tokio::sync::Mutex::new(()),
                })
            })
            .clone()
    }

    /// Admits a run that may use `tokens`: from the lease in memory, or after a grant.
    pub async fn admit(
        &self,
        ctx: &TenantCtx,
        limit: Amount,
        tokens: i64,
    ) -> Result<Reservation, QuotaError> {
        let period = Timestamp::now().period();
        let pool = self.pool(ctx.tenant_id(), &period, limit);
        let need = Amount::new(1, tokens);
        if let Some(r) = self.take(ctx, &period, &pool, limit, need) {
            return Ok(r);
        }
        let _granting = pool.granting.lock().await;
        // Runs admitted from memory meanwhile may take what a grant added: grant again (a grant
        // that finds nothing left answers which quota is exhausted).
        for _ in 0..8 {
            if let Some(r) = self.take(ctx, &period, &pool, limit, need) {
                return Ok(r);
            }
            self.grant(ctx, &period, &pool, limit, need).await?;
        }
        self.take(ctx, &period, &pool, limit, need)
            .ok_or(QuotaError::Busy)
    }

    /// Adds to the pool's lease what the store grants for `need` (restarting the lease first if
    /// the plan changed or it may have expired).
    async fn grant(
        &self,
        ctx: &TenantCtx,
        period: &str,
        pool: &Arc<Pool>,
        limit: Amount,
        need: Amount,
    ) -> Result<(), QuotaError> {
        let (lease_id, top_up) = {
            let mut s = lock(&pool.state);
            if s.limit != limit || Instant::now() >= s.valid_until {
                self.restart(ctx, period, &mut s, limit);
            }
            let top_up = Amount::new(
                (need.messages - s.avail.messages).max(0),
                (need.tokens - s.avail.tokens).max(0),
            );
            (s.lease_id.clone(), top_up)
        };
        let started = Instant::now();
        let now = Timestamp::now();
        let req = LeaseRequest {
            period: period.to_owned(),
            lease_id: lease_id.clone(),
            holder: self.inner.holder.clone(),
            need: top_up,
            limit,
            now,
            expires_at: now.plus_millis(millis(self.inner.cfg.ttl)),
        };
        let granted = self
            .inner
            .store
            .grant_quota(ctx, &req)
            .await?
            .map_err(QuotaError::Exhausted)?;
        let mut s = lock(&pool.state);
        if s.lease_id == lease_id {
            s.avail.messages += granted.messages;
            s.avail.tokens += granted.tokens;
            s.block = granted;
            s.has_lease = true;
            s.valid_until = started + self.inner.cfg.ttl * 2 / 3;
        }
        Ok(())
    }

    fn take(
        &self,
        ctx: &TenantCtx,
        period: &str,
        pool: &Arc<Pool>,
        limit: Amount,
        need: Amount,
    ) -> Option<Reservation> {
        let mut s = lock(&pool.state);
        let usable = s.has_lease && s.limit == limit && Instant::now() < s.valid_until;
        if !usable || s.avail.messages < need.messages || s.avail.tokens < need.tokens {
            return None;
        }
        s.avail.messages -= need.messages;
        s.avail.tokens -= need.tokens;
        s.in_flight += 1;
        s.last_active = Instant::now();
        if s.low() && !s.refilling {
            s.refilling = true;
            tokio::spawn(self.clone().refill(
                ctx.clone(),
                period.to_owned(),
                pool.clone(),
                limit,
                need,
            ));
        }
        Some(Reservation {
            quotas: self.clone(),
            pool: pool.clone(),
            ctx: ctx.clone(),
            period: period.to_owned(),
            lease_id: s.lease_id.clone(),
            held: need,
            limit,
            settled: false,
        })
    }

    /// Tops the lease up in the background (a run waiting for a grant meanwhile is admitted
    /// from it). A refused grant (the quota is nearly spent) leaves the lease as it is.
    async fn refill(
        self,
        ctx: TenantCtx,
        period: String,
        pool: Arc<Pool>,
        limit: Amount,
        need: Amount,
    ) {
        {
            let _granting = pool.granting.lock().await;
            let still_low = {
                let s = lock(&pool.state);
                s.has_lease && s.limit == limit && s.low()
            };
            if still_low && !self.inner.stop.is_cancelled() {
                match self.grant(&ctx, &period, &pool, limit, need).await {
                    Ok(()) | Err(QuotaError::Exhausted(_)) => {}
                    Err(e) => tracing::warn!(error = %e, "quota lease not refilled"),
                }
            }
        }
        lock(&pool.state).refilling = false;
    }

    /// Returns the pool's lease (after the settlements already queued) and starts a new one.
    fn restart(&self, ctx: &TenantCtx, period: &str, s: &mut PoolState, limit: Amount) {
        if s.has_lease {
            let op = QuotaOp::Release {
                ctx: ctx.clone(),
                period: period.to_owned(),
                lease_id: s.lease_id.clone(),
            };
            self.submit_detached(op);
        }
        let in_flight = s.in_flight;
        *s = PoolState::new(limit);
        s.in_flight = in_flight;
    }

    /// Returns idle leases and renews the others.
    async fn keep(&self, stopping: bool) {
        let now = Instant::now();
        let pools: Vec<((TenantId, String), Arc<Pool>)> = lock(&self.inner.pools)
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut held = false;
        for ((tenant, period), pool) in &pools {
            let Ok(_granting) = pool.granting.try_lock() else {
                held = true;
                continue;
            };
            let mut s = lock(&pool.state);
            let idle = s.in_flight == 0 && now.duration_since(s.last_active) >= self.inner.cfg.idle;
            if s.has_lease && (idle || stopping) {
                let ctx = PlatformCtx::for_system("quota-keeper").tenant(*tenant);
                let limit = s.limit;
                self.restart(&ctx, period, &mut s, limit);
            }
            held |= s.has_lease;
        }
        lock(&self.inner.pools).retain(|_, p| {
            let s = lock(&p.state);
            s.has_lease
                || s.in_flight > 0
                || now.duration_since(s.last_active) < Duration::from_secs(60)
        });
        if held && !stopping {
            let expires = Timestamp::now().plus_millis(millis(self.inner.cfg.ttl));
            let platform = PlatformCtx::for_system("quota-keeper");
            match self
                .inner
                .store
                .renew_quota_leases(&platform, &self.inner.holder, expires)
                .await
            {
                Ok(()) => {
                    for (_, pool) in &pools {
                        let mut s = lock(&pool.state);
                        if s.has_lease {
                            s.valid_until = now + self.inner.cfg.ttl * 2 / 3;
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "quota leases not renewed"),
            }
        }
    }

    /// Waits until every queued settlement and release is written.
    pub async fn flush(&self) {
        let _ = self.submit(None).await;
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

async fn keeper(quotas: Quotas) {
    let cfg = quotas.inner.cfg;
    let every = (cfg.ttl / 3)
        .min(cfg.idle / 2)
        .max(Duration::from_millis(10));
    let stop = quotas.inner.stop.clone();
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => quotas.keep(false).await,
            () = stop.cancelled() => return,
        }
    }
}

/// Writes one settlement batch, trying three times.
async fn write_batch(store: &dyn Store, ops: &[QuotaOp]) -> Result<(), String> {
    if ops.is_empty() {
        return Ok(());
    }
    let mut attempt = 0u32;
    loop {
        match store.settle_quota(ops).await {
            Ok(()) => return Ok(()),
            Err(e) if attempt == 2 => {
                tracing::error!(error = %e, runs = ops.len(), "usage settlement failed");
                return Err(e.to_string());
            }
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(50 << attempt)).await;
                attempt += 1;
            }
        }
    }
}
