-- The server appends to chains and advances their heads; it never removes a head (which
-- would hide a chain from verification and break the next append).
REVOKE DELETE ON audit_heads FROM agentplane_app;
