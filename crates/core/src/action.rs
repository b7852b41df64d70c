//! The admin action registry: every admin action is declared here once. The HTTP router,
//! the permission check and the AXAG semantic manifest (`GET /v1/axag/manifest`) are all
//! derived from these declarations; later planes (MCP tools, console `axag-*` attributes)
//! read the same table.

use crate::authz::Permission;
use crate::tenant::TenantStatus;
use serde_json::{json, Map, Value};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActionType {
    Read,
    Write,
    Delete,
}

impl ActionType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Write => "write",
            Self::Delete => "delete",
        }
    }
}

/// Whether an action works inside one tenant (the tenant comes from the caller's
/// credentials and the path, never from parameters) or across the platform.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    Tenant,
    Platform,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tenant => "tenant",
            Self::Platform => "platform",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Risk {
    None,
    Low,
    Medium,
    High,
    Critical,
}

impl Risk {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Low => "low",
            Self::Medium => "medium",
            Self::High => "high",
            Self::Critical => "critical",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
    Patch,
    Put,
    Delete,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Get => "GET",
            Self::Post => "POST",
            Self::Patch => "PATCH",
            Self::Put => "PUT",
            Self::Delete => "DELETE",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamType {
    String,
    Integer,
    Boolean,
    Object,
    Array,
}

impl ParamType {
    fn as_str(self) -> &'static str {
        match self {
            Self::String => "string",
            Self::Integer => "integer",
            Self::Boolean => "boolean",
            Self::Object => "object",
            Self::Array => "array",
        }
    }
}

/// One parameter of an action, in the shape of the AXAG manifest.
#[derive(Clone, Copy, Debug)]
pub struct Param {
    pub name: &'static str,
    pub ty: ParamType,
    pub required: bool,
    pub enum_values: &'static [&'static str],
    pub format: Option<&'static str>,
    pub minimum: Option<i64>,
    pub maximum: Option<i64>,
    pub default: Option<&'static str>,
    pub description: &'static str,
}

impl Param {
    pub const fn new(
        name: &'static str,
        ty: ParamType,
        required: bool,
        description: &'static str,
    ) -> Self {
        Self {
            name,
            ty,
            required,
            enum_values: &[],
            format: None,
            minimum: None,
            maximum: None,
            default: None,
            description,
        }
    }
    pub const fn one_of(mut self, values: &'static [&'static str]) -> Self {
        self.enum_values = values;
        self
    }
    pub const fn format(mut self, f: &'static str) -> Self {
        self.format = Some(f);
        self
    }
    pub const fn range(mut self, min: i64, max: i64) -> Self {
        self.minimum = Some(min);
        self.maximum = Some(max);
        self
    }
    pub const fn default(mut self, d: &'static str) -> Self {
        self.default = Some(d);
        self
    }

    fn manifest(&self) -> Value {
        let mut m = Map::new();
        m.insert("type".into(), json!(self.ty.as_str()));
        m.insert("required".into(), json!(self.required));
        if !self.enum_values.is_empty() {
            m.insert("enum".into(), json!(self.enum_values));
        }
        if let Some(f) = self.format {
            m.insert("format".into(), json!(f));
        }
        if let Some(v) = self.minimum {
            m.insert("minimum".into(), json!(v));
        }
        if let Some(v) = self.maximum {
            m.insert("maximum".into(), json!(v));
        }
        if let Some(d) = self.default {
            m.insert("default".into(), json!(d));
        }
        m.insert("description".into(), json!(self.description));
        Value::Object(m)
    }
}

/// The declaration of one admin action.
#[derive(Clone, Copy, Debug)]
pub struct ActionSpec {
    pub intent: &'static str,
    pub entity: &'static str,
    pub action_type: ActionType,
    pub scope: Scope,
    pub method: Method,
    /// axum path syntax (`/v1/tenants/{tenant_id}`).
    pub path: &'static str,
    /// `None`: any authenticated caller.
    pub permission: Option<Permission>,
    pub parameters: &'static [Param],
    pub preconditions: &'static [&'static str],
    pub postconditions: &'static [&'static str],
    pub risk_level: Risk,
    /// The request must carry `?confirm=true` (an agent must have asked its person).
    pub confirmation_required: bool,
    pub idempotent: bool,
    pub is_async: bool,
    pub side_effects: &'static [&'static str],
    pub description: &'static str,
    /// Tenant states in which tenant members may call it (platform admins are not held back
    /// by state; the lifecycle state machine governs what they may do).
    pub tenant_states: &'static [TenantStatus],
}

const ACTIVE: &[TenantStatus] = &[TenantStatus::Active];
const VISIBLE: &[TenantStatus] = &[TenantStatus::Provisioning, TenantStatus::Active];

const fn spec(
    intent: &'static str,
    entity: &'static str,
    method: Method,
    path: &'static str,
) -> ActionSpec {
    ActionSpec {
        intent,
        entity,
        action_type: ActionType::Read,
        scope: Scope::Tenant,
        method,
        path,
        permission: None,
        parameters: &[],
        preconditions: &[],
        postconditions: &[],
        risk_level: Risk::None,
        confirmation_required: false,
        idempotent: true,
        is_async: false,
        side_effects: &[],
        description: "",
        tenant_states: ACTIVE,
    }
}

const CURSOR: Param = Param::new(
    "cursor",
    ParamType::String,
    false,
    "opaque cursor from the previous page",
);
const LIMIT: Param = Param::new("limit", ParamType::Integer, false, "page size").range(1, 500);
const CONFIRM: Param = Param::new(
    "confirm",
    ParamType::Boolean,
    true,
    "must be true: the caller confirmed this action",
);

pub static DEBUG_IDENTITY: ActionSpec = ActionSpec {
    entity: "identity",
    scope: Scope::Platform,
    description:
        "Show how the server reads the caller's credentials (roles, scopes, tenant access)",
    ..spec(
        "admin.debug_identity",
        "identity",
        Method::Get,
        "/v1/admin/debug/identity",
    )
};

pub static LIST_PLANS: ActionSpec = ActionSpec {
    scope: Scope::Platform,
    permission: Some(Permission::PlansRead),
    parameters: &[CURSOR, LIMIT],
    description: "List the plans tenants can be on",
    ..spec("admin.list_plans", "plan", Method::Get, "/v1/admin/plans")
};

pub static GET_PLAN: ActionSpec = ActionSpec {
    scope: Scope::Platform,
    permission: Some(Permission::PlansRead),
    parameters: &[Param::new("plan_id", ParamType::String, true, "plan id")],
    description: "Show one plan and its limits",
    ..spec(
        "admin.get_plan",
        "plan",
        Method::Get,
        "/v1/admin/plans/{plan_id}",
    )
};

pub static CREATE_PLAN: ActionSpec = ActionSpec {
    action_type: ActionType::Write,
    scope: Scope::Platform,
    permission: Some(Permission::PlansWrite),
    parameters: &[
        Param::new(
            "id",
            ParamType::String,
            true,
            "plan id (a-z, 0-9, '-', '_')",
        ),
        Param::new("name", ParamType::String, true, "display name"),
        Param::new(
            "limits",
            ParamType::Object,
            true,
            "monthly_messages, monthly_tokens, requests_per_minute, max_concurrent_runs",
        ),
        Param::new(
            "features",
            ParamType::Array,
            false,
            "feature flags the plan grants",
        ),
    ],
    preconditions: &["caller must have platform_admin role", "plan id not taken"],
    postconditions: &["plan created", "audit log entry created"],
    risk_level: Risk::Medium,
    side_effects: &["audit_log"],
    description: "Create a plan",
    ..spec("admin.create_plan", "plan", Method::Post, "/v1/admin/plans")
};

pub static LIST_TENANTS: ActionSpec = ActionSpec {
    scope: Scope::Platform,
    permission: Some(Permission::TenantsList),
    parameters: &[CURSOR, LIMIT],
    description: "List every tenant of the deployment",
    ..spec(
        "admin.list_tenants",
        "tenant",
        Method::Get,
        "/v1/admin/tenants",
    )
};

pub static CREATE_TENANT: ActionSpec = ActionSpec {
    action_type: ActionType::Write,
    scope: Scope::Platform,
    permission: Some(Permission::TenantsCreate),
    parameters: &[
        Param::new("name", ParamType::String, true, "organisation name"),
        Param::new(
            "admin_email",
            ParamType::String,
            true,
            "e-mail of the first tenant admin",
        )
        .format("email"),
        Param::new("plan_id", ParamType::String, false, "plan").default("free"),
        Param::new(
            "slug",
            ParamType::String,
            false,
            "subdomain label; derived from the name if absent",
        ),
        Param::new("region", ParamType::String, false, "data-residency region").default("default"),
    ],
    preconditions: &["caller must have platform_admin role", "plan exists"],
    postconditions: &[
        "tenant created in state provisioning",
        "provisioning job enqueued",
        "audit log entry created",
    ],
    risk_level: Risk::Medium,
    idempotent: false,
    is_async: true,
    side_effects: &["audit_log", "provisioning_job"],
    description: "Create a tenant; provisioning runs in the background",
    ..spec("admin.create_tenant", "tenant", Method::Post, "/v1/tenants")
};

pub static GET_TENANT: ActionSpec = ActionSpec {
    permission: Some(Permission::TenantRead),
    description: "Show the current tenant",
    tenant_states: VISIBLE,
    ..spec(
        "admin.get_tenant",
        "tenant",
        Method::Get,
        "/v1/tenants/{tenant_id}",
    )
};

