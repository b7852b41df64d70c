//! A database per region: [`RegionalStore`] keeps each tenant's rows in the database of its
//! region and the platform's own data (plans, shared providers, signing keys, the platform
//! audit chain) in the main one.
//!
//! Every database has the whole schema. A tenant lives in exactly one: its region's, or the
//! main database for a region given none. Plans, which tenants refer to, are copied into
//! every region's database (a plan never changes once created). An operation on a tenant
//! goes to its database; the few lookups made before the tenant is known (an API key, a
//! slug, a custom domain, a refresh token) ask each database in turn, and the database that
//! answered is remembered for that tenant. A tenant that moves to another region's database
//! (`relocate_tenant`, see `moves.rs`) is refused where it was (`StoreError::Moved`): the
//! router forgets what it remembered, finds the tenant again and repeats the call, which the
//! refusal came before.

use crate::exports::*;
use crate::identity::*;
use crate::moves::*;
use crate::*;
use agentplane_core::audit::Chain;
use agentplane_core::page::encode_cursor;
use agentplane_core::{InvitationId, SessionId};
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

/// A database: an index into [`RegionalStore::dbs`] (0: the main database).
type Db = usize;

pub struct RegionalStore {
    /// The main database first, then one per region that has its own.
    dbs: Vec<Arc<dyn Store>>,
    /// The regions that have a database of their own.
    regions: HashMap<String, Db>,
    /// Tenants whose database is known.
    tenants: RwLock<HashMap<TenantId, Db>>,
    /// The database that last answered for an API key's public id.
    keys: RwLock<HashMap<String, Db>>,
    /// Where the next job claim starts, so that no database's queue starves another's.
    next_claim: AtomicUsize,
    /// Each database's name: `main`, then the regions'.
    names: Vec<String>,
    /// Serialises tenant creations of this process (a slug is unique across databases).
    creating: tokio::sync::Mutex<()>,
}

/// Bounds each lookup map: when full it starts again (what it forgot is looked up again).
const MAX_REMEMBERED: usize = 100_000;

fn remember<K: Hash + Eq>(map: &RwLock<HashMap<K, Db>>, key: K, db: Db) {
    let mut m = map
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if m.len() >= MAX_REMEMBERED {
        m.clear();
    }
    m.insert(key, db);
}

fn recall<K, Q>(map: &RwLock<HashMap<Q, Db>>, key: &K) -> Option<Db>
where
    K: Hash + Eq + ?Sized,
    Q: Hash + Eq + std::borrow::Borrow<K>,
{
    map.read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .get(key)
        .copied()
}

/// Merges one page of each database (each sorted by `key`) into one page of `limit`.
fn merge_pages<T, K: Ord>(
    pages: Vec<Page<T>>,
    limit: u32,
    key: impl Fn(&T) -> K,
    cursor: impl Fn(&T) -> String,
) -> Page<T> {
    let more = pages.iter().any(|p| p.next_cursor.is_some());
    let mut items: Vec<T> = pages.into_iter().flat_map(|p| p.items).collect();
    items.sort_by_key(|t| key(t));
    let more = more || items.len() > limit as usize;
    items.truncate(limit as usize);
    let next_cursor = if more {
        items.last().map(|t| encode_cursor(&cursor(t)))
    } else {
        None
    };
    Page { items, next_cursor }
}

/// An import's batches, the first of which was read ahead to learn the tenant's region.
struct ReadAhead<'a> {
    first: Option<Batch>,
    rest: &'a mut dyn ImportSource,
}

impl ImportSource for ReadAhead<'_> {
    fn next_batch(&mut self) -> Result<Option<Batch>> {
        match self.first.take() {
            Some(b) => Ok(Some(b)),
            None => self.rest.next_batch(),
        }
    }
    fn exported_tenant(&self) -> Option<TenantId> {
        self.rest.exported_tenant()
    }
}

impl RegionalStore {
    /// `main` holds the platform's data and the tenants of the regions without a database
    /// of their own; `regions` pairs region names with their databases (of the main one's
    /// kind). Copies the main database's plans into each region's.
    pub async fn open(
        main: Arc<dyn Store>,
        regions: Vec<(String, Arc<dyn Store>)>,
    ) -> Result<Self> {
        let mut dbs = vec![main];
        let mut db_names = vec!["main".to_owned()];
        let mut names = HashMap::new();
        for (name, db) in regions {
            if db.backend() != dbs[0].backend() {
                return Err(StoreError::Config(format!(
                    "region {name}'s database is not of the main database's kind"
                )));
            }
            if names.insert(name.clone(), dbs.len()).is_some() {
                return Err(StoreError::Config(format!(
                    "region {name} has two databases"
                )));
            }
            dbs.push(db);
            db_names.push(name);
        }
        let store = Self {
            dbs,
            regions: names,
            tenants: RwLock::default(),
            keys: RwLock::default(),
            next_claim: AtomicUsize::new(0),
            names: db_names,
            creating: tokio::sync::Mutex::new(()),
        };
        store.copy_plans().await?;
        Ok(store)
    }

    /// Copies every plan of the main database into the region databases.
    async fn copy_plans(&self) -> Result<()> {
        let mut page = PageRequest::first(agentplane_core::page::MAX_LIMIT);
        loop {
            let plans = self.dbs[0].list_plans(&page).await?;
            for p in &plans.items {
                for db in &self.dbs[1..] {
                    db.copy_plan(p).await?;
                }
            }
            match plans.next_cursor {
                Some(c) => {
                    page.after = Some(
                        agentplane_core::page::decode_cursor(&c)
                            .map_err(|_| StoreError::InvalidCursor)?,
                    )
                }
                None => return Ok(()),
            }
        }
    }

    /// The database that keeps a region's tenants.
    fn db_of_region(&self, region: &str) -> Db {
        self.regions.get(region).copied().unwrap_or(0)
    }

    /// The database the tenant lives in; `None` if none has it. A copy still arriving counts
    /// only once its source let the tenant go.
    async fn find(&self, t: TenantId) -> Result<Option<Db>> {
        match recall(&self.tenants, &t) {
            Some(db) => Ok(Some(db)),
            None => self.find_anew(t).await,
        }
    }

    /// [`RegionalStore::find`], asking every database.
    async fn find_anew(&self, t: TenantId) -> Result<Option<Db>> {
        let mut arriving = None;
        for (i, db) in self.dbs.iter().enumerate() {
            match db.tenant_presence(t).await? {
                Presence::Here => {
                    remember(&self.tenants, t, i);
                    return Ok(Some(i));
                }
                Presence::Arriving => arriving = Some(i),
                Presence::Absent | Presence::MovedAway => {}
            }
        }
        Ok(arriving)
    }

    /// Whether the tenant lives in `db`: a copy still arriving there counts only once its
    /// source let the tenant go.
    async fn lives_in(&self, t: TenantId, db: Db) -> Result<bool> {
        Ok(match self.dbs[db].tenant_presence(t).await? {
            Presence::Arriving => self.find_anew(t).await? == Some(db),
            _ => true,
        })
    }

