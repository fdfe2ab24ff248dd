-- Respite's demo schema: one table per policy in config.yaml.
CREATE TABLE IF NOT EXISTS users (
    id    int PRIMARY KEY,
    name  text NOT NULL,
    email text UNIQUE,
    age   int CHECK (age >= 0)
);
CREATE TABLE IF NOT EXISTS products (
    sku   text PRIMARY KEY,
    name  text NOT NULL DEFAULT '',
    stock int NOT NULL CHECK (stock >= 0)
);
CREATE TABLE IF NOT EXISTS page_views (
    page_id text PRIMARY KEY,
    views   bigint NOT NULL DEFAULT 0
);
INSERT INTO users VALUES (1, 'Ada Lovelace', 'ada@example.com', 36), (2, 'Alan Turing', 'alan@example.com', 41)
    ON CONFLICT DO NOTHING;
INSERT INTO products VALUES ('apple', 'Apple', 10), ('pear', 'Pear', 3) ON CONFLICT DO NOTHING;
INSERT INTO page_views VALUES ('home', 100) ON CONFLICT DO NOTHING;
