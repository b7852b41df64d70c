//! SCIM 2.0 (RFC 7643/7644) provisioning: an enterprise IdP creates, updates, deactivates
//! and deletes a tenant's users, and assigns roles through groups.
//!
//! - Authentication: one bearer token per tenant (`scim_<public>_<secret>`), created by a
//!   tenant admin and shown once; only its SHA-256 is kept. The tenant comes from the token.
//! - Users are memberships: `id` is the user id, `userName` the e-mail (immutable),
//!   `externalId` the IdP's id, `active` the membership status.
//! - Groups are the tenant's roles (built-in and custom): `id` and `displayName` are the role
//!   name, and group membership is role assignment. Creating a group links an existing role
//!   (custom roles are defined in Agentplane, with their permissions).
//! - Deprovisioning (`active: false`, or DELETE) revokes the person's sessions, their agents'
//!   delegated tokens and the API keys they created, in the same transaction.

use crate::{ControlError, ControlPlane, Result};
use agentplane_core::audit::{Chain, NewAuditEvent};
use agentplane_core::authz::{Role, TenantCtx};
use agentplane_core::identity::{normalize_email, validate_display_name, TENANT_ROLES};
use agentplane_core::tenant::TenantStatus;
use agentplane_core::time::Timestamp;
use agentplane_core::{DomainError, UserId};
use agentplane_store::identity::{MemberChange, ScimFilter};
use agentplane_store::{Conflict, Member, StoreError};
use rand::RngCore;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

const USER_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:User";
const GROUP_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:Group";
const LIST_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:ListResponse";
const PATCH_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:PatchOp";
const PREFIX: &str = "scim_";
/// Largest page a list answers.
pub const MAX_COUNT: i64 = 200;

/// A SCIM-specific refusal (`scimType` of RFC 7644 3.12).
fn scim_invalid(field: &'static str, why: impl Into<String>) -> ControlError {
    DomainError::invalid(field, why).into()
}

fn hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

fn split(token: &str) -> Option<(&str, &str)> {
    let (public, secret) = token.strip_prefix(PREFIX)?.split_once('_')?;
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    (hex(public, 16) && hex(secret, 64)).then_some((public, secret))
}

/// `true`, `"True"`, `"false"`: IdPs send both.
fn as_bool(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        Value::String(s) if s.eq_ignore_ascii_case("true") => Some(true),
        Value::String(s) if s.eq_ignore_ascii_case("false") => Some(false),
        _ => None,
    }
}

fn user_resource(m: &Member) -> Value {
    let display = m.name.clone().unwrap_or_else(|| m.email.clone());
    let mut groups: Vec<Value> = m
        .roles
        .iter()
        .chain(m.custom_roles.iter())
        .map(|r| json!({"value": r, "display": r, "$ref": format!("/scim/v2/Groups/{r}")}))
        .collect();
    groups.dedup();
    json!({
        "schemas": [USER_SCHEMA],
        "id": m.user_id,
        "externalId": m.external_id,
        "userName": m.email,
        "displayName": display,
        "name": {"formatted": display},
        "emails": [{"value": m.email, "primary": true, "type": "work"}],
        "active": m.status == "active",
        "groups": groups,
        "meta": {
            "resourceType": "User",
            "created": m.created_at,
            "lastModified": m.updated_at,
            "location": format!("/scim/v2/Users/{}", m.user_id),
        },
    })
}

/// The display name a SCIM user carries: `displayName`, else `name.formatted`, else given +
/// family name.
fn display_name(v: &Value) -> Option<String> {
    let name = &v["name"];
    let joined = [name["givenName"].as_str(), name["familyName"].as_str()]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(" ");
    v["displayName"]
        .as_str()
        .or(name["formatted"].as_str())
        .map(str::to_owned)
        .or((!joined.is_empty()).then_some(joined))
}

