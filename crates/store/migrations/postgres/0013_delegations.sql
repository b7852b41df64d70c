-- Delegated tokens: a session issued by an admin for an AI agent acting for a person. The
-- agent's label and the permission ceiling live on the session; such sessions have no
-- refresh tokens.
ALTER TABLE sessions ADD COLUMN agent TEXT;
ALTER TABLE sessions ADD COLUMN permissions TEXT;
ALTER TABLE sessions ADD COLUMN created_by TEXT;
