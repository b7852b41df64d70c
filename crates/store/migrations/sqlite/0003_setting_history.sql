-- Settings are versioned: every change is a new version with who, when and the previous value.
ALTER TABLE tenant_settings ADD COLUMN version INTEGER NOT NULL DEFAULT 1;

CREATE TABLE tenant_setting_history (
    tenant_id  TEXT NOT NULL,
    key        TEXT NOT NULL,
    version    INTEGER NOT NULL,
    value      TEXT NOT NULL,
    previous   TEXT,
    actor_kind TEXT NOT NULL,
    actor_id   TEXT NOT NULL,
    ts         INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, key, version)
);

INSERT INTO tenant_setting_history (tenant_id, key, version, value, previous, actor_kind, actor_id, ts)
SELECT tenant_id, key, 1, value, NULL, 'system', 'migration', updated_at FROM tenant_settings;