/// The e-mail of a SCIM user: `userName` when it is one, else the primary e-mail.
fn user_email(v: &Value) -> Result<String> {
    if let Some(u) = v["userName"].as_str() {
        if let Ok(e) = normalize_email("userName", u) {
            return Ok(e);
        }
    }
    let emails = v["emails"].as_array().cloned().unwrap_or_default();
    let primary = emails
        .iter()
        .find(|e| e["primary"].as_bool() == Some(true))
        .or(emails.first())
        .and_then(|e| e["value"].as_str());
    match primary {
        Some(e) => Ok(normalize_email("emails", e)?),
        None => Err(scim_invalid(
            "userName",
            "must be an e-mail address, or the user must have one in emails",
        )),
    }
}

/// `userName eq "x"`, `externalId eq "x"`, `emails.value eq "x"` (what IdPs send to find a
/// user before creating it).
fn parse_filter(f: &str) -> Result<ScimFilter> {
    let bad = || {
        scim_invalid(
            "filter",
            "supported: userName, externalId or emails.value eq \"...\"",
        )
    };
    let mut parts = f.trim().splitn(3, ' ');
    let (attr, op, value) = (
        parts.next().ok_or_else(bad)?,
        parts.next().ok_or_else(bad)?,
        parts.next().ok_or_else(bad)?,
    );
    if !op.eq_ignore_ascii_case("eq") {
        return Err(bad());
    }
    let value: String = serde_json::from_str(value.trim()).map_err(|_| bad())?;
    let mut filter = ScimFilter::default();
    match attr.to_ascii_lowercase().as_str() {
        "username" | "emails.value" | "emails" => {
            filter.email = Some(normalize_email("filter", &value).unwrap_or(value));
        }
        "externalid" => filter.external_id = Some(value),
        _ => return Err(bad()),
    }
    Ok(filter)
}

/// The group of role `name` (built-in or custom) with the members holding it.
fn group_of(members: &[Member], name: &str, builtin: bool) -> Value {
    let members: Vec<Value> = members
        .iter()
        .filter(|m| {
            if builtin {
                m.roles.iter().any(|r| r == name)
            } else {
                m.custom_roles.iter().any(|r| r == name)
            }
        })
        .map(|m| json!({"value": m.user_id, "display": m.email, "$ref": format!("/scim/v2/Users/{}", m.user_id)}))
        .collect();
    json!({
        "schemas": [GROUP_SCHEMA],
        "id": name,
        "displayName": name,
        "members": members,
        "meta": {"resourceType": "Group", "location": format!("/scim/v2/Groups/{name}")},
    })
}

/// A list response (RFC 7644 3.4.2).
fn list(total: i64, start: i64, resources: Vec<Value>) -> Value {
    json!({
        "schemas": [LIST_SCHEMA],
        "totalResults": total,
        "startIndex": start,
        "itemsPerPage": resources.len(),
        "Resources": resources,
    })
}

/// The PATCH operations of a request, with `op` lower-cased.
fn operations(body: &Value) -> Result<Vec<(String, Option<String>, Value)>> {
    let schemas_ok = body["schemas"]
        .as_array()
        .is_some_and(|s| s.iter().any(|x| x == PATCH_SCHEMA));
    let ops = body["Operations"]
        .as_array()
        .filter(|_| schemas_ok)
        .ok_or_else(|| {
            scim_invalid(
                "Operations",
                "a PatchOp message with Operations is required",
            )
        })?;
    if ops.is_empty() || ops.len() > 100 {
        return Err(scim_invalid("Operations", "must hold 1 to 100 operations"));
    }
    ops.iter()
        .map(|o| {
            let op = o["op"]
                .as_str()
                .map(str::to_ascii_lowercase)
                .filter(|op| ["add", "replace", "remove"].contains(&op.as_str()))
                .ok_or_else(|| scim_invalid("op", "must be add, replace or remove"))?;
            Ok((
                op,
                o["path"].as_str().map(str::to_owned),
                o["value"].clone(),
            ))
        })
        .collect()
}