pub static CHANGE_TENANT_PLAN: ActionSpec = ActionSpec {
    action_type: ActionType::Write,
    permission: Some(Permission::TenantsManage),
    parameters: &[Param::new(
        "plan_id",
        ParamType::String,
        true,
        "the new plan",
    )],
    preconditions: &["caller must have platform_admin role", "plan exists"],
    postconditions: &[
        "new limits apply to the next request",
        "audit log entry created",
    ],
    risk_level: Risk::High,
    side_effects: &["audit_log", "quota_change"],
    description: "Move a tenant to another plan, with immediate effect",
    ..spec(
        "admin.change_tenant_plan",
        "tenant",
        Method::Patch,
        "/v1/admin/tenants/{tenant_id}/plan",
    )
};

pub static SUSPEND_TENANT: ActionSpec = ActionSpec {
    action_type: ActionType::Write,
    permission: Some(Permission::TenantsManage),
    parameters: &[
        CONFIRM,
        Param::new(
            "reason",
            ParamType::String,
            false,
            "why, for the audit trail",
        ),
    ],
    preconditions: &["caller must have platform_admin role", "tenant is active"],
    postconditions: &["every tenant request is refused", "audit log entry created"],
    risk_level: Risk::High,
    confirmation_required: true,
    side_effects: &["audit_log", "access_revoked"],
    description: "Suspend a tenant",
    ..spec(
        "admin.suspend_tenant",
        "tenant",
        Method::Post,
        "/v1/admin/tenants/{tenant_id}/suspend",
    )
};

pub static REACTIVATE_TENANT: ActionSpec = ActionSpec {
    action_type: ActionType::Write,
    permission: Some(Permission::TenantsManage),
    preconditions: &[
        "caller must have platform_admin role",
        "tenant is suspended or deleted and not purged",
    ],
    postconditions: &["tenant is active", "audit log entry created"],
    risk_level: Risk::Medium,
    side_effects: &["audit_log"],
    description: "Reactivate a suspended or soft-deleted tenant",
    ..spec(
        "admin.reactivate_tenant",
        "tenant",
        Method::Post,
        "/v1/admin/tenants/{tenant_id}/reactivate",
    )
};

pub static DELETE_TENANT: ActionSpec = ActionSpec {
    action_type: ActionType::Delete,
    permission: Some(Permission::TenantsManage),
    parameters: &[CONFIRM],
    preconditions: &["caller must have platform_admin role"],
    postconditions: &[
        "tenant is soft-deleted and refused",
        "purge job scheduled after the grace period",
        "audit log entry created",
    ],
    risk_level: Risk::Critical,
    confirmation_required: true,
    side_effects: &["audit_log", "access_revoked", "purge_job"],
    description: "Soft-delete a tenant; its data is purged after the grace period",
    ..spec(
        "admin.delete_tenant",
        "tenant",
        Method::Delete,
        "/v1/admin/tenants/{tenant_id}",
    )
};

pub static PURGE_TENANT: ActionSpec = ActionSpec {
    action_type: ActionType::Delete,
    permission: Some(Permission::TenantsManage),
    parameters: &[CONFIRM],
    preconditions: &[
        "caller must have platform_admin role",
        "tenant is soft-deleted",
    ],
    postconditions: &["purge job enqueued to run now", "audit log entry created"],
    risk_level: Risk::Critical,
    confirmation_required: true,
    is_async: true,
    side_effects: &["audit_log", "data_destroyed"],
    description: "Purge a soft-deleted tenant's data now instead of after the grace period",
    ..spec(
        "admin.purge_tenant",
        "tenant",
        Method::Post,
        "/v1/admin/tenants/{tenant_id}/purge",
    )
};

pub static GET_TENANT_USAGE: ActionSpec = ActionSpec {
    permission: Some(Permission::UsageRead),
    parameters: &[Param::new(
        "period",
        ParamType::String,
        false,
        "YYYY-MM; the current month if absent",
    )],
    preconditions: &["caller must have tenant_admin or auditor role"],
    description: "Usage of the current period against the plan's quotas",
    ..spec(
        "admin.get_tenant_usage",
        "usage",
        Method::Get,
        "/v1/admin/tenants/{tenant_id}/usage",
    )
};

pub static EXPORT_USAGE: ActionSpec = ActionSpec {
    scope: Scope::Platform,
    permission: Some(Permission::UsageExportAll),
    parameters: &[
        Param::new("format", ParamType::String, false, "csv or json")
            .one_of(&["csv", "json"])
            .default("json"),
        Param::new(
            "from",
            ParamType::String,
            false,
            "start (inclusive), date or RFC 3339",
        )
        .format("date"),
        Param::new(
            "to",
            ParamType::String,
            false,
            "end (exclusive), date or RFC 3339",
        )
        .format("date"),
    ],
    preconditions: &["caller must have platform_admin role"],
    description: "Export every tenant's usage records in a date range",
    ..spec(
        "admin.export_usage",
        "usage",
        Method::Get,
        "/v1/admin/usage/export",
    )
};

pub static RUN_NEXT_JOB: ActionSpec = ActionSpec {
    action_type: ActionType::Write,
    scope: Scope::Platform,
    permission: Some(Permission::JobsRun),
    preconditions: &["caller must have platform_admin role"],
    postconditions: &["the next due job ran once"],
    risk_level: Risk::Low,
    idempotent: false,
    side_effects: &["audit_log"],
    description: "Run the next due provisioning job now",
    ..spec(
        "admin.run_next_job",
        "job",
        Method::Post,
        "/v1/provisioning/jobs/run-next",
    )
};

pub static RUN_RETENTION: ActionSpec = ActionSpec {
    action_type: ActionType::Write,
    scope: Scope::Platform,
    permission: Some(Permission::JobsRun),
    parameters: &[CONFIRM],
    preconditions: &["caller must have platform_admin role"],
    postconditions: &[
        "every active tenant gets a retention job (the worker also schedules them daily)",
        "audit log entry created",
    ],
    risk_level: Risk::High,
    confirmation_required: true,
    idempotent: false,
    is_async: true,
    side_effects: &["audit_log", "data_erased"],
    description: "Apply every tenant's data and audit retention now",
    ..spec(
        "admin.run_retention",
        "job",
        Method::Post,
        "/v1/admin/retention/run",
    )
};

pub static LIST_AUDIT_EVENTS: ActionSpec = ActionSpec {
    entity: "audit_event",
    permission: Some(Permission::AuditRead),
    parameters: &[
        Param::new(
            "action",
            ParamType::String,
            false,
            "only events of this action",
        ),
        Param::new(
            "actor_id",
            ParamType::String,
            false,
            "only events of this actor",
        ),
        Param::new("from", ParamType::String, false, "start (inclusive)").format("date"),
        Param::new("to", ParamType::String, false, "end (exclusive)").format("date"),
        Param::new(
            "purpose",
            ParamType::String,
            false,
            "why the trail is read, recorded in the trail",
        ),
        CURSOR,
        LIMIT,
    ],
    preconditions: &["caller must have tenant_admin or auditor role"],
    postconditions: &["the read is itself recorded in the audit log"],
    side_effects: &["audit_log"],
    description: "Search the current tenant's audit trail",
    ..spec(
        "admin.list_audit_events",
        "audit_event",
        Method::Get,
        "/v1/tenants/{tenant_id}/audit",
    )
};

pub static LIST_USERS: ActionSpec = ActionSpec {
    permission: Some(Permission::UsersRead),
    parameters: &[
        Param::new(
            "role_filter",
            ParamType::String,
            false,
            "only users holding this role",
        ),
        Param::new(
            "status_filter",
            ParamType::String,
            false,
            "only users in this status",
        )
        .one_of(&["active", "inactive", "suspended"]),
        CURSOR,
        LIMIT,
    ],
    preconditions: &["caller must have tenant_admin role"],
    description: "List all users in the current tenant",
    ..spec(
        "admin.list_users",
        "user",
        Method::Get,
        "/v1/tenants/{tenant_id}/users",
    )
};

const USER_ID: Param = Param::new("user_id", ParamType::String, true, "the user").format("uuid");

pub static GET_USER: ActionSpec = ActionSpec {
    permission: Some(Permission::UsersRead),
    parameters: &[USER_ID],
    preconditions: &["caller must have tenant_admin role"],
    description: "Show one user of the tenant: roles, custom roles, status, last sign-in",
    ..spec(
        "admin.get_user",
        "user",
        Method::Get,
        "/v1/tenants/{tenant_id}/users/{user_id}",
    )
};

pub static UPDATE_USER: ActionSpec = ActionSpec {
    action_type: ActionType::Write,
    permission: Some(Permission::UsersWrite),
    parameters: &[
        USER_ID,
        Param::new(
            "roles",
            ParamType::Array,
            false,
            "built-in roles: tenant_admin, auditor, member",
        ),
        Param::new(
            "custom_roles",
            ParamType::Array,
            false,
            "names of the tenant's custom roles",
        ),
        Param::new("status", ParamType::String, false, "membership status").one_of(&[
            "active",
            "inactive",
            "suspended",
        ]),
        Param::new(
            "name",
            ParamType::String,
            false,
            "display name in this tenant",
        ),
    ],
    preconditions: &[
        "caller must have tenant_admin role",
        "the tenant keeps at least one active tenant_admin",
    ],
    postconditions: &[
        "the user's next request is judged by the new roles",
        "a user no longer active is signed out",
        "audit log entry created",
    ],
    risk_level: Risk::Medium,
    side_effects: &["audit_log", "access_changed"],
    description: "Change a user's roles, custom roles, status or name in this tenant",
    ..spec(
        "admin.update_user",
        "user",
        Method::Patch,
        "/v1/tenants/{tenant_id}/users/{user_id}",
    )
};

