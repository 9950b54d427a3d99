-- Idempotency keys: the first response to a request that carried an
-- `Idempotency-Key`, replayed to a retry with the same key, actor and body.
--
-- A row is written in the same transaction as the change it answers (or as
-- the audit event of the refusal it answers), so a key exists exactly when
-- its outcome was committed. A request still running holds a transaction-
-- level advisory lock on its key instead of a row: a crash or a lost
-- connection releases the lock with the transaction, so no key is ever left
-- "in flight" for good, and there is no status column to get stuck.
CREATE TABLE idempotency_keys (
    actor_type       text        NOT NULL CHECK (actor_type IN ('user', 'service')),
    actor_id         text        NOT NULL,
    key              text        NOT NULL CHECK (char_length(key) BETWEEN 1 AND 255),
    -- SHA-256 of the method, the path and the body: a retry must match it.
    request_hash     bytea       NOT NULL CHECK (length(request_hash) = 32),
    response_status  smallint    NOT NULL CHECK (response_status BETWEEN 200 AND 599),
    -- The headers replayed with the body (the content type); the request id
    -- and `Idempotent-Replayed` belong to the retry, not to the first answer.
    response_headers jsonb       NOT NULL,
    response_body    bytea       NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (actor_type, actor_id, key)
);

-- The expiry sweep: oldest first, in small batches.
CREATE INDEX idempotency_keys_created_at_idx ON idempotency_keys (created_at);
