-- Measurements become range-partitioned on time (one partition per month, created ahead by
-- the server; a DEFAULT partition catches anything outside them). Retention then drops whole
-- partitions instead of deleting rows.
ALTER TABLE measurements RENAME TO measurements_unpartitioned;
ALTER INDEX measurements_device_name_time_idx RENAME TO measurements_unpartitioned_dnt_idx;
ALTER INDEX measurements_device_time_idx RENAME TO measurements_unpartitioned_dt_idx;
ALTER INDEX measurements_time_idx RENAME TO measurements_unpartitioned_t_idx;
ALTER INDEX measurements_message_idx RENAME TO measurements_unpartitioned_m_idx;

CREATE TABLE measurements (
    id            BIGINT GENERATED ALWAYS AS IDENTITY,
    device_id     BIGINT NOT NULL REFERENCES devices (id),
    time          TIMESTAMPTZ NOT NULL,
    name          TEXT NOT NULL,
    unit          TEXT,
    value         DOUBLE PRECISION,
    string_value  TEXT,
    bool_value    BOOLEAN,
    data_value    BYTEA,
    sum           DOUBLE PRECISION,
    message_id    BIGINT NOT NULL REFERENCES messages (id)
) PARTITION BY RANGE (time);

CREATE TABLE measurements_default PARTITION OF measurements DEFAULT;

INSERT INTO measurements (id, device_id, time, name, unit, value, string_value, bool_value, data_value, sum, message_id)
OVERRIDING SYSTEM VALUE
SELECT id, device_id, time, name, unit, value, string_value, bool_value, data_value, sum, message_id
FROM measurements_unpartitioned;

SELECT setval(pg_get_serial_sequence('measurements', 'id'),
              COALESCE((SELECT max(id) FROM measurements), 0) + 1, false);

DROP TABLE measurements_unpartitioned;

CREATE INDEX measurements_device_name_time_idx ON measurements (device_id, name, time DESC, id DESC);
CREATE INDEX measurements_device_time_idx ON measurements (device_id, time DESC, id DESC);
CREATE INDEX measurements_time_idx ON measurements (time DESC, id DESC);
CREATE INDEX measurements_message_idx ON measurements (message_id);