pub static REMOVE_USER: ActionSpec = ActionSpec {
    action_type: ActionType::Delete,
    permission: Some(Permission::UsersWrite),
    parameters: &[USER_ID, CONFIRM],
    preconditions: &[
        "caller must have tenant_admin role",
        "the tenant keeps at least one active tenant_admin",
    ],
    postconditions: &[
        "the membership is gone and its sessions are revoked",
        "the person's memberships of other tenants are untouched",
        "audit log entry created",
    ],
    risk_level: Risk::High,
    confirmation_required: true,
    side_effects: &["audit_log", "access_revoked"],
    description: "Remove a user from the tenant, signing them out at once",
    ..spec(
        "admin.remove_user",
        "user",
        Method::Delete,
        "/v1/tenants/{tenant_id}/users/{user_id}",
    )
};

const ROLE_NAME: Param = Param::new(
    "role_name",
    ParamType::String,
    true,
    "the custom role's name",
);

pub static LIST_ROLES: ActionSpec = ActionSpec {
    permission: Some(Permission::RolesRead),
    description: "List the built-in and custom roles of the tenant with their permissions",
    ..spec(
        "admin.list_roles",
        "role",
        Method::Get,
        "/v1/tenants/{tenant_id}/roles",
    )
};

pub static CREATE_ROLE: ActionSpec = ActionSpec {
    action_type: ActionType::Write,
    permission: Some(Permission::RolesWrite),
    parameters: &[
        Param::new("name", ParamType::String, true, "a-z, 0-9, '_', '-'"),
        Param::new(
            "description",
            ParamType::String,
            false,
            "what the role is for",
        ),
        Param::new(
            "permissions",
            ParamType::Array,
            true,
            "tenant permissions (docs/permissions.md)",
        ),
    ],
    preconditions: &["caller must have tenant_admin role"],
    postconditions: &["role created", "audit log entry created"],
    risk_level: Risk::Medium,
    idempotent: false,
    side_effects: &["audit_log"],
    description: "Create a custom role made of named permissions",
    ..spec(
        "admin.create_role",
        "role",
        Method::Post,
        "/v1/tenants/{tenant_id}/roles",
    )
};

pub static UPDATE_ROLE: ActionSpec = ActionSpec {
    action_type: ActionType::Write,
    permission: Some(Permission::RolesWrite),
    parameters: &[
        ROLE_NAME,
        Param::new(
            "description",
            ParamType::String,
            false,
            "what the role is for",
        ),
        Param::new(
            "permissions",
            ParamType::Array,
            false,
            "the new permission set",
        ),
    ],
    preconditions: &["caller must have tenant_admin role"],
    postconditions: &[
        "every holder's next request is judged by the new permissions",
        "audit log entry created",
    ],
    risk_level: Risk::Medium,
    side_effects: &["audit_log", "access_changed"],
    description: "Change a custom role's permissions or description",
    ..spec(
        "admin.update_role",
        "role",
        Method::Patch,
        "/v1/tenants/{tenant_id}/roles/{role_name}",
    )
};

pub static DELETE_ROLE: ActionSpec = ActionSpec {
    action_type: ActionType::Delete,
    permission: Some(Permission::RolesWrite),
    parameters: &[ROLE_NAME, CONFIRM],
    preconditions: &[
        "caller must have tenant_admin role",
        "no user holds the role",
    ],
    postconditions: &["role deleted", "audit log entry created"],
    risk_level: Risk::Medium,
    confirmation_required: true,
    side_effects: &["audit_log"],
    description: "Delete a custom role no user holds",
    ..spec(
        "admin.delete_role",
        "role",
        Method::Delete,
        "/v1/tenants/{tenant_id}/roles/{role_name}",
    )
};

pub static LIST_INVITATIONS: ActionSpec = ActionSpec {
    permission: Some(Permission::UsersRead),
    parameters: &[CURSOR, LIMIT],
    preconditions: &["caller must have tenant_admin role"],
    description: "List the tenant's invitations and their state",
    ..spec(
        "admin.list_invitations",
        "invitation",
        Method::Get,
        "/v1/tenants/{tenant_id}/invitations",
    )
};

pub static INVITE_USER: ActionSpec = ActionSpec {
    action_type: ActionType::Write,
    permission: Some(Permission::UsersWrite),
    parameters: &[
        Param::new("email", ParamType::String, true, "who is invited"),
        Param::new(
            "roles",
            ParamType::Array,
            false,
            "built-in roles (default member)",
        ),
        Param::new("custom_roles", ParamType::Array, false, "custom role names"),
    ],
    preconditions: &["caller must have tenant_admin role"],
    postconditions: &[
        "a single-use invitation bound to this tenant and e-mail is mailed",
        "audit log entry created",
    ],
    risk_level: Risk::Medium,
    idempotent: false,
    is_async: true,
    side_effects: &["audit_log", "email_sent"],
    description: "Invite someone by e-mail to join the tenant with the given roles",
    ..spec(
        "admin.invite_user",
        "invitation",
        Method::Post,
        "/v1/tenants/{tenant_id}/invitations",
    )
};

pub static REVOKE_INVITATION: ActionSpec = ActionSpec {
    action_type: ActionType::Delete,
    permission: Some(Permission::UsersWrite),
    parameters: &[
        Param::new("invitation_id", ParamType::String, true, "the invitation").format("uuid"),
    ],
    preconditions: &["caller must have tenant_admin role", "not accepted yet"],
    postconditions: &[
        "the invitation can no longer be accepted",
        "audit log entry created",
    ],
    risk_level: Risk::Low,
    side_effects: &["audit_log"],
    description: "Revoke an invitation that was not accepted yet",
    ..spec(
        "admin.revoke_invitation",
        "invitation",
        Method::Delete,
        "/v1/tenants/{tenant_id}/invitations/{invitation_id}",
    )
};

pub static LIST_DELEGATIONS: ActionSpec = ActionSpec {
    permission: Some(Permission::UsersRead),
    preconditions: &["caller must have tenant_admin role"],
    description: "List the delegated tokens issued for agents acting for the tenant's people",
    ..spec(
        "admin.list_delegations",
        "delegation",
        Method::Get,
        "/v1/tenants/{tenant_id}/delegations",
    )
};

pub static CREATE_DELEGATION: ActionSpec = ActionSpec {
    action_type: ActionType::Write,
    permission: Some(Permission::UsersWrite),
    parameters: &[
        Param::new(
            "user_id",
            ParamType::String,
            true,
            "the person the agent acts for",
        )
        .format("uuid"),
        Param::new(
            "agent",
            ParamType::String,
            true,
            "the agent's label, named in every audit event",
        ),
        Param::new(
            "permissions",
            ParamType::Array,
            false,
            "at most these of the person's permissions (default: all of them)",
        ),
        Param::new("ttl_secs", ParamType::Integer, false, "lifetime").range(60, 2_592_000),
    ],
    preconditions: &[
        "caller must have tenant_admin role",
        "the person is an active member",
        "the permissions are held by the person and the caller",
    ],
    postconditions: &[
        "a token bound to this tenant, never wider than the person, expiring",
        "audit log entry created",
    ],
    risk_level: Risk::High,
    idempotent: false,
    side_effects: &["audit_log", "credential_issued"],
    description: "Issue a token with which an AI agent acts for a person of the tenant",
    ..spec(
        "admin.create_delegation",
        "delegation",
        Method::Post,
        "/v1/tenants/{tenant_id}/delegations",
    )
};

pub static REVOKE_DELEGATION: ActionSpec = ActionSpec {
    action_type: ActionType::Delete,
    permission: Some(Permission::UsersWrite),
    parameters: &[
        Param::new("delegation_id", ParamType::String, true, "the delegation").format("uuid"),
    ],
    preconditions: &["caller must have tenant_admin role"],
    postconditions: &[
        "the token is refused from the next request on",
        "audit log entry created",
    ],
    risk_level: Risk::Medium,
    side_effects: &["audit_log", "access_revoked"],
    description: "Revoke a delegated token, with immediate effect",
    ..spec(
        "admin.revoke_delegation",
        "delegation",
        Method::Delete,
        "/v1/tenants/{tenant_id}/delegations/{delegation_id}",
    )
};

pub static CREATE_SCIM_TOKEN: ActionSpec = ActionSpec {
    action_type: ActionType::Write,
    permission: Some(Permission::UsersWrite),
    parameters: &[CONFIRM],
    preconditions: &["caller must have tenant_admin role"],
    postconditions: &[
        "a new SCIM token is shown once; the previous one stops working",
        "audit log entry created",
    ],
    risk_level: Risk::High,
    confirmation_required: true,
    idempotent: false,
    side_effects: &["audit_log", "credential_issued"],
    description: "Create (or replace) the token the tenant's identity provider provisions users with over SCIM 2.0",
    ..spec(
        "admin.create_scim_token",
        "scim_token",
        Method::Post,
        "/v1/tenants/{tenant_id}/scim-token",
    )
};

pub static DELETE_SCIM_TOKEN: ActionSpec = ActionSpec {
    action_type: ActionType::Delete,
    permission: Some(Permission::UsersWrite),
    parameters: &[CONFIRM],
    preconditions: &["caller must have tenant_admin role"],
    postconditions: &["SCIM provisioning stops at once", "audit log entry created"],
    risk_level: Risk::High,
    confirmation_required: true,
    side_effects: &["audit_log", "access_revoked"],
    description: "Revoke the tenant's SCIM token",
    ..spec(
        "admin.delete_scim_token",
        "scim_token",
        Method::Delete,
        "/v1/tenants/{tenant_id}/scim-token",
    )
};

pub static ERASE_USER: ActionSpec = ActionSpec {
    action_type: ActionType::Delete,
    permission: Some(Permission::DataErase),
    parameters: &[USER_ID, CONFIRM],
    preconditions: &[
        "caller must have tenant_admin role",
        "the tenant keeps at least one active tenant_admin",
    ],
    postconditions: &[
        "everything the tenant holds about the person is removed from every store",
        "the audit chain stays verifiable (pseudonymised)",
        "a signed erasure receipt is available",
        "audit log entry created",
    ],
    risk_level: Risk::Critical,
    confirmation_required: true,
    idempotent: false,
    is_async: true,
    side_effects: &["audit_log", "data_erased", "access_revoked"],
    description: "Erase a data subject (GDPR article 17): a durable job with a signed receipt",
    ..spec(
        "admin.erase_user",
        "user",
        Method::Post,
        "/v1/tenants/{tenant_id}/users/{user_id}/erase",
    )
};