    /// Whether `res` says the tenant moved since this process looked it up: then every
    /// tenant is looked up anew (moves are rare), and the call is made again where the tenant
    /// is now. Safe: the refusal comes before the call did anything.
    fn moved<T>(&self, res: &Result<T>) -> bool {
        let moved = matches!(res, Err(StoreError::Moved(_)));
        if moved {
            self.forget_routes();
        }
        moved
    }

    fn forget_routes(&self) {
        self.tenants
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clear();
    }

    /// The tenant, looked up in every database.
    async fn get_tenant_anew(&self, id: TenantId) -> Result<Option<Tenant>> {
        match self.find(id).await? {
            Some(db) => self.dbs[db].get_tenant(id).await,
            None => Ok(None),
        }
    }

    /// Calls `call` on the tenant's database and, if the tenant moved meanwhile, once more on
    /// the one it is in now (see [`RegionalStore::moved`]).
    async fn on<'s, T, F>(
        &'s self,
        tenant: TenantId,
        call: impl Fn(&'s dyn Store) -> F,
    ) -> Result<T>
    where
        F: std::future::Future<Output = Result<T>>,
    {
        let first = call(self.of(tenant).await?).await;
        if !self.moved(&first) {
            return first;
        }
        call(self.of(tenant).await?).await
    }

    /// A database by name (`main` or a region's).
    fn db_named(&self, name: &str) -> Option<Db> {
        self.names.iter().position(|n| n == name)
    }

    /// The tenant's database; the main one for a tenant no database has (which then answers
    /// as for any unknown tenant).
    async fn of(&self, t: TenantId) -> Result<&dyn Store> {
        Ok(&*self.dbs[self.find(t).await?.unwrap_or(0)])
    }

    /// The first database's answer that is `Some`, remembering its database for the tenant
    /// `tenant_of` names; a copy still arriving in a database answers nothing there.
    async fn first<'a, T, F>(
        &'a self,
        ask: impl Fn(&'a dyn Store) -> F,
        tenant_of: impl Fn(&T) -> Option<TenantId>,
    ) -> Result<Option<T>>
    where
        F: std::future::Future<Output = Result<Option<T>>> + 'a,
    {
        for (i, db) in self.dbs.iter().enumerate() {
            if let Some(found) = ask(&**db).await? {
                match tenant_of(&found) {
                    Some(t) if !self.lives_in(t, i).await? => continue,
                    Some(t) => remember(&self.tenants, t, i),
                    None => {}
                }
                return Ok(Some(found));
            }
        }
        Ok(None)
    }

    /// Groups items by their tenant's database, keeping their order within each.
    async fn by_db<T: Clone>(
        &self,
        items: &[T],
        tenant_of: impl Fn(&T) -> TenantId,
    ) -> Result<Vec<(Db, Vec<T>)>> {
        let mut groups: Vec<(Db, Vec<T>)> = Vec::new();
        for it in items {
            let db = self.find(tenant_of(it)).await?.unwrap_or(0);
            match groups.iter_mut().find(|(d, _)| *d == db) {
                Some((_, g)) => g.push(it.clone()),
                None => groups.push((db, vec![it.clone()])),
            }
        }
        Ok(groups)
    }
}

#[async_trait]
impl Store for RegionalStore {
    fn backend(&self) -> Backend {
        self.dbs[0].backend()
    }
    fn shares_database(&self, a: &str, b: &str) -> bool {
        self.db_of_region(a) == self.db_of_region(b)
    }

    async fn relocate_tenant(
        &self,
        ctx: &TenantCtx,
        to: &str,
        audit: NewAuditEvent,
    ) -> Result<u64> {
        let t = ctx.tenant_id();
        let target = self.db_of_region(to);
        let mut source = None;
        for (i, db) in self.dbs.iter().enumerate() {
            if db.tenant_presence(t).await? == Presence::Here {
                source = Some(i);
            }
        }
        let mut moved = 0;
        match source {
            // Re-pinned already (a retried move), or a move within one database.
            Some(s) if s == target => {}
            Some(s) => {
                // The source streams to the target as it reads; it lets the tenant go only
                // once the target committed the copy.
                let (rows, incoming) = tokio::sync::mpsc::channel(4);
                let (done, arrived) = tokio::sync::oneshot::channel();
                let copy_in = async {
                    let res = self.dbs[target].move_in(ctx, incoming).await;
                    let _ = done.send(res.is_ok());
                    res
                };
                let (sent, loaded) =
                    tokio::join!(self.dbs[s].move_out(ctx, to, rows, arrived), copy_in);
                // The target's error first: the source's only says the target failed.
                let loaded = loaded?;
                let sent = sent?;
                if sent != loaded {
                    tracing::info!(tenant = %t, sent, loaded, "moved rows (a chain kept from an earlier stay is not copied again)");
                }
                moved = loaded;
            }
            // The source let it go already: the copy only has to be re-pinned.
            None => {}
        }
        self.dbs[target].arrived(ctx, to, audit).await?;
        self.forget_routes();
        remember(&self.tenants, t, target);
        Ok(moved)
    }

