-- At most one pending backup per tenant: two workers scheduling at once (each checks, then
-- enqueues) cannot both enqueue one; the second finds the first.
CREATE UNIQUE INDEX exports_one_pending_backup ON exports (tenant_id)
    WHERE kind = 'backup' AND status = 'pending';
