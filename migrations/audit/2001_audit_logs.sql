-- One row per audit event. `event_id` is the deduplication key: the consumer
-- inserts with ON CONFLICT (event_id) DO NOTHING, so a redelivered or
-- republished event is stored exactly once.
CREATE TABLE audit_logs (
    event_id       uuid        PRIMARY KEY,
    schema_version integer     NOT NULL,
    occurred_at    timestamptz NOT NULL,
    actor_id       text        NOT NULL,
    actor_type     text        NOT NULL CHECK (actor_type IN ('user', 'service')),
    action         text        NOT NULL,
    resource_type  text        NOT NULL,
    resource_id    text        NOT NULL,
    outcome        text        NOT NULL CHECK (outcome IN ('succeeded', 'rejected')),
    error_status   integer     NULL,
    error_code     text        NULL,
    request_id     text        NOT NULL,
    request_ip     text        NULL,
    user_agent     text        NULL,
    sequence       bigint      NULL,
    details        jsonb       NOT NULL,
    traceparent    text        NULL,
    -- When the consumer stored the row: the start of its batch transaction.
    recorded_at    timestamptz NOT NULL DEFAULT now(),
    -- The event crate guarantees this; the table keeps it true for any writer.
    CONSTRAINT audit_logs_error_matches_outcome CHECK (
        (outcome = 'rejected') = (error_status IS NOT NULL AND error_code IS NOT NULL)
    )
);

-- "What happened to this resource?", newest or oldest first.
CREATE INDEX audit_logs_resource_idx ON audit_logs (resource_type, resource_id, occurred_at);
-- "What did this actor do?"
CREATE INDEX audit_logs_actor_idx ON audit_logs (actor_id, occurred_at);
-- "What happened between these times?"
CREATE INDEX audit_logs_occurred_at_idx ON audit_logs (occurred_at);
