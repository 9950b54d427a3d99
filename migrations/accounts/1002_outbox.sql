-- The transactional outbox: one row per audit event, written in the same
-- transaction as the change it records (or alone, for a rejected attempt).
-- The relay publishes pending rows to NSQ and marks them published.
CREATE TABLE outbox (
    id               bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id         uuid        NOT NULL UNIQUE,
    -- The exact JSON published; the relay never re-serializes it.
    payload          text        NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    published_at     timestamptz NULL,
    publish_attempts integer     NOT NULL DEFAULT 0,
    -- Set when nsqd can never accept the row (larger than its message
    -- limit): the relay stops retrying it and an operator decides.
    parked_at        timestamptz NULL,
    last_error       text        NULL
);

-- Serves the relay's claim query: pending rows in id order. Partial, so it
-- stays as small as the backlog however long published rows are kept.
CREATE INDEX outbox_pending_idx ON outbox (id)
    WHERE published_at IS NULL AND parked_at IS NULL;
