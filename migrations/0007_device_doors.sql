-- The device doors: M2M and Internet devices post signed SenML themselves, and the answer to
-- an uplink carries at most one pending downlink for that device.

-- A message comes through a door: a KPN destination (as before) or a registered device.
-- Exactly one of destination_id and device_key_id says which sender signed it.
ALTER TABLE messages
    ADD COLUMN door TEXT NOT NULL DEFAULT 'destination' CHECK (door IN ('destination', 'm2m', 'ip')),
    ADD COLUMN device_key_id UUID REFERENCES device_keys (id),
    ALTER COLUMN destination_id DROP NOT NULL,
    -- NOT VALID, then validated: existing rows are checked without blocking ingestion.
    ADD CONSTRAINT messages_one_sender CHECK (
        (door = 'destination' AND destination_id IS NOT NULL AND device_key_id IS NULL)
        OR (door <> 'destination' AND destination_id IS NULL AND device_key_id IS NOT NULL))
        NOT VALID;
ALTER TABLE messages VALIDATE CONSTRAINT messages_one_sender;
-- The uplink a retry of a device repeats (the latest with its token).
CREATE INDEX messages_device_token_idx ON messages (device_key_id, token, id)
    WHERE device_key_id IS NOT NULL;

-- A device's retry carries the same token, whichever door it used, and is stored once. But
-- a device without `bt` sends the same bytes, so the same token, whenever a reading
-- repeats: only the same token within the retry window is a retry. One row per
-- (registration, token), with the time it was last taken as new; old rows are pruned.
CREATE TABLE device_uplinks (
    device_key_id  UUID NOT NULL REFERENCES device_keys (id),
    token          BYTEA NOT NULL,
    received_at    TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (device_key_id, token)
);
CREATE INDEX device_uplinks_received_idx ON device_uplinks (received_at);

-- Downlinks travel either through KPN's API (transport 'kpn', sent by the workers) or in the
-- answer to the device's next uplink (transport 'response': queued -> delivered | expired |
-- cancelled). A 'response' downlink belongs to a registration, which may exist before the
-- device's first uplink, so before any `devices` row.
ALTER TABLE downlinks
    ADD COLUMN transport TEXT NOT NULL DEFAULT 'kpn' CHECK (transport IN ('kpn', 'response')),
    ADD COLUMN device_key_id UUID REFERENCES device_keys (id),
    -- After this a queued 'response' downlink is expired and never sent.
    ADD COLUMN expires_at TIMESTAMPTZ,
    -- The message (uplink) whose answer carried it: a retry of that uplink gets the same
    -- answer. No foreign key, so that messages can be partitioned and dropped by age.
    ADD COLUMN message_id BIGINT,
    ALTER COLUMN device_id DROP NOT NULL,
    DROP CONSTRAINT downlinks_status_check,
    ADD CONSTRAINT downlinks_status_check CHECK (status IN
        ('queued', 'sending', 'accepted', 'failed', 'cancelled', 'delivered', 'expired')),
    ADD CONSTRAINT downlinks_transport_target CHECK (
        (transport = 'kpn' AND device_id IS NOT NULL AND device_key_id IS NULL)
        OR (transport = 'response' AND device_key_id IS NOT NULL AND expires_at IS NOT NULL));

-- The KPN workers claim only their own rows.
DROP INDEX downlinks_due_idx;
CREATE INDEX downlinks_due_idx ON downlinks (next_attempt_at)
    WHERE status = 'queued' AND transport = 'kpn';
-- An uplink takes the oldest queued downlink of its device (FIFO).
CREATE INDEX downlinks_answer_idx ON downlinks (device_key_id, seq)
    WHERE status = 'queued' AND transport = 'response';
CREATE INDEX downlinks_message_idx ON downlinks (message_id) WHERE message_id IS NOT NULL;
CREATE INDEX downlinks_device_key_idx ON downlinks (device_key_id, seq DESC)
    WHERE device_key_id IS NOT NULL;
