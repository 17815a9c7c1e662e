-- Demo CRM schema, run once by the postgres image on an empty data volume
-- (/docker-entrypoint-initdb.d). Same table as `pgveil demo`.
--
-- Encrypted columns are bytea: they only ever hold pgveil's ciphertext, so
-- the application-level types (text, date) live in deploy/compose/proxy.toml,
-- not here. Unique indexes on them still work: encryption is deterministic.
CREATE DATABASE crm;
\connect crm

CREATE TABLE customers (
    id         int PRIMARY KEY,
    full_name  bytea NOT NULL,   -- pgveil: text
    email      bytea UNIQUE,     -- pgveil: text, domain "email"
    phone      bytea,            -- pgveil: text
    birth_date bytea,            -- pgveil: date
    country    text NOT NULL     -- plaintext
);