pub static GET_ERASURE_RECEIPT: ActionSpec = ActionSpec {
    permission: Some(Permission::AuditRead),
    parameters: &[Param::new(
        "receipt_id",
        ParamType::String,
        true,
        "the erasure job's id",
    )
    .format("uuid")],
    description: "Show a signed erasure receipt: what was removed from which store",
    ..spec(
        "admin.get_erasure_receipt",
        "erasure_receipt",
        Method::Get,
        "/v1/tenants/{tenant_id}/erasures/{receipt_id}",
    )
};

const EXPORT_ID: Param =
    Param::new("export_id", ParamType::String, true, "the export").format("uuid");

pub static EXPORT_TENANT_DATA: ActionSpec = ActionSpec {
    entity: "tenant_data",
    action_type: ActionType::Read,
    permission: Some(Permission::DataExport),
    parameters: &[
        Param::new(
            "export_type",
            ParamType::String,
            true,
            "what to export: full, users_only, audit_logs or gdpr_request",
        )
        .one_of(&["full", "users_only", "audit_logs", "gdpr_request"]),
        Param::new(
            "date_range",
            ParamType::Object,
            false,
            "{start, end}: days (YYYY-MM-DD), inclusive; selects usage records and audit events",
        ),
        Param::new(
            "format",
            ParamType::String,
            false,
            "zip (default), json or csv",
        )
        .one_of(&["json", "csv", "zip"]),
        Param::new(
            "user_id",
            ParamType::String,
            false,
            "the data subject of a gdpr_request",
        )
        .format("uuid"),
        CONFIRM,
    ],
    preconditions: &[
        "caller must have tenant_admin role",
        "export must comply with data retention policy",
    ],
    postconditions: &["export job created", "audit log entry created"],
    risk_level: Risk::High,
    confirmation_required: true,
    idempotent: false,
    is_async: true,
    side_effects: &["audit_log", "object_store"],
    description: "Export all tenant data for compliance or migration purposes",
    ..spec(
        "admin.export_tenant_data",
        "tenant_data",
        Method::Post,
        "/v1/tenants/{tenant_id}/exports",
    )
};

pub static LIST_EXPORTS: ActionSpec = ActionSpec {
    entity: "export",
    permission: Some(Permission::DataExport),
    parameters: &[CURSOR, LIMIT],
    description: "The tenant's exports: status, manifest, expiry",
    tenant_states: VISIBLE,
    ..spec(
        "admin.list_exports",
        "export",
        Method::Get,
        "/v1/tenants/{tenant_id}/exports",
    )
};

pub static GET_EXPORT: ActionSpec = ActionSpec {
    entity: "export",
    permission: Some(Permission::DataExport),
    parameters: &[EXPORT_ID],
    description: "One export: status, manifest (files, SHA-256, record counts), expiry",
    tenant_states: VISIBLE,
    ..spec(
        "admin.get_export",
        "export",
        Method::Get,
        "/v1/tenants/{tenant_id}/exports/{export_id}",
    )
};

pub static CREATE_EXPORT_LINK: ActionSpec = ActionSpec {
    entity: "export",
    action_type: ActionType::Write,
    permission: Some(Permission::DataExport),
    parameters: &[EXPORT_ID],
    preconditions: &["caller must have tenant_admin role", "the export is ready"],
    postconditions: &[
        "a download link valid for five minutes",
        "audit log entry created",
    ],
    risk_level: Risk::High,
    side_effects: &["audit_log"],
    description: "A short-lived signed link to download a ready export",
    tenant_states: VISIBLE,
    ..spec(
        "admin.create_export_link",
        "export",
        Method::Post,
        "/v1/tenants/{tenant_id}/exports/{export_id}/link",
    )
};

const BACKUP_ID: Param =
    Param::new("backup_id", ParamType::String, true, "the backup").format("uuid");

pub static LIST_BACKUPS: ActionSpec = ActionSpec {
    entity: "backup",
    permission: Some(Permission::DataExport),
    parameters: &[CURSOR, LIMIT],
    description: "The tenant's backups with their status and last verification report",
    tenant_states: VISIBLE,
    ..spec(
        "admin.list_backups",
        "backup",
        Method::Get,
        "/v1/tenants/{tenant_id}/backups",
    )
};

pub static GET_BACKUP: ActionSpec = ActionSpec {
    entity: "backup",
    permission: Some(Permission::DataExport),
    parameters: &[BACKUP_ID],
    description: "One backup: manifest and last verification report",
    tenant_states: VISIBLE,
    ..spec(
        "admin.get_backup",
        "backup",
        Method::Get,
        "/v1/tenants/{tenant_id}/backups/{backup_id}",
    )
};

pub static CREATE_BACKUP: ActionSpec = ActionSpec {
    entity: "backup",
    action_type: ActionType::Write,
    permission: Some(Permission::DataExport),
    parameters: &[CONFIRM],
    preconditions: &["caller must have tenant_admin role"],
    postconditions: &[
        "backup job created (full export sealed with the tenant key)",
        "backups beyond backup.retention_count are deleted",
        "audit log entry created",
    ],
    risk_level: Risk::Medium,
    confirmation_required: true,
    idempotent: false,
    is_async: true,
    side_effects: &["audit_log", "object_store"],
    description: "Back the tenant up now (the schedule is the setting backup.interval_hours)",
    ..spec(
        "admin.create_backup",
        "backup",
        Method::Post,
        "/v1/tenants/{tenant_id}/backups",
    )
};

pub static VERIFY_BACKUP: ActionSpec = ActionSpec {
    entity: "backup",
    action_type: ActionType::Write,
    permission: Some(Permission::DataExport),
    parameters: &[BACKUP_ID],
    preconditions: &["caller must have tenant_admin role", "the backup is ready"],
    postconditions: &[
        "verification job created: a restore into a scratch tenant, rolled back",
        "the report (records and SHA-256 per table) is on the backup",
        "audit log entry created",
    ],
    risk_level: Risk::Low,
    is_async: true,
    side_effects: &["audit_log"],
    description: "Verify a backup by restoring it into a scratch tenant and comparing",
    tenant_states: VISIBLE,
    ..spec(
        "admin.verify_backup",
        "backup",
        Method::Post,
        "/v1/tenants/{tenant_id}/backups/{backup_id}/verify",
    )
};

pub static RESTORE_BACKUP: ActionSpec = ActionSpec {
    entity: "backup",
    action_type: ActionType::Write,
    permission: Some(Permission::TenantsCreate),
    parameters: &[
        BACKUP_ID,
        Param::new("slug", ParamType::String, true, "the new tenant's slug"),
        Param::new("name", ParamType::String, false, "the new tenant's name"),
        CONFIRM,
    ],
    preconditions: &[
        "caller must have platform_admin role",
        "the backup is ready",
    ],
    postconditions: &[
        "restore job created: the backup becomes a new tenant; production is untouched",
        "people erased since the backup are erased again",
        "audit log entry created",
    ],
    risk_level: Risk::High,
    confirmation_required: true,
    idempotent: false,
    is_async: true,
    side_effects: &["audit_log", "tenant_created"],
    description: "Restore a backup into a new tenant (disaster recovery or a drill)",
    tenant_states: VISIBLE,
    ..spec(
        "admin.restore_backup",
        "backup",
        Method::Post,
        "/v1/admin/tenants/{tenant_id}/backups/{backup_id}/restore",
    )
};

pub static MOVE_TENANT_REGION: ActionSpec = ActionSpec {
    entity: "tenant",
    action_type: ActionType::Write,
    permission: Some(Permission::TenantsManage),
    parameters: &[
        Param::new("region", ParamType::String, true, "the region to move to"),
        CONFIRM,
    ],
    preconditions: &[
        "caller must have platform_admin role",
        "the region is one of the deployment's",
    ],
    postconditions: &[
        "move job created: the tenant's objects go to the region's store, then it is pinned there",
        "audit log entries created (requested, moved)",
    ],
    risk_level: Risk::High,
    confirmation_required: true,
    idempotent: false,
    is_async: true,
    side_effects: &["audit_log", "object_store", "residency_change"],
    description: "Move a tenant to another region (data residency)",
    ..spec(
        "admin.move_tenant_region",
        "tenant",
        Method::Post,
        "/v1/admin/tenants/{tenant_id}/region",
    )
};

pub static IMPORT_TENANT: ActionSpec = ActionSpec {
    entity: "tenant",
    action_type: ActionType::Write,
    scope: Scope::Platform,
    permission: Some(Permission::TenantsCreate),
    parameters: &[
        Param::new(
            "body",
            ParamType::String,
            true,
            "a full export in the zip format (application/zip)",
        ),
        Param::new(
            "slug",
            ParamType::String,
            false,
            "import as a new tenant with this slug (and a new id)",
        ),
        Param::new("name", ParamType::String, false, "the new tenant's name"),
        CONFIRM,
    ],
    preconditions: &[
        "caller must have platform_admin role",
        "the export verifies against its manifest",
        "the tenant (or the new slug) does not exist here",
    ],
    postconditions: &[
        "the tenant exists with the exported data",
        "audit log entry created",
    ],
    risk_level: Risk::High,
    confirmation_required: true,
    idempotent: false,
    side_effects: &["audit_log", "tenant_created"],
    description: "Import a tenant's full export (migration between deployments or regions)",
    ..spec(
        "admin.import_tenant",
        "tenant",
        Method::Post,
        "/v1/admin/tenants/import",
    )
};

