-- How a provider is authenticated: `{"type":"api_key"}` (the sealed secret is the key),
-- `{"type":"client_credentials",...}` (the sealed secret is the Entra ID client secret) or
-- `{"type":"managed_identity",...}` (no secret: the host's identity).
ALTER TABLE provider_credentials ADD COLUMN auth TEXT NOT NULL DEFAULT '{"type":"api_key"}';
