-- Provider credentials the platform shares with the tenants of some plans. The secret is
-- sealed with its own data key, which the KMS wraps for the platform (like signing keys).
-- A tenant uses one through a provider row of its own that points at it (`shared_id`);
-- the secret never leaves the platform's row.
CREATE TABLE shared_providers (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    kind        TEXT NOT NULL,
    base_url    TEXT NOT NULL,
    auth        TEXT NOT NULL,
    api_version TEXT,
    models      TEXT NOT NULL,
    plans       TEXT NOT NULL,
    wrapped_key TEXT NOT NULL,
    secret      BYTEA NOT NULL,
    fingerprint TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);
ALTER TABLE provider_credentials ADD COLUMN shared_id TEXT;
GRANT SELECT, INSERT, UPDATE, DELETE ON shared_providers TO agentplane_app;
