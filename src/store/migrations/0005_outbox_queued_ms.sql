-- When each outbox row was queued, in milliseconds: the delivery latency histograms
-- need more than created_at's whole seconds. Older rows keep NULL and fall back to
-- created_at.
ALTER TABLE outbox ADD COLUMN queued_at_ms INTEGER;
