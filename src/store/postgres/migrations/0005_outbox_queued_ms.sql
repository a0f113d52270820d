-- 0005 (SQLite 0005_outbox_queued_ms.sql): when each outbox row was queued, in milliseconds
-- (the delivery latency histograms). NULL falls back to created_at.
ALTER TABLE outbox ADD COLUMN queued_at_ms BIGINT;