const SSO_ID: Param = Param::new(
    "connection_id",
    ParamType::String,
    true,
    "the SSO connection",
)
.format("uuid");

pub static LIST_SSO: ActionSpec = ActionSpec {
    permission: Some(Permission::SettingsRead),
    description: "List the tenant's SSO connections (OIDC, LDAP), never their secrets",
    ..spec(
        "admin.list_sso_connections",
        "sso_connection",
        Method::Get,
        "/v1/tenants/{tenant_id}/sso",
    )
};

pub static CREATE_SSO: ActionSpec = ActionSpec {
    action_type: ActionType::Write,
    permission: Some(Permission::SsoWrite),
    parameters: &[
        Param::new("kind", ParamType::String, true, "the protocol")
            .one_of(&["oidc", "saml", "ldap"]),
        Param::new("name", ParamType::String, true, "display name"),
        Param::new(
            "config",
            ParamType::Object,
            true,
            "issuer and client id, or LDAP URL, TLS and filters",
        ),
        Param::new(
            "secret",
            ParamType::String,
            false,
            "client secret or bind password (write-only; SAML has none)",
        ),
        Param::new(
            "role_mapping",
            ParamType::Object,
            false,
            "IdP group -> role names",
        ),
        Param::new(
            "jit",
            ParamType::Boolean,
            false,
            "create members at first sign-in",
        ),
        Param::new("enabled", ParamType::Boolean, false, "accept sign-ins"),
    ],
    preconditions: &["caller must have tenant_admin role"],
    postconditions: &[
        "the tenant's people can sign in through it; no other tenant is affected",
        "audit log entry created",
    ],
    risk_level: Risk::High,
    idempotent: false,
    side_effects: &["audit_log"],
    description: "Connect the tenant's own identity provider (OIDC) or directory (LDAP)",
    ..spec(
        "admin.create_sso_connection",
        "sso_connection",
        Method::Post,
        "/v1/tenants/{tenant_id}/sso",
    )
};

pub static GET_SSO: ActionSpec = ActionSpec {
    permission: Some(Permission::SettingsRead),
    parameters: &[SSO_ID],
    description: "Show one SSO connection (without its secret)",
    ..spec(
        "admin.get_sso_connection",
        "sso_connection",
        Method::Get,
        "/v1/tenants/{tenant_id}/sso/{connection_id}",
    )
};

pub static UPDATE_SSO: ActionSpec = ActionSpec {
    action_type: ActionType::Write,
    permission: Some(Permission::SsoWrite),
    parameters: &[SSO_ID],
    preconditions: &["caller must have tenant_admin role"],
    postconditions: &[
        "applies to the next sign-in of this tenant only",
        "audit log entry created",
    ],
    risk_level: Risk::High,
    side_effects: &["audit_log"],
    description: "Change an SSO connection: settings, secret, role mapping, provisioning, enabled",
    ..spec(
        "admin.update_sso_connection",
        "sso_connection",
        Method::Patch,
        "/v1/tenants/{tenant_id}/sso/{connection_id}",
    )
};

pub static DELETE_SSO: ActionSpec = ActionSpec {
    action_type: ActionType::Delete,
    permission: Some(Permission::SsoWrite),
    parameters: &[SSO_ID, CONFIRM],
    preconditions: &["caller must have tenant_admin role"],
    postconditions: &["sign-ins through it stop", "audit log entry created"],
    risk_level: Risk::High,
    confirmation_required: true,
    side_effects: &["audit_log"],
    description: "Delete an SSO connection",
    ..spec(
        "admin.delete_sso_connection",
        "sso_connection",
        Method::Delete,
        "/v1/tenants/{tenant_id}/sso/{connection_id}",
    )
};

pub static TEST_SSO: ActionSpec = ActionSpec {
    action_type: ActionType::Read,
    permission: Some(Permission::SsoWrite),
    parameters: &[SSO_ID],
    preconditions: &["caller must have tenant_admin role"],
    postconditions: &["audit log entry created"],
    side_effects: &["audit_log", "outbound_call"],
    description: "Test an SSO connection: OIDC discovery, or an LDAP bind as the service account",
    ..spec(
        "admin.test_sso_connection",
        "sso_connection",
        Method::Post,
        "/v1/tenants/{tenant_id}/sso/{connection_id}/test",
    )
};

const SHARED_ID: Param =
    Param::new("shared_id", ParamType::String, true, "the shared provider").format("uuid");

pub static LIST_SHARED_PROVIDERS: ActionSpec = ActionSpec {
    scope: Scope::Platform,
    permission: Some(Permission::ProvidersShare),
    description: "List the provider credentials the platform shares, and the plans granting each",
    ..spec(
        "admin.list_shared_providers",
        "shared_provider",
        Method::Get,
        "/v1/admin/shared-providers",
    )
};

pub static CREATE_SHARED_PROVIDER: ActionSpec = ActionSpec {
    action_type: ActionType::Write,
    scope: Scope::Platform,
    permission: Some(Permission::ProvidersShare),
    parameters: &[
        Param::new("name", ParamType::String, true, "unique name"),
        Param::new("kind", ParamType::String, true, "openai or azure_openai"),
        Param::new("base_url", ParamType::String, true, "the endpoint"),
        Param::new(
            "api_key",
            ParamType::String,
            false,
            "the secret (write-only)",
        ),
        Param::new(
            "plans",
            ParamType::Array,
            false,
            "plans whose tenants may use it",
        ),
    ],
    preconditions: &["caller must have platform_admin role"],
    postconditions: &[
        "tenants of the plans can attach it; the secret never reaches them",
        "audit log entry created",
    ],
    risk_level: Risk::High,
    idempotent: false,
    side_effects: &["audit_log"],
    description: "Share provider credentials with the tenants of some plans",
    ..spec(
        "admin.create_shared_provider",
        "shared_provider",
        Method::Post,
        "/v1/admin/shared-providers",
    )
};

pub static UPDATE_SHARED_PROVIDER: ActionSpec = ActionSpec {
    action_type: ActionType::Write,
    scope: Scope::Platform,
    permission: Some(Permission::ProvidersShare),
    parameters: &[
        SHARED_ID,
        Param::new("plans", ParamType::Array, true, "the plans granting it"),
    ],
    preconditions: &["caller must have platform_admin role"],
    postconditions: &[
        "tenants of other plans are refused from their next run",
        "audit log entry created",
    ],
    risk_level: Risk::High,
    side_effects: &["audit_log"],
    description: "Change which plans grant a shared provider",
    ..spec(
        "admin.update_shared_provider",
        "shared_provider",
        Method::Patch,
        "/v1/admin/shared-providers/{shared_id}",
    )
};

pub static LIST_AVAILABLE_SHARED_PROVIDERS: ActionSpec = ActionSpec {
    permission: Some(Permission::ProvidersRead),
    description: "List the shared providers the tenant's plan grants",
    ..spec(
        "admin.list_available_shared_providers",
        "shared_provider",
        Method::Get,
        "/v1/tenants/{tenant_id}/shared-providers",
    )
};

pub static ATTACH_SHARED_PROVIDER: ActionSpec = ActionSpec {
    action_type: ActionType::Write,
    permission: Some(Permission::ProvidersWrite),
    parameters: &[
        SHARED_ID,
        Param::new("name", ParamType::String, false, "its name in the tenant"),
    ],
    preconditions: &[
        "caller must have tenant_admin role",
        "the tenant's plan grants it",
    ],
    postconditions: &[
        "a provider of the tenant that its agents can use",
        "audit log entry created",
    ],
    risk_level: Risk::Medium,
    idempotent: false,
    side_effects: &["audit_log"],
    description: "Use a shared provider the plan grants (as a provider of the tenant)",
    ..spec(
        "admin.attach_shared_provider",
        "provider",
        Method::Post,
        "/v1/tenants/{tenant_id}/shared-providers/{shared_id}/attach",
    )
};

pub static ROTATE_SIGNING_KEY: ActionSpec = ActionSpec {
    action_type: ActionType::Write,
    scope: Scope::Platform,
    permission: Some(Permission::SigningKeysRotate),
    parameters: &[CONFIRM],
    preconditions: &["caller must have platform_admin role"],
    postconditions: &[
        "new access tokens are signed with a new key, published in the JWKS",
        "tokens signed with the old key stay valid until they expire",
        "audit log entry created",
    ],
    risk_level: Risk::High,
    confirmation_required: true,
    idempotent: false,
    side_effects: &["audit_log"],
    description: "Rotate the key that signs Agentplane's access tokens",
    ..spec(
        "admin.rotate_signing_key",
        "signing_key",
        Method::Post,
        "/v1/admin/signing-keys/rotate",
    )
};

const SETTING_KEY: Param = Param::new(
    "setting_key",
    ParamType::String,
    true,
    "a key of the settings registry (GET .../settings lists them)",
);

pub static LIST_TENANT_SETTINGS: ActionSpec = ActionSpec {
    entity: "tenant_settings",
    permission: Some(Permission::SettingsRead),
    preconditions: &["caller must have tenant_admin or auditor role"],
    description: "List the tenant's settings: value, version, default, schema",
    ..spec(
        "admin.list_tenant_settings",
        "tenant_settings",
        Method::Get,
        "/v1/tenants/{tenant_id}/settings",
    )
};

