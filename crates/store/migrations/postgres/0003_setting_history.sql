-- Settings are versioned: every change is a new version with who, when and the previous value.
ALTER TABLE tenant_settings ADD COLUMN version BIGINT NOT NULL DEFAULT 1;

CREATE TABLE tenant_setting_history (
    tenant_id  TEXT NOT NULL,
    key        TEXT NOT NULL,
    version    BIGINT NOT NULL,
    value      TEXT NOT NULL,
    previous   TEXT,
    actor_kind TEXT NOT NULL,
    actor_id   TEXT NOT NULL,
    ts         BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, key, version)
);

INSERT INTO tenant_setting_history (tenant_id, key, version, value, previous, actor_kind, actor_id, ts)
SELECT tenant_id, key, 1, value, NULL, 'system', 'migration', updated_at FROM tenant_settings;

ALTER TABLE tenant_setting_history ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenant_setting_history FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON tenant_setting_history
    USING (tenant_id = current_setting('app.tenant_id', true) OR current_setting('app.platform', true) = 'on')
    WITH CHECK (tenant_id = current_setting('app.tenant_id', true) OR current_setting('app.platform', true) = 'on');
-- History is appended, and deleted only with its tenant (purge).
GRANT SELECT, INSERT, DELETE ON tenant_setting_history TO agentplane_app;
