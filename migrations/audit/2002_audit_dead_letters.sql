-- Messages the consumer could not store: bodies that are not a valid event,
-- rows the database refused, and messages that kept failing until
-- NSQ_MAX_ATTEMPTS. The raw body is kept byte for byte so it can be inspected
-- and replayed later.
CREATE TABLE audit_dead_letters (
    id            bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- The NSQ message id of the latest delivery that was dead lettered.
    message_id    text        NOT NULL,
    body          bytea       NOT NULL,
    body_sha256   bytea       NOT NULL GENERATED ALWAYS AS (sha256(body)) STORED,
    error         text        NOT NULL,
    attempts      integer     NOT NULL,
    first_seen_at timestamptz NOT NULL DEFAULT now(),
    last_seen_at  timestamptz NOT NULL DEFAULT now(),
    replayed_at   timestamptz NULL
);

-- A poison message redelivered (its FIN was lost) or published twice is
-- stored once: the consumer inserts with ON CONFLICT on this index and only
-- moves last_seen_at and attempts. Once a row has been replayed it leaves the
-- index, so the same body failing again after a replay is recorded afresh.
CREATE UNIQUE INDEX audit_dead_letters_body_sha256_key
    ON audit_dead_letters (body_sha256)
    WHERE replayed_at IS NULL;

-- Operators list what still needs attention, oldest first.
CREATE INDEX audit_dead_letters_pending_idx
    ON audit_dead_letters (first_seen_at)
    WHERE replayed_at IS NULL;
