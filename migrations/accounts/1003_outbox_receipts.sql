-- Delivery receipts. nsqd's `OK` only means a message is in nsqd's memory, so
-- a published row is not done until the consumer reports the event stored (a
-- receipt sets `confirmed_at`). A row published but still unconfirmed when
-- its `due_at` passes is published again.
--
-- `due_at` is when the relay should (re)publish the row: the insert time for a
-- new row, the publish time plus a growing interval after each publication,
-- and NULL once nothing is left to do (confirmed or parked). Keeping that
-- moment in a column, rather than computing it from `published_at` and
-- `publish_attempts` in the claim, lets one small partial index serve the
-- claim whatever the backlog: a computed condition would visit every
-- unconfirmed row on each claim, and during a consumer outage that is all of
-- them.
--
-- Written so that no existing row is rewritten: `ADD COLUMN` with a
-- non-volatile default stores the default once, in the catalog.

-- Every existing row reads as confirmed at the time of this migration: rows
-- published before receipts existed were delivered under the old promise
-- (nsqd's `OK`), and are kept for the retention window from now on rather
-- than published again in one burst. Pending and parked rows are corrected
-- below; there are few of them.
ALTER TABLE outbox ADD COLUMN confirmed_at timestamptz NULL DEFAULT now();
ALTER TABLE outbox ALTER COLUMN confirmed_at DROP DEFAULT;
-- Existing rows read NULL (nothing to do); new rows are due at once.
ALTER TABLE outbox ADD COLUMN due_at timestamptz NULL;
ALTER TABLE outbox ALTER COLUMN due_at SET DEFAULT now();

UPDATE outbox SET confirmed_at = NULL, due_at = created_at
    WHERE published_at IS NULL AND parked_at IS NULL;
UPDATE outbox SET confirmed_at = NULL WHERE parked_at IS NOT NULL;

-- The relay has something to do with a row exactly when it is neither
-- confirmed nor parked.
ALTER TABLE outbox ADD CONSTRAINT outbox_due_at_check
    CHECK ((due_at IS NULL) = (confirmed_at IS NOT NULL OR parked_at IS NOT NULL));

-- The claim: due rows, earliest first. Partial, so it holds only the backlog
-- (rows waiting for nsqd or for their receipt), however long confirmed rows
-- are kept. It takes over from the index of pending rows.
DROP INDEX outbox_pending_idx;
CREATE INDEX outbox_due_idx ON outbox (due_at, id) WHERE due_at IS NOT NULL;

-- Retention: confirmed rows, oldest first, deleted in small batches.
CREATE INDEX outbox_confirmed_idx ON outbox (confirmed_at) WHERE confirmed_at IS NOT NULL;

-- The parked-rows gauge of /metrics; parked rows are rare, so this stays tiny.
CREATE INDEX outbox_parked_idx ON outbox (id) WHERE parked_at IS NOT NULL;
