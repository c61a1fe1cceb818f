-- The console reads messages per destination and per device, newest first: the deliveries
-- list filtered by either, a device's timeline, and each destination's last stored delivery
-- (one backward probe, however long the destination has been silent) and its counts of the
-- last day. Without these, a filter on a quiet destination or device walks the whole
-- received-time index.
CREATE INDEX messages_destination_received_idx ON messages (destination_id, received_at DESC, id DESC)
    WHERE destination_id IS NOT NULL;
-- Replaces messages_device_idx (device_id): the same leading column serves what it served
-- (counting a device's messages), so ingestion keeps one index for devices, not two.
CREATE INDEX messages_device_received_idx ON messages (device_id, received_at DESC, id DESC)
    WHERE device_id IS NOT NULL;
DROP INDEX messages_device_idx;