    fn database_of_region(&self, region: &str) -> String {
        match self.db_of_region(region) {
            0 => "main".to_owned(),
            _ => region.to_owned(),
        }
    }
    async fn ping(&self) -> Result<()> {
        for db in &self.dbs {
            db.ping().await?;
        }
        Ok(())
    }
    async fn list_plans(&self, page: &PageRequest) -> Result<Page<Plan>> {
        self.dbs[0].list_plans(page).await
    }
    async fn get_plan(&self, id: &PlanId) -> Result<Option<Plan>> {
        self.dbs[0].get_plan(id).await
    }
    async fn insert_plan(
        &self,
        plan: &Plan,
        audit: NewAuditEvent,
        idempotency: Option<IdempotencyRecord>,
    ) -> Result<()> {
        self.dbs[0].insert_plan(plan, audit, idempotency).await?;
        for db in &self.dbs[1..] {
            db.copy_plan(plan).await?;
        }
        Ok(())
    }
    async fn copy_plan(&self, plan: &Plan) -> Result<()> {
        for db in &self.dbs {
            db.copy_plan(plan).await?;
        }
        Ok(())
    }
    async fn insert_tenant(&self, new: NewTenant) -> Result<()> {
        let _one_at_a_time = self.creating.lock().await;
        if self.slug_taken(&new.tenant.slug).await? {
            return Err(StoreError::Conflict(Conflict::Slug));
        }
        let (id, db) = (new.tenant.id, self.db_of_region(&new.tenant.region));
        self.dbs[db].insert_tenant(new).await?;
        remember(&self.tenants, id, db);
        Ok(())
    }
    async fn get_tenant(&self, id: TenantId) -> Result<Option<Tenant>> {
        let cached = recall(&self.tenants, &id).is_some();
        let Some(db) = self.find(id).await? else {
            return Ok(None);
        };
        let found = self.dbs[db].get_tenant(id).await;
        if self.moved(&found) {
            return self.get_tenant_anew(id).await;
        }
        match found? {
            // Gone from where this process last saw it (moved, or purged): look again.
            None if cached => {
                self.forget_routes();
                match self.find(id).await? {
                    Some(db) => self.dbs[db].get_tenant(id).await,
                    None => Ok(None),
                }
            }
            found => Ok(found),
        }
    }
    async fn list_tenants(
        &self,
        platform: &PlatformCtx,
        page: &PageRequest,
    ) -> Result<Page<Tenant>> {
        let mut pages = Vec::with_capacity(self.dbs.len());
        for db in &self.dbs {
            pages.push(db.list_tenants(platform, page).await?);
        }
        Ok(merge_pages(
            pages,
            page.limit,
            |t| t.id.to_string(),
            |t| t.id.to_string(),
        ))
    }
    async fn slug_taken(&self, slug: &Slug) -> Result<bool> {
        for db in &self.dbs {
            if db.slug_taken(slug).await? {
                return Ok(true);
            }
        }
        Ok(false)
    }
    async fn tenant_by_slug(&self, slug: &Slug) -> Result<Option<Tenant>> {
        self.first(|db| db.tenant_by_slug(slug), |t| Some(t.id))
            .await
    }
    async fn update_tenant(
        &self,
        ctx: &TenantCtx,
        tenant: &Tenant,
        expected_version: i64,
        job: Option<&Job>,
        audit: NewAuditEvent,
    ) -> Result<()> {
        // Re-pinning to a region of another database moves rows: `relocate_tenant` does.
        let db = self.find(ctx.tenant_id()).await?.unwrap_or(0);
        if let Some(current) = self.dbs[db].get_tenant(ctx.tenant_id()).await? {
            if !self.shares_database(&current.region, &tenant.region) {
                return Err(StoreError::Config(format!(
                    "region {} keeps its tenants in another database",
                    tenant.region
                )));
            }
        }
        self.on(ctx.tenant_id(), |db| {
            db.update_tenant(ctx, tenant, expected_version, job, audit.clone())
        })
        .await
    }
    async fn claim_job(&self, now: Timestamp, lease_ms: i64) -> Result<Option<Job>> {
        let start = self.next_claim.fetch_add(1, Ordering::Relaxed);
        for i in 0..self.dbs.len() {
            let db = (start + i) % self.dbs.len();
            if let Some(job) = self.dbs[db].claim_job(now, lease_ms).await? {
                remember(&self.tenants, job.tenant_id, db);
                return Ok(Some(job));
            }
        }
        Ok(None)
    }
    async fn get_job(&self, id: JobId) -> Result<Option<Job>> {
        self.first(|db| db.get_job(id), |j| Some(j.tenant_id)).await
    }
    async fn list_jobs(&self, ctx: &TenantCtx, page: &PageRequest) -> Result<Page<Job>> {
        self.on(ctx.tenant_id(), |db| db.list_jobs(ctx, page)).await
    }
    async fn tenant_job(&self, ctx: &TenantCtx, id: JobId) -> Result<Option<Job>> {
        self.on(ctx.tenant_id(), |db| db.tenant_job(ctx, id)).await
    }
    async fn heartbeat_job(
        &self,
        job: &Job,
        now: Timestamp,
        lease_ms: i64,
        progress: Option<(i64, &str)>,
    ) -> Result<bool> {
        self.on(job.tenant_id, |db| {
            db.heartbeat_job(job, now, lease_ms, progress)
        })
        .await
    }
    async fn cancel_job(
        &self,
        ctx: &TenantCtx,
        id: JobId,
        now: Timestamp,
        audit: NewAuditEvent,
    ) -> Result<Option<Job>> {
        self.on(ctx.tenant_id(), |db| {
            db.cancel_job(ctx, id, now, audit.clone())
        })
        .await
    }
    async fn finish_cancelled(&self, job: &Job, now: Timestamp) -> Result<()> {
        self.on(job.tenant_id, |db| db.finish_cancelled(job, now))
            .await
    }
    async fn complete_job(&self, job: &Job, now: Timestamp) -> Result<()> {
        self.on(job.tenant_id, |db| db.complete_job(job, now)).await
    }
    async fn fail_job(&self, job: &Job, error: &str, now: Timestamp) -> Result<()> {
        self.on(job.tenant_id, |db| db.fail_job(job, error, now))
            .await
    }
    async fn finish_provisioning(
        &self,
        ctx: &TenantCtx,
        job: &Job,
        tenant: &Tenant,
        p: &Provisioning,
        audit: NewAuditEvent,
        now: Timestamp,
    ) -> Result<()> {
        self.on(ctx.tenant_id(), |db| {
            db.finish_provisioning(ctx, job, tenant, p, audit.clone(), now)
        })
        .await
    }
    async fn purge_tenant(
        &self,
        ctx: &TenantCtx,
        job: &Job,
        audit: NewAuditEvent,
        now: Timestamp,
    ) -> Result<PurgeReport> {
        self.on(ctx.tenant_id(), |db| {
            db.purge_tenant(ctx, job, audit.clone(), now)
        })
        .await
    }
    async fn list_members(
        &self,
        ctx: &TenantCtx,
        filter: &MemberFilter,
        page: &PageRequest,
    ) -> Result<Page<Member>> {
        self.on(ctx.tenant_id(), |db| db.list_members(ctx, filter, page))
            .await
    }
    async fn list_settings(&self, ctx: &TenantCtx) -> Result<Vec<Setting>> {
        self.on(ctx.tenant_id(), |db| db.list_settings(ctx)).await
    }
    async fn get_setting(&self, ctx: &TenantCtx, key: &str) -> Result<Option<Setting>> {
        self.on(ctx.tenant_id(), |db| db.get_setting(ctx, key))
            .await
    }
    async fn put_setting(
        &self,
        ctx: &TenantCtx,
        change: &SettingChange,
        audit: NewAuditEvent,
    ) -> Result<SettingWrite> {
        self.on(ctx.tenant_id(), |db| {
            db.put_setting(ctx, change, audit.clone())
        })
        .await
    }
    async fn setting_history(
        &self,
        ctx: &TenantCtx,
        key: &str,
        page: &PageRequest,
    ) -> Result<Page<SettingVersion>> {
        self.on(ctx.tenant_id(), |db| db.setting_history(ctx, key, page))
            .await
    }
    async fn setting_version(
        &self,
        ctx: &TenantCtx,
        key: &str,
        version: i64,
    ) -> Result<Option<SettingVersion>> {
        self.on(ctx.tenant_id(), |db| db.setting_version(ctx, key, version))
            .await
    }
    async fn get_branding(&self, ctx: &TenantCtx) -> Result<agentplane_core::branding::Branding> {
        self.on(ctx.tenant_id(), |db| db.get_branding(ctx)).await
    }
    async fn tenant_by_domain(&self, domain: &str) -> Result<Option<TenantId>> {
        self.first(|db| db.tenant_by_domain(domain), |t| Some(*t))
            .await
    }
    async fn put_branding(
        &self,
        ctx: &TenantCtx,
        branding: &agentplane_core::branding::Branding,
        expected_version: i64,
        audit: NewAuditEvent,
    ) -> Result<()> {
        self.on(ctx.tenant_id(), |db| {
            db.put_branding(ctx, branding, expected_version, audit.clone())
        })
        .await
    }
    async fn tenant_keys(&self, ctx: &TenantCtx) -> Result<Vec<TenantKey>> {
        self.on(ctx.tenant_id(), |db| db.tenant_keys(ctx)).await
    }
    async fn insert_tenant_key(
        &self,
        ctx: &TenantCtx,
        key: &TenantKey,
        retire_others: bool,
        job: Option<&Job>,
        audit: Option<NewAuditEvent>,
    ) -> Result<()> {
        self.on(ctx.tenant_id(), |db| {
            db.insert_tenant_key(ctx, key, retire_others, job, audit.clone())
        })
        .await
    }
    async fn rewrap_tenant_key(
        &self,
        ctx: &TenantCtx,
        version: i64,
        old_wrapped: &str,
        kms: &str,
        kek_version: i64,
        wrapped: &str,
    ) -> Result<bool> {
        self.on(ctx.tenant_id(), |db| {
            db.rewrap_tenant_key(ctx, version, old_wrapped, kms, kek_version, wrapped)
        })
        .await
    }
    async fn all_tenant_keys(&self, platform: &PlatformCtx) -> Result<Vec<(TenantId, TenantKey)>> {
        let mut all = Vec::new();
        for db in &self.dbs {
            all.extend(db.all_tenant_keys(platform).await?);
        }
        Ok(all)
    }
    async fn insert_shared_provider(
        &self,
        platform: &PlatformCtx,
        rec: &SharedProviderRecord,
        audit: NewAuditEvent,
    ) -> Result<()> {
        self.dbs[0]
            .insert_shared_provider(platform, rec, audit)
            .await
    }
    async fn list_shared_providers(&self) -> Result<Vec<SharedProviderRecord>> {
        self.dbs[0].list_shared_providers().await
    }
    async fn rewrap_shared_provider(&self, id: &str, wrapped_key: &str) -> Result<()> {
        self.dbs[0].rewrap_shared_provider(id, wrapped_key).await
    }
    async fn get_shared_provider(&self, id: &str) -> Result<Option<SharedProviderRecord>> {
        self.dbs[0].get_shared_provider(id).await
    }
    async fn set_shared_provider_plans(
        &self,
        platform: &PlatformCtx,
        id: &str,
        plans: &[String],
        now: Timestamp,
        audit: NewAuditEvent,
    ) -> Result<bool> {
        self.dbs[0]
            .set_shared_provider_plans(platform, id, plans, now, audit)
            .await
    }
    async fn insert_provider(
        &self,
        ctx: &TenantCtx,
        rec: &ProviderRecord,
        audit: NewAuditEvent,
    ) -> Result<()> {
        self.on(ctx.tenant_id(), |db| {
            db.insert_provider(ctx, rec, audit.clone())
        })
        .await
    }
    async fn get_provider(
        &self,
        ctx: &TenantCtx,
        id: agentplane_core::ProviderId,
    ) -> Result<Option<ProviderRecord>> {
        self.on(ctx.tenant_id(), |db| db.get_provider(ctx, id))
            .await
    }
    async fn list_providers(
        &self,
        ctx: &TenantCtx,
        page: &PageRequest,
    ) -> Result<Page<ProviderRecord>> {
        self.on(ctx.tenant_id(), |db| db.list_providers(ctx, page))
            .await
    }
    async fn update_provider(
        &self,
        ctx: &TenantCtx,
        rec: &ProviderRecord,
        expected_version: i64,
        audit: NewAuditEvent,
    ) -> Result<()> {
        self.on(ctx.tenant_id(), |db| {
            db.update_provider(ctx, rec, expected_version, audit.clone())
        })
        .await
    }
    async fn reseal_provider(
        &self,
        ctx: &TenantCtx,
        id: agentplane_core::ProviderId,
        old_key_version: i64,
        sealed: &[u8],
        key_version: i64,
    ) -> Result<bool> {
        self.on(ctx.tenant_id(), |db| {
            db.reseal_provider(ctx, id, old_key_version, sealed, key_version)
        })
        .await
    }
    async fn delete_provider(
        &self,
        ctx: &TenantCtx,
        id: agentplane_core::ProviderId,
        audit: NewAuditEvent,
    ) -> Result<bool> {
        self.on(ctx.tenant_id(), |db| {
            db.delete_provider(ctx, id, audit.clone())
        })
        .await
    }
    async fn insert_agent(
        &self,
        ctx: &TenantCtx,
        agent: &agentplane_core::agent::Agent,
        audit: NewAuditEvent,
    ) -> Result<()> {
        self.on(ctx.tenant_id(), |db| {
            db.insert_agent(ctx, agent, audit.clone())
        })
        .await
    }
    async fn get_agent(
        &self,
        ctx: &TenantCtx,
        id: agentplane_core::AgentId,
    ) -> Result<Option<agentplane_core::agent::Agent>> {
        self.on(ctx.tenant_id(), |db| db.get_agent(ctx, id)).await
    }
    async fn get_agent_by_name(
        &self,
        ctx: &TenantCtx,
        name: &str,
    ) -> Result<Option<agentplane_core::agent::Agent>> {
        self.on(ctx.tenant_id(), |db| db.get_agent_by_name(ctx, name))
            .await
    }
    async fn list_agents(
        &self,
        ctx: &TenantCtx,
        page: &PageRequest,
    ) -> Result<Page<agentplane_core::agent::Agent>> {
        self.on(ctx.tenant_id(), |db| db.list_agents(ctx, page))
            .await
    }
    async fn update_agent(
        &self,
        ctx: &TenantCtx,
        agent: &agentplane_core::agent::Agent,
        expected_version: i64,
        audit: NewAuditEvent,
    ) -> Result<()> {
        self.on(ctx.tenant_id(), |db| {
            db.update_agent(ctx, agent, expected_version, audit.clone())
        })
        .await
    }
    async fn delete_agent(
        &self,
        ctx: &TenantCtx,
        id: agentplane_core::AgentId,
        audit: NewAuditEvent,
    ) -> Result<bool> {
        self.on(ctx.tenant_id(), |db| {
            db.delete_agent(ctx, id, audit.clone())
        })
        .await
    }
    async fn agent_versions(
        &self,
        ctx: &TenantCtx,
        id: agentplane_core::AgentId,
        page: &PageRequest,
    ) -> Result<Page<AgentVersion>> {
        self.on(ctx.tenant_id(), |db| db.agent_versions(ctx, id, page))
            .await
    }
    async fn insert_api_key(
        &self,
        ctx: &TenantCtx,
        key: &agentplane_core::api_key::ApiKey,
        public_id: &str,
        secret_hash: &str,
        audit: NewAuditEvent,
    ) -> Result<()> {
        self.on(ctx.tenant_id(), |db| {
            db.insert_api_key(ctx, key, public_id, secret_hash, audit.clone())
        })
        .await
    }
    async fn list_api_keys(
        &self,
        ctx: &TenantCtx,
        page: &PageRequest,
    ) -> Result<Page<agentplane_core::api_key::ApiKey>> {
        self.on(ctx.tenant_id(), |db| db.list_api_keys(ctx, page))
            .await
    }
    async fn revoke_api_key(
        &self,
        ctx: &TenantCtx,
        id: agentplane_core::ApiKeyId,
        at: Timestamp,
        audit: NewAuditEvent,
    ) -> Result<Option<agentplane_core::api_key::ApiKey>> {
        self.on(ctx.tenant_id(), |db| {
            db.revoke_api_key(ctx, id, at, audit.clone())
        })
        .await
    }
    /// Every database's generations together: any change anywhere counts as a change of every
    /// tenant (conservative, and changes are rare).
    fn config_generation(&self) -> u64 {
        self.dbs
            .iter()
            .fold(0u64, |g, db| g.wrapping_add(db.config_generation()))
    }