impl ControlPlane {
    /// Creates (or replaces) the tenant's SCIM token; answers it once.
    pub async fn create_scim_token(&self, ctx: &TenantCtx) -> Result<Value> {
        let mut public = [0u8; 8];
        let mut secret = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut public);
        rand::rngs::OsRng.fill_bytes(&mut secret);
        let (public, secret) = (hex::encode(public), hex::encode(secret));
        let id = uuid::Uuid::now_v7().to_string();
        let now = Timestamp::now();
        let audit = NewAuditEvent::new(
            Chain::Tenant(ctx.tenant_id()),
            "scim.token_created",
            ctx.actor(),
            now,
        )
        .target("scim_token", &id);
        self.store
            .put_scim_token(ctx, &id, &public, &hash(&secret), now, audit)
            .await?;
        Ok(json!({
            "id": id,
            "token": format!("{PREFIX}{public}_{secret}"),
            "base_url": format!("{}/scim/v2", self.identity.cfg.issuer),
            "created_at": now,
        }))
    }

    pub async fn delete_scim_token(&self, ctx: &TenantCtx) -> Result<()> {
        let audit = NewAuditEvent::new(
            Chain::Tenant(ctx.tenant_id()),
            "scim.token_revoked",
            ctx.actor(),
            Timestamp::now(),
        );
        if self.store.delete_scim_token(ctx, audit).await? {
            Ok(())
        } else {
            Err(ControlError::NotFound("scim token"))
        }
    }

    /// The tenant a SCIM bearer token provisions, or `None` (wrong, revoked, or the tenant is
    /// not active).
    pub async fn verify_scim_token(&self, token: &str) -> Result<Option<TenantCtx>> {
        let Some((public, secret)) = split(token) else {
            return Ok(None);
        };
        let Some(found) = self.store.find_scim_token(public).await? else {
            return Ok(None);
        };
        let ok = bool::from(hash(secret).as_bytes().ct_eq(found.secret_hash.as_bytes()));
        Ok((ok && found.tenant_status == TenantStatus::Active)
            .then(|| TenantCtx::for_scim(found.tenant_id, &found.id)))
    }

    fn scim_audit(&self, ctx: &TenantCtx, action: &str) -> NewAuditEvent {
        NewAuditEvent::new(
            Chain::Tenant(ctx.tenant_id()),
            action,
            ctx.actor(),
            Timestamp::now(),
        )
    }

    async fn scim_member(&self, ctx: &TenantCtx, id: &str) -> Result<Member> {
        let user: UserId = id.parse().map_err(|_| ControlError::NotFound("user"))?;
        self.store
            .get_member(ctx, user)
            .await?
            .ok_or(ControlError::NotFound("user"))
    }

    pub async fn scim_list_users(
        &self,
        ctx: &TenantCtx,
        filter: Option<&str>,
        start_index: Option<i64>,
        count: Option<i64>,
    ) -> Result<Value> {
        let filter = filter.map(parse_filter).transpose()?.unwrap_or_default();
        let start = start_index.unwrap_or(1).max(1);
        let count = count.unwrap_or(100).clamp(0, MAX_COUNT);
        let (total, members) = self
            .store
            .scim_members(ctx, &filter, start - 1, count)
            .await?;
        Ok(list(
            total,
            start,
            members.iter().map(user_resource).collect(),
        ))
    }

    pub async fn scim_get_user(&self, ctx: &TenantCtx, id: &str) -> Result<Value> {
        Ok(user_resource(&self.scim_member(ctx, id).await?))
    }

    pub async fn scim_create_user(&self, ctx: &TenantCtx, body: Value) -> Result<Value> {
        if !body.is_object() {
            return Err(scim_invalid("body", "must be a SCIM User"));
        }
        let email = user_email(&body)?;
        let name = display_name(&body)
            .map(|n| validate_display_name(&n))
            .transpose()?;
        let external_id = body["externalId"].as_str().map(str::to_owned);
        if external_id.as_ref().is_some_and(|e| e.len() > 255) {
            return Err(scim_invalid("externalId", "must be at most 255 characters"));
        }
        let active = body.get("active").map(as_bool).unwrap_or(Some(true));
        let active = active.ok_or_else(|| scim_invalid("active", "must be a boolean"))?;
        let now = Timestamp::now();
        let member = Member {
            tenant_id: ctx.tenant_id(),
            user_id: self
                .store
                .find_user_by_email(&email)
                .await?
                .unwrap_or_default(),
            email: email.clone(),
            name,
            roles: vec![Role::Member.as_str().to_owned()],
            custom_roles: Vec::new(),
            status: if active { "active" } else { "suspended" }.into(),
            has_password: false,
            external_id,
            created_at: now,
            updated_at: now,
            last_sign_in_at: None,
        };
        let audit = self
            .scim_audit(ctx, "user.provisioned")
            .data(json!({"roles": member.roles, "active": active}))
            .pii(json!({"email": email}));
        let m = self
            .store
            .insert_member(ctx, &member, audit)
            .await
            .map_err(|e| match e {
                StoreError::Conflict(Conflict::Name) => {
                    ControlError::Conflict(crate::error::ConflictKind::NameTaken)
                }
                e => e.into(),
            })?;
        Ok(user_resource(&m))
    }

    async fn apply_user_change(
        &self,
        ctx: &TenantCtx,
        before: &Member,
        change: MemberChange,
        action: &str,
    ) -> Result<Value> {
        let audit = self
            .scim_audit(ctx, action)
            .target("user", before.user_id)
            .data(json!({
                "status": {"from": before.status, "to": change.status.as_ref().unwrap_or(&before.status)},
                "roles": change.roles, "custom_roles": change.custom_roles,
            }));
        let m = self
            .store
            .update_member(ctx, before.user_id, &change, Timestamp::now(), audit)
            .await?
            .ok_or(ControlError::NotFound("user"))?;
        Ok(user_resource(&m))
    }

    /// Applies one attribute of a User (replace or add); `userName` is immutable.
    fn set_user_attr(
        change: &mut MemberChange,
        before: &Member,
        path: &str,
        value: &Value,
    ) -> Result<()> {
        match path.to_ascii_lowercase().as_str() {
            "active" => {
                let a =
                    as_bool(value).ok_or_else(|| scim_invalid("active", "must be a boolean"))?;
                change.status = Some(if a { "active" } else { "suspended" }.into());
            }
            "displayname" | "name.formatted" => {
                let n = value
                    .as_str()
                    .ok_or_else(|| scim_invalid("displayName", "must be a string"))?;
                change.name = Some(validate_display_name(n)?);
            }
            "name" => {
                if let Some(n) = display_name(&json!({ "name": value })) {
                    change.name = Some(validate_display_name(&n)?);
                }
            }
            "externalid" => {
                change.external_id = Some(value.as_str().map(str::to_owned));
            }
            "username" | "emails" => {
                let wanted = if path.eq_ignore_ascii_case("username") {
                    value.as_str().map(str::to_lowercase)
                } else {
                    user_email(&json!({ "emails": value })).ok()
                };
                if wanted.as_deref() != Some(before.email.as_str()) {
                    return Err(scim_invalid(
                        "userName",
                        "is immutable: deprovision the user and provision the new address",
                    ));
                }
            }
            // Attributes Agentplane does not keep are accepted and ignored (RFC 7644 3.5.2).
            _ => {}
        }
        Ok(())
    }

    pub async fn scim_replace_user(&self, ctx: &TenantCtx, id: &str, body: Value) -> Result<Value> {
        let before = self.scim_member(ctx, id).await?;
        if !body.is_object() {
            return Err(scim_invalid("body", "must be a SCIM User"));
        }
        let mut change = MemberChange::default();
        if user_email(&body)? != before.email {
            return Err(scim_invalid(
                "userName",
                "is immutable: deprovision the user and provision the new address",
            ));
        }
        if let Some(n) = display_name(&body) {
            change.name = Some(validate_display_name(&n)?);
        }
        change.external_id = Some(body["externalId"].as_str().map(str::to_owned));
        let active = body.get("active").map(as_bool).unwrap_or(Some(true));
        let active = active.ok_or_else(|| scim_invalid("active", "must be a boolean"))?;
        change.status = Some(if active { "active" } else { "suspended" }.into());
        let action = if active {
            "user.updated"
        } else {
            "user.deprovisioned"
        };
        self.apply_user_change(ctx, &before, change, action).await
    }

    pub async fn scim_patch_user(&self, ctx: &TenantCtx, id: &str, body: Value) -> Result<Value> {
        let before = self.scim_member(ctx, id).await?;
        let mut change = MemberChange::default();
        for (op, path, value) in operations(&body)? {
            match (op.as_str(), path) {
                ("remove", Some(p)) if p.eq_ignore_ascii_case("externalId") => {
                    change.external_id = Some(None);
                }
                ("remove", _) => {
                    return Err(scim_invalid(
                        "op",
                        "only externalId can be removed from a user",
                    ))
                }
                (_, Some(p)) => Self::set_user_attr(&mut change, &before, &p, &value)?,
                (_, None) => {
                    let attrs = value
                        .as_object()
                        .ok_or_else(|| scim_invalid("value", "must be an object without a path"))?;
                    for (k, v) in attrs {
                        Self::set_user_attr(&mut change, &before, k, v)?;
                    }
                }
            }
        }
        let action = if change.status.as_deref() == Some("suspended") {
            "user.deprovisioned"
        } else {
            "user.updated"
        };
        self.apply_user_change(ctx, &before, change, action).await
    }

    pub async fn scim_delete_user(&self, ctx: &TenantCtx, id: &str) -> Result<()> {
        let member = self.scim_member(ctx, id).await?;
        let audit = self
            .scim_audit(ctx, "user.deprovisioned")
            .target("user", member.user_id)
            .data(json!({"deleted": true}))
            .pii(json!({"email": member.email}));
        if self
            .store
            .remove_member(ctx, member.user_id, Timestamp::now(), audit)
            .await?
        {
            Ok(())
        } else {
            Err(ControlError::NotFound("user"))
        }
    }

    /// The roles as groups: built-in ones and the tenant's custom roles.
    async fn role_names(&self, ctx: &TenantCtx) -> Result<Vec<(String, bool)>> {
        let mut names: Vec<(String, bool)> = TENANT_ROLES
            .iter()
            .map(|r| (r.as_str().to_owned(), true))
            .collect();
        names.extend(
            self.store
                .list_roles(ctx)
                .await?
                .into_iter()
                .map(|r| (r.name, false)),
        );
        Ok(names)
    }

    async fn all_members(&self, ctx: &TenantCtx) -> Result<Vec<Member>> {
        Ok(self
            .store
            .scim_members(ctx, &ScimFilter::default(), 0, i64::MAX)
            .await?
            .1)
    }

    async fn group_resource(&self, ctx: &TenantCtx, name: &str, builtin: bool) -> Result<Value> {
        Ok(group_of(&self.all_members(ctx).await?, name, builtin))
    }

    async fn find_group(&self, ctx: &TenantCtx, id: &str) -> Result<(String, bool)> {
        self.role_names(ctx)
            .await?
            .into_iter()
            .find(|(n, _)| n == id)
            .ok_or(ControlError::NotFound("group"))
    }

    pub async fn scim_list_groups(&self, ctx: &TenantCtx, filter: Option<&str>) -> Result<Value> {
        let wanted = match filter {
            Some(f) => {
                let mut parts = f.trim().splitn(3, ' ');
                let (attr, op, value) = (parts.next(), parts.next(), parts.next());
                match (
                    attr,
                    op,
                    value.and_then(|v| serde_json::from_str::<String>(v).ok()),
                ) {
                    (Some(a), Some(o), Some(v))
                        if a.eq_ignore_ascii_case("displayName")
                            && o.eq_ignore_ascii_case("eq") =>
                    {
                        Some(v)
                    }
                    _ => return Err(scim_invalid("filter", "supported: displayName eq \"...\"")),
                }
            }
            None => None,
        };
        let members = self.all_members(ctx).await?;
        let mut groups = Vec::new();
        for (name, builtin) in self.role_names(ctx).await? {
            if wanted.as_ref().is_none_or(|w| *w == name) {
                groups.push(group_of(&members, &name, builtin));
            }
        }
        let total = i64::try_from(groups.len()).unwrap_or(i64::MAX);
        Ok(list(total, 1, groups))
    }

    pub async fn scim_get_group(&self, ctx: &TenantCtx, id: &str) -> Result<Value> {
        let (name, builtin) = self.find_group(ctx, id).await?;
        self.group_resource(ctx, &name, builtin).await
    }

    /// Gives or takes role `group` for `user`.
    async fn set_role(
        &self,
        ctx: &TenantCtx,
        group: &str,
        builtin: bool,
        user: &str,
        give: bool,
    ) -> Result<()> {
        let m = self
            .scim_member(ctx, user)
            .await
            .map_err(|_| scim_invalid("members", format!("no user {user} in this tenant")))?;
        let mut list = if builtin {
            m.roles.clone()
        } else {
            m.custom_roles.clone()
        };
        let has = list.iter().any(|r| r == group);
        if has == give {
            return Ok(());
        }
        if give {
            list.push(group.to_owned());
        } else {
            list.retain(|r| r != group);
        }
        let mut change = MemberChange::default();
        if builtin {
            change.roles = Some(list);
        } else {
            change.custom_roles = Some(list);
        }
        self.apply_user_change(
            ctx,
            &m,
            change,
            if give {
                "user.role_granted"
            } else {
                "user.role_revoked"
            },
        )
        .await?;
        Ok(())
    }

    fn member_ids(value: &Value) -> Result<Vec<String>> {
        let items = match value {
            Value::Array(a) => a.clone(),
            Value::Object(_) => vec![value.clone()],
            _ => return Err(scim_invalid("members", "must be a list of {\"value\": id}")),
        };
        items
            .iter()
            .map(|i| {
                i["value"]
                    .as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| scim_invalid("members", "each needs a value"))
            })
            .collect()
    }

    /// Links a group to an existing role (POST), applying the members given.
    pub async fn scim_create_group(&self, ctx: &TenantCtx, body: Value) -> Result<Value> {
        let name = body["displayName"]
            .as_str()
            .ok_or_else(|| scim_invalid("displayName", "is required"))?;
        let (name, builtin) = self.find_group(ctx, name).await.map_err(|_| {
            scim_invalid(
                "displayName",
                "names no role of this tenant: create the custom role (with its permissions) first",
            )
        })?;
        if let Some(members) = body.get("members") {
            for id in Self::member_ids(members)? {
                self.set_role(ctx, &name, builtin, &id, true).await?;
            }
        }
        self.group_resource(ctx, &name, builtin).await
    }

    /// PUT: the group's members become exactly those given.
    pub async fn scim_replace_group(
        &self,
        ctx: &TenantCtx,
        id: &str,
        body: Value,
    ) -> Result<Value> {
        let (name, builtin) = self.find_group(ctx, id).await?;
        let wanted = Self::member_ids(body.get("members").unwrap_or(&json!([])))?;
        let current = self.group_resource(ctx, &name, builtin).await?;
        let current: Vec<String> = Self::member_ids(&current["members"])?;
        // Grant first, then revoke: the last-admin rule then judges the final set.
        for id in wanted.iter().filter(|w| !current.contains(w)) {
            self.set_role(ctx, &name, builtin, id, true).await?;
        }
        for id in current.iter().filter(|c| !wanted.contains(c)) {
            self.set_role(ctx, &name, builtin, id, false).await?;
        }
        self.group_resource(ctx, &name, builtin).await
    }

    pub async fn scim_patch_group(&self, ctx: &TenantCtx, id: &str, body: Value) -> Result<Value> {
        let (name, builtin) = self.find_group(ctx, id).await?;
        for (op, path, value) in operations(&body)? {
            let path = path.unwrap_or_default();
            let lower = path.to_ascii_lowercase();
            match op.as_str() {
                "add" if lower == "members" || lower.is_empty() => {
                    let v = if lower.is_empty() {
                        value["members"].clone()
                    } else {
                        value
                    };
                    for u in Self::member_ids(&v)? {
                        self.set_role(ctx, &name, builtin, &u, true).await?;
                    }
                }
                "remove" if lower == "members" => {
                    for u in Self::member_ids(&value)? {
                        self.set_role(ctx, &name, builtin, &u, false).await?;
                    }
                }
                // `members[value eq "id"]` (RFC 7644 3.5.2.2).
                "remove" if lower.starts_with("members[value eq ") && lower.ends_with(']') => {
                    let inner = &path["members[value eq ".len()..path.len() - 1];
                    let u: String = serde_json::from_str(inner.trim())
                        .map_err(|_| scim_invalid("path", "members[value eq \"id\"]"))?;
                    self.set_role(ctx, &name, builtin, &u, false).await?;
                }
                "replace" if lower == "members" => {
                    let body = json!({ "members": value });
                    self.scim_replace_group(ctx, &name, body).await?;
                }
                // The display name is the role's name: renaming is not supported.
                "replace" if lower == "displayname" || lower.is_empty() => {
                    let wanted = if lower.is_empty() {
                        &value["displayName"]
                    } else {
                        &value
                    };
                    if wanted.as_str().is_some_and(|w| w != name) {
                        return Err(scim_invalid("displayName", "a role cannot be renamed"));
                    }
                }
                _ => return Err(scim_invalid("path", format!("unsupported: {op} {path}"))),
            }
        }
        self.group_resource(ctx, &name, builtin).await
    }

    /// RFC 7643 5: what this service provider supports.
    pub fn scim_service_provider_config(&self) -> Value {
        json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:ServiceProviderConfig"],
            "documentationUri": "https://github.com/agentplane/agentplane/blob/main/docs/identity.md",
            "patch": {"supported": true},
            "bulk": {"supported": false, "maxOperations": 0, "maxPayloadSize": 0},
            "filter": {"supported": true, "maxResults": MAX_COUNT},
            "changePassword": {"supported": false},
            "sort": {"supported": false},
            "etag": {"supported": false},
            "authenticationSchemes": [{
                "type": "oauthbearertoken",
                "name": "Tenant SCIM token",
                "description": "Authorization: Bearer scim_..., created by a tenant admin",
                "primary": true,
            }],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_are_parsed_strictly() {
        let f = parse_filter("userName eq \"Bob@Example.com\"")
            .ok()
            .unwrap_or_default();
        assert_eq!(f.email.as_deref(), Some("bob@example.com"));
        let f = parse_filter("externalId eq \"00u1\"")
            .ok()
            .unwrap_or_default();
        assert_eq!(f.external_id.as_deref(), Some("00u1"));
        for bad in ["userName co \"b\"", "name eq \"x\"", "userName eq bob", ""] {
            assert!(parse_filter(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn tokens_have_one_shape() {
        assert!(split(&format!("scim_{}_{}", "a".repeat(16), "b".repeat(64))).is_some());
        assert!(split("scim_x_y").is_none());
        assert!(split(&format!("ap_{}_{}", "a".repeat(16), "b".repeat(64))).is_none());
    }
}
