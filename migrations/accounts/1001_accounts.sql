-- Accounts: the resource the API changes. `version` starts at 1 and grows by
-- one per change; it is the `sequence` of the audit event of that change.
CREATE TABLE accounts (
    id          uuid        PRIMARY KEY,
    name        text        NOT NULL CHECK (char_length(name) BETWEEN 1 AND 200),
    status      text        NOT NULL CHECK (status IN ('active', 'suspended', 'closed')),
    version     bigint      NOT NULL CHECK (version >= 1),
    created_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL
);
