-- SenML string values may hold U+0000, which PostgreSQL text cannot. Such a string is stored
-- escaped (as a JSON string literal) with string_escaped = true; every other string stays as
-- it was, with string_escaped NULL, so existing rows and their answers are unchanged. A
-- nullable column without a default is added without rewriting the tables.
ALTER TABLE measurements ADD COLUMN string_escaped BOOLEAN;
ALTER TABLE latest_values ADD COLUMN string_escaped BOOLEAN;
