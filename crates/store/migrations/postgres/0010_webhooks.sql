-- A tenant's webhook for usage notifications. The signing secret is sealed with the tenant's
-- data key (associated data: tenant, "webhook_secret", tenant id).
CREATE TABLE tenant_webhooks (
    tenant_id   TEXT PRIMARY KEY REFERENCES tenants(tenant_id),
    url         TEXT NOT NULL,
    secret      BYTEA NOT NULL,
    key_version BIGINT NOT NULL,
    fingerprint TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);

-- Which usage thresholds were already notified (one notification per quota, threshold and
-- month), written in the settlement that crossed them.
CREATE TABLE usage_notices (
    tenant_id  TEXT NOT NULL REFERENCES tenants(tenant_id),
    period     TEXT NOT NULL,
    quota      TEXT NOT NULL,
    threshold  BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, period, quota, threshold)
);

DO $$
DECLARE t TEXT;
BEGIN
    FOREACH t IN ARRAY ARRAY['tenant_webhooks', 'usage_notices']
    LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format($p$CREATE POLICY tenant_isolation ON %I
            USING (tenant_id = current_setting('app.tenant_id', true) OR current_setting('app.platform', true) = 'on')
            WITH CHECK (tenant_id = current_setting('app.tenant_id', true) OR current_setting('app.platform', true) = 'on')$p$, t);
    END LOOP;
END
$$;
GRANT SELECT, INSERT, UPDATE, DELETE ON tenant_webhooks, usage_notices TO agentplane_app;