pub static UPDATE_TENANT_SETTINGS: ActionSpec = ActionSpec {
    action_type: ActionType::Write,
    permission: Some(Permission::SettingsWrite),
    parameters: &[
        SETTING_KEY,
        Param::new(
            "setting_value",
            ParamType::Object,
            true,
            "the new value; its type is the key's schema",
        ),
        Param::new(
            "expected_version",
            ParamType::Integer,
            false,
            "refuse if the setting changed since this version",
        ),
        CONFIRM,
    ],
    preconditions: &["caller must have tenant_admin role"],
    postconditions: &["setting updated", "audit log entry created"],
    risk_level: Risk::High,
    confirmation_required: true,
    side_effects: &["audit_log", "setting_propagation"],
    description: "Update a tenant-level configuration setting",
    ..spec(
        "admin.update_tenant_settings",
        "tenant_settings",
        Method::Put,
        "/v1/tenants/{tenant_id}/settings/{setting_key}",
    )
};

pub static GET_SETTING_HISTORY: ActionSpec = ActionSpec {
    permission: Some(Permission::SettingsRead),
    parameters: &[SETTING_KEY, CURSOR, LIMIT],
    preconditions: &["caller must have tenant_admin or auditor role"],
    description: "Every version of a setting: value, previous value, who and when",
    ..spec(
        "admin.get_setting_history",
        "tenant_settings",
        Method::Get,
        "/v1/tenants/{tenant_id}/settings/{setting_key}/history",
    )
};

pub static ROLLBACK_TENANT_SETTING: ActionSpec = ActionSpec {
    action_type: ActionType::Write,
    permission: Some(Permission::SettingsWrite),
    parameters: &[
        SETTING_KEY,
        Param::new(
            "version",
            ParamType::Integer,
            true,
            "the version to restore",
        )
        .range(1, i64::MAX),
        CONFIRM,
    ],
    preconditions: &["caller must have tenant_admin role", "the version exists"],
    postconditions: &[
        "the old value is restored as a new version",
        "audit log entry created",
    ],
    risk_level: Risk::High,
    confirmation_required: true,
    side_effects: &["audit_log", "setting_propagation"],
    description: "Restore an earlier version of a setting",
    ..spec(
        "admin.rollback_tenant_setting",
        "tenant_settings",
        Method::Post,
        "/v1/tenants/{tenant_id}/settings/{setting_key}/rollback",
    )
};

pub static GET_TENANT_FEATURES: ActionSpec = ActionSpec {
    entity: "feature",
    permission: Some(Permission::TenantRead),
    description: "The features the tenant's users see: the plan's, less those the tenant admin hid",
    ..spec(
        "admin.get_tenant_features",
        "feature",
        Method::Get,
        "/v1/tenants/{tenant_id}/features",
    )
};

pub static GET_BRANDING: ActionSpec = ActionSpec {
    entity: "branding",
    permission: Some(Permission::TenantRead),
    description: "The tenant's branding: product name, colours, custom domain, logo",
    tenant_states: VISIBLE,
    ..spec(
        "admin.get_branding",
        "branding",
        Method::Get,
        "/v1/tenants/{tenant_id}/branding",
    )
};

pub static UPDATE_BRANDING: ActionSpec = ActionSpec {
    action_type: ActionType::Write,
    permission: Some(Permission::BrandingWrite),
    parameters: &[
        Param::new(
            "product_name",
            ParamType::String,
            false,
            "1-64 characters; null clears",
        ),
        Param::new(
            "primary_color",
            ParamType::String,
            false,
            "#RRGGBB; null clears",
        ),
        Param::new(
            "accent_color",
            ParamType::String,
            false,
            "#RRGGBB; null clears",
        ),
        Param::new(
            "custom_domain",
            ParamType::String,
            false,
            "host name, unique across tenants; null clears",
        ),
    ],
    preconditions: &[
        "caller must have tenant_admin role",
        "custom domain not used by another tenant",
    ],
    postconditions: &[
        "branding updated for every user of the tenant",
        "audit log entry created",
    ],
    risk_level: Risk::Low,
    side_effects: &["audit_log"],
    description: "Change the tenant's product name, colours or custom domain",
    ..spec(
        "admin.update_branding",
        "branding",
        Method::Put,
        "/v1/tenants/{tenant_id}/branding",
    )
};

pub static UPLOAD_LOGO: ActionSpec = ActionSpec {
    action_type: ActionType::Write,
    permission: Some(Permission::BrandingWrite),
    parameters: &[Param::new(
        "body",
        ParamType::String,
        true,
        "the image bytes: PNG, JPEG or WebP, at most 256 KiB, sent with its Content-Type",
    )],
    preconditions: &["caller must have tenant_admin role"],
    postconditions: &["logo replaced", "audit log entry created"],
    risk_level: Risk::Low,
    side_effects: &["audit_log", "object_store"],
    description: "Upload the tenant's logo",
    ..spec(
        "admin.upload_logo",
        "branding",
        Method::Put,
        "/v1/tenants/{tenant_id}/branding/logo",
    )
};

pub static GET_LOGO: ActionSpec = ActionSpec {
    permission: Some(Permission::TenantRead),
    description: "The tenant's logo image",
    tenant_states: VISIBLE,
    ..spec(
        "admin.get_logo",
        "branding",
        Method::Get,
        "/v1/tenants/{tenant_id}/branding/logo",
    )
};

pub static DELETE_LOGO: ActionSpec = ActionSpec {
    action_type: ActionType::Delete,
    permission: Some(Permission::BrandingWrite),
    preconditions: &["caller must have tenant_admin role"],
    postconditions: &["logo removed", "audit log entry created"],
    risk_level: Risk::Low,
    side_effects: &["audit_log", "object_store"],
    description: "Remove the tenant's logo",
    ..spec(
        "admin.delete_logo",
        "branding",
        Method::Delete,
        "/v1/tenants/{tenant_id}/branding/logo",
    )
};

const JOB_ID: Param = Param::new("job_id", ParamType::String, true, "the job").format("uuid");

pub static LIST_JOBS: ActionSpec = ActionSpec {
    entity: "job",
    permission: Some(Permission::JobsRead),
    parameters: &[CURSOR, LIMIT],
    description: "The tenant's background jobs (provisioning, key re-sealing, notifications, \
                  exports...) with their status and progress",
    tenant_states: VISIBLE,
    ..spec(
        "admin.list_jobs",
        "job",
        Method::Get,
        "/v1/tenants/{tenant_id}/jobs",
    )
};

pub static GET_JOB: ActionSpec = ActionSpec {
    entity: "job",
    permission: Some(Permission::JobsRead),
    parameters: &[JOB_ID],
    description: "One background job: status, attempts, progress (percent and message), last error",
    tenant_states: VISIBLE,
    ..spec(
        "admin.get_job",
        "job",
        Method::Get,
        "/v1/tenants/{tenant_id}/jobs/{job_id}",
    )
};

pub static CANCEL_JOB: ActionSpec = ActionSpec {
    action_type: ActionType::Write,
    permission: Some(Permission::JobsCancel),
    parameters: &[JOB_ID],
    preconditions: &[
        "caller must have tenant_admin role",
        "the job has not finished",
    ],
    postconditions: &[
        "a queued job is cancelled; a running one stops at its next heartbeat",
        "audit log entry created",
    ],
    risk_level: Risk::Medium,
    side_effects: &["audit_log"],
    description: "Cancel a background job",
    tenant_states: VISIBLE,
    ..spec(
        "admin.cancel_job",
        "job",
        Method::Post,
        "/v1/tenants/{tenant_id}/jobs/{job_id}/cancel",
    )
};

pub static GET_RESIDENCY_REPORT: ActionSpec = ActionSpec {
    entity: "residency",
    permission: Some(Permission::AuditRead),
    side_effects: &["audit_log"],
    description: "Where the tenant's data is stored and processed: its region, storage, \
                  providers with their residency verdicts, and the audit log's evidence",
    tenant_states: VISIBLE,
    ..spec(
        "admin.get_residency_report",
        "residency",
        Method::Get,
        "/v1/tenants/{tenant_id}/residency",
    )
};

pub static GET_WEBHOOK: ActionSpec = ActionSpec {
    entity: "webhook",
    permission: Some(Permission::SettingsRead),
    description: "The tenant's usage-notification webhook (its URL and secret fingerprint)",
    tenant_states: VISIBLE,
    ..spec(
        "admin.get_webhook",
        "webhook",
        Method::Get,
        "/v1/tenants/{tenant_id}/webhook",
    )
};

pub static SET_WEBHOOK: ActionSpec = ActionSpec {
    action_type: ActionType::Write,
    permission: Some(Permission::SettingsWrite),
    parameters: &[Param::new(
        "url",
        ParamType::String,
        true,
        "http(s) URL the usage notifications (80% and 100% of a quota) are POSTed to",
    )],
    preconditions: &[
        "caller must have tenant_admin role",
        "the URL resolves to a public address",
    ],
    postconditions: &[
        "webhook set with a new signing secret, shown once",
        "audit log entry created",
    ],
    risk_level: Risk::Medium,
    idempotent: false,
    side_effects: &["audit_log"],
    description: "Set the usage-notification webhook; answers a new signing secret once",
    ..spec(
        "admin.set_webhook",
        "webhook",
        Method::Put,
        "/v1/tenants/{tenant_id}/webhook",
    )
};

pub static DELETE_WEBHOOK: ActionSpec = ActionSpec {
    action_type: ActionType::Delete,
    permission: Some(Permission::SettingsWrite),
    preconditions: &["caller must have tenant_admin role"],
    postconditions: &["webhook and its secret deleted", "audit log entry created"],
    risk_level: Risk::Low,
    side_effects: &["audit_log"],
    description: "Remove the usage-notification webhook",
    ..spec(
        "admin.delete_webhook",
        "webhook",
        Method::Delete,
        "/v1/tenants/{tenant_id}/webhook",
    )
};

const PROVIDER_ID: Param = Param::new(
    "provider_id",
    ParamType::String,
    true,
    "the provider credential",
)
.format("uuid");

