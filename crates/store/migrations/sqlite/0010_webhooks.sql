-- A tenant's webhook for usage notifications. The signing secret is sealed with the tenant's
-- data key (associated data: tenant, "webhook_secret", tenant id).
CREATE TABLE tenant_webhooks (
    tenant_id   TEXT PRIMARY KEY REFERENCES tenants(tenant_id),
    url         TEXT NOT NULL,
    secret      BLOB NOT NULL,
    key_version INTEGER NOT NULL,
    fingerprint TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);

-- Which usage thresholds were already notified (one notification per quota, threshold and
-- month), written in the settlement that crossed them.
CREATE TABLE usage_notices (
    tenant_id  TEXT NOT NULL REFERENCES tenants(tenant_id),
    period     TEXT NOT NULL,
    quota      TEXT NOT NULL,
    threshold  INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, period, quota, threshold)
);
