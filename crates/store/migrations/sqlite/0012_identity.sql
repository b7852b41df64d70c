-- Identity: people, their memberships, custom roles, invitations, sessions with rotating
-- refresh tokens, and the keys that sign Agentplane's access tokens.

-- A person, known by e-mail across tenants. Only identity: every credential, role and
-- profile attribute lives on a membership, so one tenant can never change how a person
-- signs in to another.
CREATE TABLE users (
    user_id    TEXT PRIMARY KEY,
    email      TEXT NOT NULL UNIQUE,
    created_at INTEGER NOT NULL
);
INSERT INTO users (user_id, email, created_at)
    SELECT MIN(user_id), lower(email), MIN(created_at) FROM memberships GROUP BY lower(email);
UPDATE memberships SET user_id = (SELECT u.user_id FROM users u WHERE u.email = lower(memberships.email)),
    email = lower(email);

ALTER TABLE memberships ADD COLUMN name TEXT;
ALTER TABLE memberships ADD COLUMN custom_roles TEXT NOT NULL DEFAULT '[]';
-- The tenant-local password (argon2id PHC string); NULL: no local sign-in.
ALTER TABLE memberships ADD COLUMN password_hash TEXT;
ALTER TABLE memberships ADD COLUMN updated_at INTEGER NOT NULL DEFAULT 0;
ALTER TABLE memberships ADD COLUMN last_sign_in_at INTEGER;
UPDATE memberships SET updated_at = created_at;

CREATE TABLE tenant_roles (
    tenant_id   TEXT NOT NULL REFERENCES tenants(tenant_id),
    name        TEXT NOT NULL,
    description TEXT NOT NULL,
    permissions TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, name)
);

-- The token is mailed; only its SHA-256 is kept for lookup, and, until it is accepted, a
-- copy sealed with the tenant's key so the mail job can send it.
CREATE TABLE invitations (
    tenant_id    TEXT NOT NULL REFERENCES tenants(tenant_id),
    id           TEXT NOT NULL,
    email        TEXT NOT NULL,
    roles        TEXT NOT NULL,
    custom_roles TEXT NOT NULL,
    token_hash   TEXT NOT NULL UNIQUE,
    sealed_token BLOB,
    key_version  INTEGER,
    invited_by   TEXT NOT NULL,
    created_at   INTEGER NOT NULL,
    expires_at   INTEGER NOT NULL,
    accepted_at  INTEGER,
    accepted_by  TEXT,
    revoked_at   INTEGER,
    PRIMARY KEY (tenant_id, id)
);
CREATE INDEX invitations_email ON invitations (tenant_id, email);

-- A sign-in: one family of refresh tokens. Access tokens name it (`sid`) and die with it.
CREATE TABLE sessions (
    tenant_id      TEXT NOT NULL REFERENCES tenants(tenant_id),
    id             TEXT NOT NULL,
    user_id        TEXT NOT NULL,
    method         TEXT NOT NULL,
    created_at     INTEGER NOT NULL,
    expires_at     INTEGER NOT NULL,
    revoked_at     INTEGER,
    revoked_reason TEXT,
    PRIMARY KEY (tenant_id, id)
);
CREATE INDEX sessions_user ON sessions (tenant_id, user_id);

CREATE TABLE refresh_tokens (
    tenant_id   TEXT NOT NULL REFERENCES tenants(tenant_id),
    id          TEXT NOT NULL UNIQUE,
    session_id  TEXT NOT NULL,
    secret_hash TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    used_at     INTEGER,
    PRIMARY KEY (tenant_id, id)
);
CREATE INDEX refresh_tokens_session ON refresh_tokens (tenant_id, session_id);

-- Ed25519 keys signing access tokens. The private key is sealed with its own data key,
-- wrapped by the KMS like a tenant's.
CREATE TABLE signing_keys (
    kid            TEXT PRIMARY KEY,
    generation     INTEGER NOT NULL UNIQUE,
    public_x       TEXT NOT NULL,
    wrapped_key    TEXT NOT NULL,
    sealed_private BLOB NOT NULL,
    created_at     INTEGER NOT NULL,
    retired_at     INTEGER
);