pub static LIST_PROVIDERS: ActionSpec = ActionSpec {
    entity: "provider",
    permission: Some(Permission::ProvidersRead),
    parameters: &[CURSOR, LIMIT],
    preconditions: &["caller must have tenant_admin or auditor role"],
    description: "List the tenant's provider credentials (fingerprints, never secrets)",
    ..spec(
        "admin.list_providers",
        "provider",
        Method::Get,
        "/v1/tenants/{tenant_id}/providers",
    )
};

pub static CREATE_PROVIDER: ActionSpec = ActionSpec {
    action_type: ActionType::Write,
    permission: Some(Permission::ProvidersWrite),
    parameters: &[
        Param::new("name", ParamType::String, true, "unique in the tenant"),
        Param::new("kind", ParamType::String, true, "provider kind")
            .one_of(&["openai", "azure_openai"]),
        Param::new(
            "base_url",
            ParamType::String,
            true,
            "the endpoint's base URL",
        ),
        Param::new(
            "api_key",
            ParamType::String,
            true,
            "write-only secret, sealed at once",
        ),
        Param::new("api_version", ParamType::String, false, "Azure api-version"),
        Param::new(
            "models",
            ParamType::Array,
            false,
            "models offered through it",
        ),
    ],
    preconditions: &[
        "caller must have tenant_admin role",
        "base URL allowed by the deployment",
    ],
    postconditions: &[
        "secret sealed with the tenant's data key",
        "audit log entry created",
    ],
    risk_level: Risk::High,
    idempotent: false,
    side_effects: &["audit_log", "secret_stored"],
    description: "Add an LLM provider credential",
    ..spec(
        "admin.create_provider",
        "provider",
        Method::Post,
        "/v1/tenants/{tenant_id}/providers",
    )
};

pub static GET_PROVIDER: ActionSpec = ActionSpec {
    permission: Some(Permission::ProvidersRead),
    parameters: &[PROVIDER_ID],
    description: "Show one provider credential (fingerprint, never the secret)",
    ..spec(
        "admin.get_provider",
        "provider",
        Method::Get,
        "/v1/tenants/{tenant_id}/providers/{provider_id}",
    )
};

pub static UPDATE_PROVIDER: ActionSpec = ActionSpec {
    action_type: ActionType::Write,
    permission: Some(Permission::ProvidersWrite),
    parameters: &[
        PROVIDER_ID,
        Param::new("name", ParamType::String, false, "new name"),
        Param::new("base_url", ParamType::String, false, "new base URL"),
        Param::new(
            "api_key",
            ParamType::String,
            false,
            "new secret (rotation), write-only",
        ),
        Param::new("models", ParamType::Array, false, "new model list"),
        Param::new(
            "expected_version",
            ParamType::Integer,
            false,
            "refuse if changed since",
        ),
    ],
    preconditions: &["caller must have tenant_admin role"],
    postconditions: &["provider updated", "audit log entry created"],
    risk_level: Risk::High,
    side_effects: &["audit_log"],
    description: "Change a provider credential or rotate its secret",
    ..spec(
        "admin.update_provider",
        "provider",
        Method::Patch,
        "/v1/tenants/{tenant_id}/providers/{provider_id}",
    )
};

pub static DELETE_PROVIDER: ActionSpec = ActionSpec {
    action_type: ActionType::Delete,
    permission: Some(Permission::ProvidersWrite),
    parameters: &[PROVIDER_ID, CONFIRM],
    preconditions: &["caller must have tenant_admin role"],
    postconditions: &[
        "provider and its sealed secret deleted",
        "audit log entry created",
    ],
    risk_level: Risk::High,
    confirmation_required: true,
    side_effects: &["audit_log"],
    description: "Delete a provider credential",
    ..spec(
        "admin.delete_provider",
        "provider",
        Method::Delete,
        "/v1/tenants/{tenant_id}/providers/{provider_id}",
    )
};

pub static TEST_PROVIDER: ActionSpec = ActionSpec {
    action_type: ActionType::Read,
    permission: Some(Permission::ProvidersWrite),
    parameters: &[PROVIDER_ID],
    preconditions: &["caller must have tenant_admin role"],
    postconditions: &["audit log entry created"],
    risk_level: Risk::Low,
    idempotent: true,
    side_effects: &["audit_log", "external_call"],
    description: "Test a provider credential: list the endpoint's models with it",
    ..spec(
        "admin.test_provider",
        "provider",
        Method::Post,
        "/v1/tenants/{tenant_id}/providers/{provider_id}/test",
    )
};

pub static LIST_TENANT_KEYS: ActionSpec = ActionSpec {
    entity: "tenant_key",
    permission: Some(Permission::KeysManage),
    preconditions: &["caller must have tenant_admin role"],
    description: "The tenant's data-key versions (metadata only)",
    ..spec(
        "admin.list_tenant_keys",
        "tenant_key",
        Method::Get,
        "/v1/tenants/{tenant_id}/keys",
    )
};

pub static ROTATE_TENANT_KEY: ActionSpec = ActionSpec {
    action_type: ActionType::Write,
    permission: Some(Permission::KeysManage),
    parameters: &[CONFIRM],
    preconditions: &["caller must have tenant_admin role"],
    postconditions: &[
        "a new data key seals new secrets",
        "a job re-seals existing secrets",
        "audit log entry created",
    ],
    risk_level: Risk::High,
    confirmation_required: true,
    idempotent: false,
    is_async: true,
    side_effects: &["audit_log", "reseal_job"],
    description: "Rotate the tenant's data key",
    ..spec(
        "admin.rotate_tenant_key",
        "tenant_key",
        Method::Post,
        "/v1/tenants/{tenant_id}/keys/rotate",
    )
};

pub static ROTATE_MASTER_KEY: ActionSpec = ActionSpec {
    action_type: ActionType::Write,
    scope: Scope::Platform,
    permission: Some(Permission::MasterKeyRotate),
    parameters: &[CONFIRM],
    preconditions: &["caller must have platform_admin role"],
    postconditions: &[
        "every tenant's data keys re-wrapped with the new key-encryption key",
        "audit log entry created",
    ],
    risk_level: Risk::Critical,
    confirmation_required: true,
    idempotent: false,
    side_effects: &["audit_log"],
    description: "Rotate the master key (KEK) and re-wrap every tenant's data keys",
    ..spec(
        "admin.rotate_master_key",
        "kms",
        Method::Post,
        "/v1/admin/keys/rotate",
    )
};

const AGENT_ID: Param = Param::new("agent_id", ParamType::String, true, "the agent").format("uuid");

pub static LIST_AGENTS: ActionSpec = ActionSpec {
    entity: "agent",
    permission: Some(Permission::AgentsRead),
    parameters: &[CURSOR, LIMIT],
    description: "List the tenant's agents",
    ..spec(
        "admin.list_agents",
        "agent",
        Method::Get,
        "/v1/tenants/{tenant_id}/agents",
    )
};

pub static CREATE_AGENT: ActionSpec = ActionSpec {
    action_type: ActionType::Write,
    permission: Some(Permission::AgentsWrite),
    parameters: &[
        Param::new("name", ParamType::String, true, "unique in the tenant"),
        Param::new(
            "provider_id",
            ParamType::String,
            true,
            "a provider credential of the tenant",
        )
        .format("uuid"),
        Param::new("model", ParamType::String, true, "the model to call"),
        Param::new(
            "system_prompt",
            ParamType::String,
            false,
            "instructions sent first",
        ),
        Param::new(
            "params",
            ParamType::Object,
            false,
            "temperature, top_p, max_tokens",
        ),
    ],
    preconditions: &[
        "caller must have tenant_admin role",
        "the provider belongs to the tenant",
    ],
    postconditions: &["agent created at version 1", "audit log entry created"],
    risk_level: Risk::Medium,
    idempotent: false,
    side_effects: &["audit_log"],
    description: "Create an agent",
    ..spec(
        "admin.create_agent",
        "agent",
        Method::Post,
        "/v1/tenants/{tenant_id}/agents",
    )
};

pub static GET_AGENT: ActionSpec = ActionSpec {
    permission: Some(Permission::AgentsRead),
    parameters: &[AGENT_ID],
    description: "Show one agent",
    ..spec(
        "admin.get_agent",
        "agent",
        Method::Get,
        "/v1/tenants/{tenant_id}/agents/{agent_id}",
    )
};

pub static UPDATE_AGENT: ActionSpec = ActionSpec {
    action_type: ActionType::Write,
    permission: Some(Permission::AgentsWrite),
    parameters: &[
        AGENT_ID,
        Param::new("name", ParamType::String, false, "new name"),
        Param::new("provider_id", ParamType::String, false, "new provider").format("uuid"),
        Param::new("model", ParamType::String, false, "new model"),
        Param::new(
            "system_prompt",
            ParamType::String,
            false,
            "new instructions",
        ),
        Param::new("params", ParamType::Object, false, "new parameters"),
        Param::new(
            "expected_version",
            ParamType::Integer,
            false,
            "refuse if changed since",
        ),
    ],
    preconditions: &["caller must have tenant_admin role"],
    postconditions: &["a new agent version", "audit log entry created"],
    risk_level: Risk::Medium,
    side_effects: &["audit_log"],
    description: "Change an agent (a new version)",
    ..spec(
        "admin.update_agent",
        "agent",
        Method::Patch,
        "/v1/tenants/{tenant_id}/agents/{agent_id}",
    )
};

pub static DELETE_AGENT: ActionSpec = ActionSpec {
    action_type: ActionType::Delete,
    permission: Some(Permission::AgentsWrite),
    parameters: &[AGENT_ID, CONFIRM],
    preconditions: &["caller must have tenant_admin role"],
    postconditions: &[
        "agent deleted (its versions stay for the record)",
        "audit log entry created",
    ],
    risk_level: Risk::High,
    confirmation_required: true,
    side_effects: &["audit_log"],
    description: "Delete an agent",
    ..spec(
        "admin.delete_agent",
        "agent",
        Method::Delete,
        "/v1/tenants/{tenant_id}/agents/{agent_id}",
    )
};

