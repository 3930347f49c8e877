-- Fixture for the docker-compose demo: the table the quickstart writes to, and a role with
-- only what the producer needs (REPLICATION, and ownership of the demo table so it can create
-- the publication).
CREATE ROLE pgevents LOGIN REPLICATION PASSWORD 'pgevents';
CREATE TABLE public.users (
    id bigserial PRIMARY KEY,
    email text NOT NULL UNIQUE,
    full_name text,
    plan text NOT NULL DEFAULT 'free',
    created_at timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE public.users OWNER TO pgevents;
GRANT CREATE ON DATABASE app TO pgevents;
INSERT INTO public.users (email, full_name) VALUES ('ada@example.com', 'Ada Lovelace');

-- What the demo worker's SQL action writes: one row per new user (see docker/postgres/rules.sql).
CREATE TABLE public.welcome_log (
    id bigserial PRIMARY KEY,
    user_id bigint NOT NULL,
    email text NOT NULL,
    label text,
    logged_at timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE public.welcome_log OWNER TO pgevents;