    fn config_changed_since(&self, _tenant: TenantId, read_at: u64) -> bool {
        self.config_generation() != read_at
    }

    async fn find_api_key(&self, public_id: &str) -> Result<Option<ApiKeyLookup>> {
        // The gateway's hot path: the database that answered last is asked first.
        let hint = recall(&self.keys, public_id);
        let order = hint
            .into_iter()
            .chain((0..self.dbs.len()).filter(|d| Some(*d) != hint));
        for db in order {
            if let Some(found) = self.dbs[db].find_api_key(public_id).await? {
                if hint != Some(db) {
                    // Not from a copy still arriving here (it answers once it is the tenant).
                    let t = found.key.tenant_id;
                    if !self.lives_in(t, db).await? {
                        continue;
                    }
                    remember(&self.keys, public_id.to_owned(), db);
                }
                remember(&self.tenants, found.key.tenant_id, db);
                return Ok(Some(found));
            }
        }
        Ok(None)
    }
    async fn touch_api_keys(
        &self,
        platform: &PlatformCtx,
        uses: &[(TenantId, agentplane_core::ApiKeyId, Timestamp)],
    ) -> Result<()> {
        for (db, uses) in self.by_db(uses, |u| u.0).await? {
            self.dbs[db].touch_api_keys(platform, &uses).await?;
        }
        Ok(())
    }
    async fn usage_counter(&self, ctx: &TenantCtx, period: &str) -> Result<Option<UsageCounter>> {
        self.on(ctx.tenant_id(), |db| db.usage_counter(ctx, period))
            .await
    }
    async fn grant_quota(
        &self,
        ctx: &TenantCtx,
        req: &LeaseRequest,
    ) -> Result<std::result::Result<Amount, Exhausted>> {
        self.on(ctx.tenant_id(), |db| db.grant_quota(ctx, req))
            .await
    }
    async fn settle_quota(&self, ops: &[QuotaOp]) -> Result<()> {
        let tenant_of = |op: &QuotaOp| match op {
            QuotaOp::Settle { ctx, .. } | QuotaOp::Release { ctx, .. } => ctx.tenant_id(),
        };
        for (db, ops) in self.by_db(ops, tenant_of).await? {
            match self.dbs[db].settle_quota(&ops).await {
                // A tenant of the batch moved (nothing of the batch was written): each run
                // is settled where its tenant is now.
                Err(StoreError::Moved(_)) => {
                    self.forget_routes();
                    for (db, ops) in self.by_db(&ops, tenant_of).await? {
                        self.dbs[db].settle_quota(&ops).await?;
                    }
                }
                res => res?,
            }
        }
        Ok(())
    }
    async fn get_webhook(
        &self,
        ctx: &TenantCtx,
    ) -> Result<Option<(agentplane_core::webhook::Webhook, Vec<u8>)>> {
        self.on(ctx.tenant_id(), |db| db.get_webhook(ctx)).await
    }
    async fn put_webhook(
        &self,
        ctx: &TenantCtx,
        webhook: &agentplane_core::webhook::Webhook,
        sealed_secret: &[u8],
        audit: NewAuditEvent,
    ) -> Result<()> {
        self.on(ctx.tenant_id(), |db| {
            db.put_webhook(ctx, webhook, sealed_secret, audit.clone())
        })
        .await
    }
    async fn reseal_webhook(
        &self,
        ctx: &TenantCtx,
        old_key_version: i64,
        sealed: &[u8],
        key_version: i64,
    ) -> Result<bool> {
        self.on(ctx.tenant_id(), |db| {
            db.reseal_webhook(ctx, old_key_version, sealed, key_version)
        })
        .await
    }
    async fn delete_webhook(&self, ctx: &TenantCtx, audit: NewAuditEvent) -> Result<bool> {
        self.on(ctx.tenant_id(), |db| db.delete_webhook(ctx, audit.clone()))
            .await
    }
    async fn renew_quota_leases(
        &self,
        platform: &PlatformCtx,
        holder: &str,
        expires_at: Timestamp,
    ) -> Result<()> {
        for db in &self.dbs {
            db.renew_quota_leases(platform, holder, expires_at).await?;
        }
        Ok(())
    }
    async fn insert_usage_record(&self, ctx: &TenantCtx, rec: &UsageRecord) -> Result<()> {
        self.on(ctx.tenant_id(), |db| db.insert_usage_record(ctx, rec))
            .await
    }
    async fn tenant_usage_records(
        &self,
        ctx: &TenantCtx,
        range: TimeRange,
        page: &PageRequest,
    ) -> Result<Page<UsageRecord>> {
        self.on(ctx.tenant_id(), |db| {
            db.tenant_usage_records(ctx, range, page)
        })
        .await
    }
    async fn all_usage_records(
        &self,
        platform: &PlatformCtx,
        range: TimeRange,
        page: &PageRequest,
    ) -> Result<Page<UsageRecord>> {
        let mut pages = Vec::with_capacity(self.dbs.len());
        for db in &self.dbs {
            pages.push(db.all_usage_records(platform, range, page).await?);
        }
        Ok(merge_pages(
            pages,
            page.limit,
            |r| (r.ts.millis(), r.tenant_id.to_string(), r.id.to_string()),
            crate::usage_key,
        ))
    }
    async fn append_audit(&self, ev: NewAuditEvent) -> Result<AuditEvent> {
        match ev.chain {
            Chain::Platform => self.dbs[0].append_audit(ev).await,
            Chain::Tenant(t) => self.on(t, |db| db.append_audit(ev.clone())).await,
        }
    }
    async fn list_audit(
        &self,
        ctx: &TenantCtx,
        filter: &AuditFilter,
        page: &PageRequest,
        read_event: NewAuditEvent,
    ) -> Result<Page<AuditEvent>> {
        self.on(ctx.tenant_id(), |db| {
            db.list_audit(ctx, filter, page, read_event.clone())
        })
        .await
    }
    async fn audit_chain_heads(
        &self,
        platform: &PlatformCtx,
    ) -> Result<Vec<(String, Option<(i64, String)>)>> {
        // A tenant that moved away left its chain behind (see `moves.rs`): that copy is
        // named `<tenant>@<database>`.
        let mut all = Vec::new();
        for (i, db) in self.dbs.iter().enumerate() {
            for (chain, head) in db.audit_chain_heads(platform).await? {
                let elsewhere = match chain.parse::<TenantId>() {
                    Ok(t) => self.find(t).await?.is_some_and(|home| home != i),
                    Err(_) => i != 0,
                };
                if elsewhere {
                    all.push((format!("{chain}@{}", self.names[i]), head));
                } else {
                    all.push((chain, head));
                }
            }
        }
        Ok(all)
    }
    async fn audit_chain_page(
        &self,
        platform: &PlatformCtx,
        chain: &str,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<(AuditEvent, Option<AuditPii>)>> {
        if let Some((chain, name)) = chain.split_once('@') {
            let Some(db) = self.db_named(name) else {
                return Ok(Vec::new());
            };
            return self.dbs[db]
                .audit_chain_page(platform, chain, after_seq, limit)
                .await;
        }
        let db = match chain.parse::<TenantId>() {
            Ok(t) => self.find(t).await?,
            Err(_) => Some(0),
        };
        match db {
            Some(db) => {
                self.dbs[db]
                    .audit_chain_page(platform, chain, after_seq, limit)
                    .await
            }
            // A purged tenant's chain (its tenant row is gone): wherever it is.
            None => {
                for db in &self.dbs {
                    let page = db
                        .audit_chain_page(platform, chain, after_seq, limit)
                        .await?;
                    if !page.is_empty() {
                        return Ok(page);
                    }
                }
                Ok(Vec::new())
            }
        }
    }
    async fn get_idempotency(&self, scope: &str, key: &str) -> Result<Option<IdempotencyRecord>> {
        self.first(|db| db.get_idempotency(scope, key), |_| None)
            .await
    }
}

#[async_trait]
impl identity::IdentityStore for RegionalStore {
    async fn get_member(&self, ctx: &TenantCtx, user: UserId) -> Result<Option<Member>> {
        self.on(ctx.tenant_id(), |db| db.get_member(ctx, user))
            .await
    }
    async fn update_member(
        &self,
        ctx: &TenantCtx,
        user: UserId,
        change: &MemberChange,
        now: Timestamp,
        audit: NewAuditEvent,
    ) -> Result<Option<Member>> {
        self.on(ctx.tenant_id(), |db| {
            db.update_member(ctx, user, change, now, audit.clone())
        })
        .await
    }
    async fn remove_member(
        &self,
        ctx: &TenantCtx,
        user: UserId,
        now: Timestamp,
        audit: NewAuditEvent,
    ) -> Result<bool> {
        self.on(ctx.tenant_id(), |db| {
            db.remove_member(ctx, user, now, audit.clone())
        })
        .await
    }
    async fn insert_member(
        &self,
        ctx: &TenantCtx,
        member: &Member,
        audit: NewAuditEvent,
    ) -> Result<Member> {
        self.on(ctx.tenant_id(), |db| {
            db.insert_member(ctx, member, audit.clone())
        })
        .await
    }
    async fn scim_members(
        &self,
        ctx: &TenantCtx,
        filter: &ScimFilter,
        offset: i64,
        limit: i64,
    ) -> Result<(i64, Vec<Member>)> {
        self.on(ctx.tenant_id(), |db| {
            db.scim_members(ctx, filter, offset, limit)
        })
        .await
    }
    async fn put_scim_token(
        &self,
        ctx: &TenantCtx,
        id: &str,
        public_id: &str,
        secret_hash: &str,
        now: Timestamp,
        audit: NewAuditEvent,
    ) -> Result<()> {
        self.on(ctx.tenant_id(), |db| {
            db.put_scim_token(ctx, id, public_id, secret_hash, now, audit.clone())
        })
        .await
    }
    async fn delete_scim_token(&self, ctx: &TenantCtx, audit: NewAuditEvent) -> Result<bool> {
        self.on(ctx.tenant_id(), |db| {
            db.delete_scim_token(ctx, audit.clone())
        })
        .await
    }
    async fn find_scim_token(&self, public_id: &str) -> Result<Option<ScimTokenLookup>> {
        self.first(|db| db.find_scim_token(public_id), |t| Some(t.tenant_id))
            .await
    }
    async fn list_roles(&self, ctx: &TenantCtx) -> Result<Vec<CustomRole>> {
        self.on(ctx.tenant_id(), |db| db.list_roles(ctx)).await
    }
    async fn insert_role(
        &self,
        ctx: &TenantCtx,
        role: &CustomRole,
        audit: NewAuditEvent,
    ) -> Result<()> {
        self.on(ctx.tenant_id(), |db| {
            db.insert_role(ctx, role, audit.clone())
        })
        .await
    }
    async fn update_role(
        &self,
        ctx: &TenantCtx,
        role: &CustomRole,
        audit: NewAuditEvent,
    ) -> Result<bool> {
        self.on(ctx.tenant_id(), |db| {
            db.update_role(ctx, role, audit.clone())
        })
        .await
    }
    async fn delete_role(&self, ctx: &TenantCtx, name: &str, audit: NewAuditEvent) -> Result<bool> {
        self.on(ctx.tenant_id(), |db| {
            db.delete_role(ctx, name, audit.clone())
        })
        .await
    }
    async fn insert_invitation(
        &self,
        ctx: &TenantCtx,
        inv: &NewInvitation,
        job: Option<&Job>,
        audit: NewAuditEvent,
    ) -> Result<()> {
        self.on(ctx.tenant_id(), |db| {
            db.insert_invitation(ctx, inv, job, audit.clone())
        })
        .await
    }
    async fn list_invitations(
        &self,
        ctx: &TenantCtx,
        page: &PageRequest,
    ) -> Result<Page<Invitation>> {
        self.on(ctx.tenant_id(), |db| db.list_invitations(ctx, page))
            .await
    }
    async fn invitation_token(
        &self,
        ctx: &TenantCtx,
        id: InvitationId,
    ) -> Result<Option<(Invitation, Option<(Vec<u8>, i64)>)>> {
        self.on(ctx.tenant_id(), |db| db.invitation_token(ctx, id))
            .await
    }
    async fn revoke_invitation(
        &self,
        ctx: &TenantCtx,
        id: InvitationId,
        now: Timestamp,
        audit: NewAuditEvent,
    ) -> Result<Option<Invitation>> {
        self.on(ctx.tenant_id(), |db| {
            db.revoke_invitation(ctx, id, now, audit.clone())
        })
        .await
    }
    async fn find_invitation(&self, token_hash: &str) -> Result<Option<Invitation>> {
        self.first(|db| db.find_invitation(token_hash), |i| Some(i.tenant_id))
            .await
    }
    async fn accept_invitation(
        &self,
        ctx: &TenantCtx,
        id: InvitationId,
        acc: &Acceptance,
        now: Timestamp,
        audit: NewAuditEvent,
    ) -> Result<Member> {
        self.on(ctx.tenant_id(), |db| {
            db.accept_invitation(ctx, id, acc, now, audit.clone())
        })
        .await
    }
    async fn find_user_by_email(&self, email: &str) -> Result<Option<UserId>> {
        self.first(|db| db.find_user_by_email(email), |_| None)
            .await
    }
    async fn local_credential(
        &self,
        ctx: &TenantCtx,
        email: &str,
    ) -> Result<Option<LocalCredential>> {
        self.on(ctx.tenant_id(), |db| db.local_credential(ctx, email))
            .await
    }
    async fn set_password(
        &self,
        ctx: &TenantCtx,
        user: UserId,
        password_hash: &str,
        audit: NewAuditEvent,
    ) -> Result<bool> {
        self.on(ctx.tenant_id(), |db| {
            db.set_password(ctx, user, password_hash, audit.clone())
        })
        .await
    }
    async fn create_session(
        &self,
        ctx: &TenantCtx,
        session: &NewSession,
        audit: NewAuditEvent,
    ) -> Result<()> {
        self.on(ctx.tenant_id(), |db| {
            db.create_session(ctx, session, audit.clone())
        })
        .await
    }
    async fn find_refresh(&self, id: &str) -> Result<Option<RefreshLookup>> {
        self.first(|db| db.find_refresh(id), |r| Some(r.tenant_id))
            .await
    }
    async fn rotate_refresh(
        &self,
        ctx: &TenantCtx,
        old: &str,
        new: &NewRefresh,
        now: Timestamp,
        reuse_audit: NewAuditEvent,
    ) -> Result<Rotation> {
        self.on(ctx.tenant_id(), |db| {
            db.rotate_refresh(ctx, old, new, now, reuse_audit.clone())
        })
        .await
    }
    async fn revoke_session(
        &self,
        ctx: &TenantCtx,
        session: SessionId,
        reason: &str,
        now: Timestamp,
        audit: NewAuditEvent,
    ) -> Result<bool> {
        self.on(ctx.tenant_id(), |db| {
            db.revoke_session(ctx, session, reason, now, audit.clone())
        })
        .await
    }
    async fn session_grant(
        &self,
        ctx: &TenantCtx,
        session: SessionId,
        user: UserId,
        now: Timestamp,
    ) -> Result<Option<SessionGrant>> {
        self.on(ctx.tenant_id(), |db| {
            db.session_grant(ctx, session, user, now)
        })
        .await
    }
    async fn list_delegations(&self, ctx: &TenantCtx) -> Result<Vec<Delegation>> {
        self.on(ctx.tenant_id(), |db| db.list_delegations(ctx))
            .await
    }
    async fn revoke_delegation(
        &self,
        ctx: &TenantCtx,
        id: SessionId,
        now: Timestamp,
        audit: NewAuditEvent,
    ) -> Result<Option<Delegation>> {
        self.on(ctx.tenant_id(), |db| {
            db.revoke_delegation(ctx, id, now, audit.clone())
        })
        .await
    }
    async fn list_sso(&self, ctx: &TenantCtx) -> Result<Vec<SsoConnectionRecord>> {
        self.on(ctx.tenant_id(), |db| db.list_sso(ctx)).await
    }
    async fn get_sso(&self, ctx: &TenantCtx, id: &str) -> Result<Option<SsoConnectionRecord>> {
        self.on(ctx.tenant_id(), |db| db.get_sso(ctx, id)).await
    }
    async fn insert_sso(
        &self,
        ctx: &TenantCtx,
        rec: &SsoConnectionRecord,
        audit: NewAuditEvent,
    ) -> Result<()> {
        self.on(ctx.tenant_id(), |db| db.insert_sso(ctx, rec, audit.clone()))
            .await
    }
    async fn update_sso(
        &self,
        ctx: &TenantCtx,
        rec: &SsoConnectionRecord,
        audit: NewAuditEvent,
    ) -> Result<bool> {
        self.on(ctx.tenant_id(), |db| db.update_sso(ctx, rec, audit.clone()))
            .await
    }
    async fn delete_sso(&self, ctx: &TenantCtx, id: &str, audit: NewAuditEvent) -> Result<bool> {
        self.on(ctx.tenant_id(), |db| db.delete_sso(ctx, id, audit.clone()))
            .await
    }
    async fn put_sso_state(&self, ctx: &TenantCtx, state_hash: &str, s: &SsoState) -> Result<()> {
        self.on(ctx.tenant_id(), |db| db.put_sso_state(ctx, state_hash, s))
            .await
    }
    async fn take_sso_state(&self, state_hash: &str) -> Result<Option<SsoState>> {
        self.first(|db| db.take_sso_state(state_hash), |s| Some(s.tenant_id))
            .await
    }
    async fn consume_assertion(
        &self,
        ctx: &TenantCtx,
        assertion_id: &str,
        expires_at: Timestamp,
    ) -> Result<bool> {
        self.on(ctx.tenant_id(), |db| {
            db.consume_assertion(ctx, assertion_id, expires_at)
        })
        .await
    }
    async fn erase_subject(
        &self,
        ctx: &TenantCtx,
        job: &Job,
        email: &str,
        subject: &str,
        sign: ReceiptSigner<'_>,
        audit: NewAuditEvent,
    ) -> Result<ErasureReceipt> {
        self.on(ctx.tenant_id(), |db| {
            db.erase_subject(ctx, job, email, subject, sign, audit.clone())
        })
        .await
    }
    async fn erasure_receipt(&self, ctx: &TenantCtx, id: &str) -> Result<Option<ErasureReceipt>> {
        self.on(ctx.tenant_id(), |db| db.erasure_receipt(ctx, id))
            .await
    }
    async fn apply_retention(
        &self,
        ctx: &TenantCtx,
        job: &Job,
        data_before: Timestamp,
        audit_before: Timestamp,
        audit: NewAuditEvent,
    ) -> Result<RetentionReport> {
        self.on(ctx.tenant_id(), |db| {
            db.apply_retention(ctx, job, data_before, audit_before, audit.clone())
        })
        .await
    }
    async fn schedule_retention(&self, platform: &PlatformCtx, since: Timestamp) -> Result<u64> {
        let mut n = 0;
        for db in &self.dbs {
            n += db.schedule_retention(platform, since).await?;
        }
        Ok(n)
    }
    async fn enqueue(&self, ctx: &TenantCtx, job: &Job, audit: NewAuditEvent) -> Result<()> {
        self.on(ctx.tenant_id(), |db| db.enqueue(ctx, job, audit.clone()))
            .await
    }
    async fn signing_keys(&self) -> Result<Vec<SigningKeyRecord>> {
        self.dbs[0].signing_keys().await
    }
    async fn insert_signing_key(
        &self,
        platform: &PlatformCtx,
        key: &SigningKeyRecord,
        audit: Option<NewAuditEvent>,
    ) -> Result<()> {
        self.dbs[0].insert_signing_key(platform, key, audit).await
    }
    async fn rewrap_signing_key(
        &self,
        platform: &PlatformCtx,
        kid: &str,
        wrapped_key: &str,
    ) -> Result<()> {
        self.dbs[0]
            .rewrap_signing_key(platform, kid, wrapped_key)
            .await
    }
}

#[async_trait]
impl exports::ExportStore for RegionalStore {
    async fn dump_tenant(
        &self,
        ctx: &TenantCtx,
        tables: &[&'static ExportTable],
        filter: &ExportFilter,
        sink: &mut dyn ExportSink,
    ) -> Result<()> {
        self.of(ctx.tenant_id())
            .await?
            .dump_tenant(ctx, tables, filter, sink)
            .await
    }
    async fn load_tenant(
        &self,
        ctx: &TenantCtx,
        source: &mut dyn ImportSource,
        audit: NewAuditEvent,
    ) -> Result<u64> {
        // The import goes to the database of the region its tenant row names.
        let first = source.next_batch()?;
        let region = first.as_ref().and_then(|(t, rows)| {
            let col = t.column_names().position(|c| c == "region")?;
            match rows.first()?.get(col)? {
                Cell::Text(r) if t.name == "tenant" => Some(r.clone()),
                _ => None,
            }
        });
        let db = region.map_or(0, |r| self.db_of_region(&r));
        let mut source = ReadAhead {
            first,
            rest: source,
        };
        if db == 0 {
            return self.dbs[0].load_tenant(ctx, &mut source, audit).await;
        }
        // Recorded on the imported tenant's chain, in the same transaction, and on the
        // platform chain (in the main database) once it is in.
        let mut own = audit.clone();
        own.chain = Chain::Tenant(ctx.tenant_id());
        let rows = self.dbs[db].load_tenant(ctx, &mut source, own).await?;
        remember(&self.tenants, ctx.tenant_id(), db);
        self.dbs[0].append_audit(audit).await?;
        Ok(rows)
    }
    async fn insert_export(
        &self,
        ctx: &TenantCtx,
        rec: &ExportRecord,
        job: &Job,
        audit: NewAuditEvent,
    ) -> Result<()> {
        self.on(ctx.tenant_id(), |db| {
            db.insert_export(ctx, rec, job, audit.clone())
        })
        .await
    }
    async fn get_export(&self, ctx: &TenantCtx, id: &str) -> Result<Option<ExportRecord>> {
        self.on(ctx.tenant_id(), |db| db.get_export(ctx, id)).await
    }
    async fn list_exports(
        &self,
        ctx: &TenantCtx,
        kind: &str,
        page: &PageRequest,
    ) -> Result<Page<ExportRecord>> {
        self.on(ctx.tenant_id(), |db| db.list_exports(ctx, kind, page))
            .await
    }
    async fn latest_backup(&self, ctx: &TenantCtx) -> Result<Option<ExportRecord>> {
        self.on(ctx.tenant_id(), |db| db.latest_backup(ctx)).await
    }
    async fn backups_beyond(&self, ctx: &TenantCtx, keep: i64) -> Result<Vec<ExportRecord>> {
        self.on(ctx.tenant_id(), |db| db.backups_beyond(ctx, keep))
            .await
    }
    async fn trial_restore(
        &self,
        ctx: &TenantCtx,
        source: &mut dyn ImportSource,
        tables: &[&'static ExportTable],
        sink: &mut dyn ExportSink,
    ) -> Result<u64> {
        self.of(ctx.tenant_id())
            .await?
            .trial_restore(ctx, source, tables, sink)
            .await
    }
    async fn set_verification(
        &self,
        ctx: &TenantCtx,
        job: &Job,
        id: &str,
        report: &serde_json::Value,
        audit: NewAuditEvent,
    ) -> Result<()> {
        self.on(ctx.tenant_id(), |db| {
            db.set_verification(ctx, job, id, report, audit.clone())
        })
        .await
    }
    async fn finish_export(
        &self,
        ctx: &TenantCtx,
        job: &Job,
        id: &str,
        done: &FinishedExport,
        audit: NewAuditEvent,
    ) -> Result<()> {
        self.on(ctx.tenant_id(), |db| {
            db.finish_export(ctx, job, id, done, audit.clone())
        })
        .await
    }
    async fn fail_export(&self, ctx: &TenantCtx, id: &str, error: &str) -> Result<()> {
        self.on(ctx.tenant_id(), |db| db.fail_export(ctx, id, error))
            .await
    }
    async fn exports_to_remove(
        &self,
        ctx: &TenantCtx,
        expired_before: Option<Timestamp>,
    ) -> Result<Vec<ExportRecord>> {
        self.on(ctx.tenant_id(), |db| {
            db.exports_to_remove(ctx, expired_before)
        })
        .await
    }
    async fn erased_subjects(&self, ctx: &TenantCtx) -> Result<Vec<String>> {
        self.on(ctx.tenant_id(), |db| db.erased_subjects(ctx)).await
    }
    async fn mark_export_deleted(&self, ctx: &TenantCtx, id: &str) -> Result<()> {
        self.on(ctx.tenant_id(), |db| db.mark_export_deleted(ctx, id))
            .await
    }
}

/// A router has no rows of its own: it moves tenants with [`Store::relocate_tenant`].
#[async_trait]
impl MoveStore for RegionalStore {
    async fn tenant_presence(&self, tenant: TenantId) -> Result<Presence> {
        Ok(match self.find(tenant).await? {
            Some(_) => Presence::Here,
            None => Presence::Absent,
        })
    }

    async fn move_out(
        &self,
        _ctx: &TenantCtx,
        _to: &str,
        _out: tokio::sync::mpsc::Sender<Option<RawBatch>>,
        _arrived: tokio::sync::oneshot::Receiver<bool>,
    ) -> Result<u64> {
        Err(StoreError::Config("a move is between two databases".into()))
    }

    async fn move_in(
        &self,
        _ctx: &TenantCtx,
        _rows: tokio::sync::mpsc::Receiver<Option<RawBatch>>,
    ) -> Result<u64> {
        Err(StoreError::Config("a move is between two databases".into()))
    }

    async fn arrived(&self, _ctx: &TenantCtx, _region: &str, _audit: NewAuditEvent) -> Result<()> {
        Err(StoreError::Config("a move is between two databases".into()))
    }
}