pub static LIST_AGENT_VERSIONS: ActionSpec = ActionSpec {
    permission: Some(Permission::AgentsRead),
    parameters: &[AGENT_ID, CURSOR, LIMIT],
    description: "Every version of an agent, newest first",
    ..spec(
        "admin.list_agent_versions",
        "agent",
        Method::Get,
        "/v1/tenants/{tenant_id}/agents/{agent_id}/versions",
    )
};

pub static LIST_API_KEYS: ActionSpec = ActionSpec {
    entity: "api_key",
    permission: Some(Permission::ApiKeysRead),
    parameters: &[CURSOR, LIMIT],
    preconditions: &["caller must have tenant_admin or auditor role"],
    description: "List the tenant's API keys (prefixes, never secrets)",
    ..spec(
        "admin.list_api_keys",
        "api_key",
        Method::Get,
        "/v1/tenants/{tenant_id}/api-keys",
    )
};

pub static CREATE_API_KEY: ActionSpec = ActionSpec {
    action_type: ActionType::Write,
    permission: Some(Permission::ApiKeysWrite),
    parameters: &[
        Param::new("name", ParamType::String, true, "what the key is for"),
        Param::new(
            "expires_at",
            ParamType::String,
            false,
            "when it stops working",
        )
        .format("date-time"),
        Param::new(
            "scopes",
            ParamType::Object,
            false,
            "agents and models it may reach; empty lists mean any",
        ),
    ],
    preconditions: &["caller must have tenant_admin role"],
    postconditions: &[
        "the key is shown once and stored as a hash",
        "audit log entry created",
    ],
    risk_level: Risk::High,
    idempotent: false,
    side_effects: &["audit_log", "credential_issued"],
    description: "Create an API key for an app",
    ..spec(
        "admin.create_api_key",
        "api_key",
        Method::Post,
        "/v1/tenants/{tenant_id}/api-keys",
    )
};

pub static REVOKE_API_KEY: ActionSpec = ActionSpec {
    action_type: ActionType::Delete,
    permission: Some(Permission::ApiKeysWrite),
    parameters: &[
        Param::new("key_id", ParamType::String, true, "the key").format("uuid"),
        CONFIRM,
    ],
    preconditions: &["caller must have tenant_admin role"],
    postconditions: &[
        "the key is refused from the next request on",
        "audit log entry created",
    ],
    risk_level: Risk::High,
    confirmation_required: true,
    side_effects: &["audit_log", "access_revoked"],
    description: "Revoke an API key, with immediate effect",
    ..spec(
        "admin.revoke_api_key",
        "api_key",
        Method::Delete,
        "/v1/tenants/{tenant_id}/api-keys/{key_id}",
    )
};

/// Every admin action. The server routes exactly these; a test checks none is missing.
pub static REGISTRY: &[&ActionSpec] = &[
    &DEBUG_IDENTITY,
    &LIST_PLANS,
    &GET_PLAN,
    &CREATE_PLAN,
    &LIST_TENANTS,
    &CREATE_TENANT,
    &GET_TENANT,
    &CHANGE_TENANT_PLAN,
    &SUSPEND_TENANT,
    &REACTIVATE_TENANT,
    &DELETE_TENANT,
    &PURGE_TENANT,
    &GET_TENANT_USAGE,
    &EXPORT_USAGE,
    &RUN_NEXT_JOB,
    &RUN_RETENTION,
    &LIST_AUDIT_EVENTS,
    &LIST_USERS,
    &GET_USER,
    &UPDATE_USER,
    &REMOVE_USER,
    &LIST_ROLES,
    &CREATE_ROLE,
    &UPDATE_ROLE,
    &DELETE_ROLE,
    &LIST_INVITATIONS,
    &INVITE_USER,
    &REVOKE_INVITATION,
    &LIST_DELEGATIONS,
    &CREATE_DELEGATION,
    &REVOKE_DELEGATION,
    &LIST_SHARED_PROVIDERS,
    &CREATE_SHARED_PROVIDER,
    &UPDATE_SHARED_PROVIDER,
    &LIST_AVAILABLE_SHARED_PROVIDERS,
    &ATTACH_SHARED_PROVIDER,
    &ERASE_USER,
    &GET_ERASURE_RECEIPT,
    &EXPORT_TENANT_DATA,
    &LIST_EXPORTS,
    &GET_EXPORT,
    &CREATE_EXPORT_LINK,
    &IMPORT_TENANT,
    &MOVE_TENANT_REGION,
    &LIST_BACKUPS,
    &GET_BACKUP,
    &CREATE_BACKUP,
    &VERIFY_BACKUP,
    &RESTORE_BACKUP,
    &CREATE_SCIM_TOKEN,
    &DELETE_SCIM_TOKEN,
    &LIST_SSO,
    &CREATE_SSO,
    &GET_SSO,
    &UPDATE_SSO,
    &DELETE_SSO,
    &TEST_SSO,
    &ROTATE_SIGNING_KEY,
    &LIST_TENANT_SETTINGS,
    &UPDATE_TENANT_SETTINGS,
    &GET_SETTING_HISTORY,
    &ROLLBACK_TENANT_SETTING,
    &GET_TENANT_FEATURES,
    &GET_BRANDING,
    &UPDATE_BRANDING,
    &UPLOAD_LOGO,
    &GET_LOGO,
    &DELETE_LOGO,
    &GET_RESIDENCY_REPORT,
    &LIST_JOBS,
    &GET_JOB,
    &CANCEL_JOB,
    &GET_WEBHOOK,
    &SET_WEBHOOK,
    &DELETE_WEBHOOK,
    &LIST_PROVIDERS,
    &CREATE_PROVIDER,
    &GET_PROVIDER,
    &UPDATE_PROVIDER,
    &DELETE_PROVIDER,
    &TEST_PROVIDER,
    &LIST_TENANT_KEYS,
    &ROTATE_TENANT_KEY,
    &ROTATE_MASTER_KEY,
    &LIST_AGENTS,
    &CREATE_AGENT,
    &GET_AGENT,
    &UPDATE_AGENT,
    &DELETE_AGENT,
    &LIST_AGENT_VERSIONS,
    &LIST_API_KEYS,
    &CREATE_API_KEY,
    &REVOKE_API_KEY,
];

impl ActionSpec {
    /// This action in the AXAG semantic-manifest shape.
    pub fn manifest(&self) -> Value {
        let mut m = Map::new();
        m.insert("intent".into(), json!(self.intent));
        m.insert("entity".into(), json!(self.entity));
        m.insert("action_type".into(), json!(self.action_type.as_str()));
        m.insert("scope".into(), json!(self.scope.as_str()));
        if self.is_async {
            m.insert("async".into(), json!(true));
        }
        let params: Map<String, Value> = self
            .parameters
            .iter()
            .map(|p| (p.name.to_owned(), p.manifest()))
            .collect();
        m.insert("parameters".into(), Value::Object(params));
        m.insert("preconditions".into(), json!(self.preconditions));
        if !self.postconditions.is_empty() {
            m.insert("postconditions".into(), json!(self.postconditions));
        }
        m.insert("risk_level".into(), json!(self.risk_level.as_str()));
        if self.confirmation_required {
            m.insert("confirmation_required".into(), json!(true));
        }
        m.insert("idempotent".into(), json!(self.idempotent));
        if !self.side_effects.is_empty() {
            m.insert("side_effects".into(), json!(self.side_effects));
        }
        m.insert(
            "required_permission".into(),
            json!(self.permission.map(|p| p.as_str())),
        );
        m.insert("description".into(), json!(self.description));
        m.insert(
            "http".into(),
            json!({"method": self.method.as_str(), "path": self.path}),
        );
        Value::Object(m)
    }
}

/// The tenant-scoped AXAG semantic manifest: the actions an agent may take inside the
/// tenant of the person it acts for. Platform actions are not offered to tenant agents.
pub fn tenant_manifest() -> Value {
    let actions: Vec<Value> = REGISTRY
        .iter()
        .filter(|a| a.scope == Scope::Tenant)
        .map(|a| a.manifest())
        .collect();
    json!({"version": "1", "tenant_boundary": "strict", "scope": "tenant", "actions": actions})
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn intents_and_routes_are_unique() {
        let mut intents = HashSet::new();
        let mut routes = HashSet::new();
        for a in REGISTRY {
            assert!(intents.insert(a.intent), "duplicate intent {}", a.intent);
            assert!(
                routes.insert((a.method.as_str(), a.path)),
                "duplicate route {}",
                a.path
            );
            assert!(!a.description.is_empty(), "{} has no description", a.intent);
            assert_eq!(
                a.scope == Scope::Tenant,
                a.path.contains("{tenant_id}"),
                "{}",
                a.intent
            );
            if a.confirmation_required {
                assert!(
                    a.parameters.iter().any(|p| p.name == "confirm"),
                    "{}",
                    a.intent
                );
            }
        }
    }

    #[test]
    fn manifest_has_the_seed_shape() {
        let m = tenant_manifest();
        assert_eq!(m["tenant_boundary"], "strict");
        let list_users = m["actions"]
            .as_array()
            .and_then(|a| a.iter().find(|x| x["intent"] == "admin.list_users"))
            .cloned()
            .unwrap_or_default();
        assert_eq!(list_users["entity"], "user");
        assert_eq!(list_users["action_type"], "read");
        assert_eq!(
            list_users["parameters"]["status_filter"]["enum"][2],
            "suspended"
        );
        assert_eq!(list_users["risk_level"], "none");
        assert_eq!(list_users["idempotent"], true);
        assert!(m["actions"]
            .as_array()
            .is_some_and(|a| a.iter().all(|x| x["scope"] == "tenant")));
    }
}
