-- Migration: 20250101001000_audit_log.sql
--
-- The seed's "Audit logging for all changes" (contract revision 3, "Audit log"): every change to
-- a registry or infrastructure row is recorded by the database itself, in the transaction of the
-- change, so no path (the API, a script, the host platform) changes such a row without its record.
--
-- * AFTER row triggers on the nine tables call public.audit_record(), which works out the row's
--   space, the actor and request id from the transaction's settings (db/pool.py SET_CALLER: app.
--   user_id, app.api_key_id, app.request_id), the changed fields, and the old and new values with
--   secrets reduced to their names; bookkeeping columns are left out, and an update of only those
--   writes nothing.
-- * public.audit_append() adds the row to its hash chain: one per space, one for the marketplace
--   (space_id NULL). The chain's lock (a transaction-level advisory lock) is taken first, so
--   writers of one chain take turns until they commit, and the id (taken after the lock)
--   increases along each chain. prev_hash is the hash of the chain's last row; hash =
--   sha256(prev_hash || canonical content), computed by public.audit_row_hash(), which the
--   verifier uses too. The first row of a chain has prev_hash = 32 zero bytes. The chain's head
--   (audit_chain_heads) records its last row (id and hash) at commit, once per chain and
--   transaction (a deferred trigger): updated for every row, the head would pile up row versions
--   that each later lookup in the transaction walks, quadratic in the rows written.
-- * Append-only: UPDATE, DELETE and TRUNCATE of audit_log are refused by triggers, for every role
--   (the owner's too); row-level security lets only gateway_auditor insert.
-- * public.audit_verify() (`gateway audit verify`) recomputes every chain in one pass.
--
-- These functions run as the NOLOGIN role gateway_auditor (SECURITY DEFINER, fixed search_path):
-- the trigger fires as the writer (gateway_app under row-level security), which may not see the
-- parent row that names a child's space, nor other spaces' chains.
--
-- Bookkeeping (not a change: no audit row), as the contract lists it: installation_count,
-- last_used, last_used_at, last_health_check, health_status, updated_at. That such updates keep
-- updated_at is migration 20250101001100's set_updated_at(), with the same list.

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'gateway_auditor') THEN
        CREATE ROLE gateway_auditor NOLOGIN;  -- normally created by `gateway migrate` (db/roles.py)
    END IF;
END;
$$;

CREATE TABLE public.audit_log (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    occurred_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    space_id UUID,                      -- NULL: a marketplace row. No foreign key: history outlives its space.
    actor_user_id UUID,
    actor_api_key_id UUID,
    request_id TEXT,
    action TEXT NOT NULL CHECK (action IN ('insert', 'update', 'delete')),
    table_name TEXT NOT NULL,
    row_id UUID,                        -- the row's id; service_maintainers: its service_id
    changed_fields TEXT[] NOT NULL,
    old_values JSONB,
    new_values JSONB,
    prev_hash BYTEA NOT NULL,
    hash BYTEA NOT NULL
);

-- A chain in id order (a space's listing, newest first; the verifier's links, read from the index
-- alone: no sort of the table), and one row's history.
CREATE INDEX idx_audit_log_space ON public.audit_log (space_id, id) INCLUDE (prev_hash, hash);
CREATE INDEX idx_audit_log_row ON public.audit_log (row_id, id);

-- One row per chain: its last row as of the last commit. A chain cut short at its end still links
-- correctly; its head says where it ended.
CREATE TABLE public.audit_chain_heads (
    chain TEXT PRIMARY KEY,             -- the space's id, or 'marketplace'
    space_id UUID,
    last_id BIGINT NOT NULL,
    last_hash BYTEA NOT NULL
);

-- The canonical content of a row and its hash: the fields in column order, separated by '|', each
-- in a text form no session setting changes: the id; occurred_at as epoch seconds (numeric, to the
-- microsecond: no TimeZone or DateStyle in it); the UUIDs and texts as SQL literals (quote_literal:
-- NULL is NULL, text quoted and escaped); changed_fields, old_values and new_values as they print
-- (an array's and jsonb's text form delimit themselves and are never empty, so NULL prints as
-- nothing; jsonb's form is deterministic: keys sorted, numbers normalized). The form reads back
-- unambiguously. hash = sha256(prev_hash || UTF-8 of that). A SQL-standard body is bound when
-- created, so no caller's search_path reaches it; it is inlined into the verifier's scan.
CREATE FUNCTION public.audit_row_hash(a public.audit_log) RETURNS bytea
LANGUAGE sql STABLE PARALLEL SAFE
RETURN pg_catalog.sha256(a.prev_hash || pg_catalog.convert_to(pg_catalog.format(
    '%s|%s|%L|%L|%L|%L|%L|%L|%L|%s|%s|%s',
    a.id, EXTRACT(EPOCH FROM a.occurred_at), a.space_id, a.actor_user_id, a.actor_api_key_id, a.request_id,
    a.action, a.table_name, a.row_id, a.changed_fields, a.old_values, a.new_values), 'UTF8'));

-- A sealed credentials value, reduced to what may be shown: the names the envelope lists
-- (db/encryption.py keeps them readable), the names of a plain object (a row the host platform
-- wrote without sealing), or only that something is set. PL/pgSQL, as audit_redact: called from
-- the trigger, a SQL function that cannot be inlined would be planned anew in every transaction.
-- (Neither needs a fixed search_path: they run with the privileges of their caller, the trigger,
-- whose path is fixed, and name only pg_catalog's functions, which are found first anyway.)
CREATE FUNCTION public.audit_secret_names(v jsonb) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
BEGIN
    IF v IS NULL OR jsonb_typeof(v) = 'null' THEN
        RETURN v;
    ELSIF jsonb_typeof(v) <> 'object' THEN
        RETURN '"[set]"';
    ELSIF v ? 'ct' THEN  -- an envelope
        RETURN CASE WHEN jsonb_typeof(v -> 'keys') = 'array' THEN v -> 'keys' ELSE '"[set]"' END;
    END IF;
    RETURN COALESCE((SELECT jsonb_agg(k ORDER BY k) FROM jsonb_object_keys(v) AS k), '[]');
END;
$$;

-- A row's values as the audit log keeps them: no bookkeeping column (the trigger removed them), no
-- secret.
CREATE FUNCTION public.audit_redact(tbl text, r jsonb) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
BEGIN
    IF r IS NULL THEN
        RETURN NULL;
    END IF;
    IF tbl IN ('service_installations', 'service_management_assignments') AND r ? 'credentials' THEN
        r := jsonb_set(r, '{credentials}', COALESCE(public.audit_secret_names(r -> 'credentials'), 'null'));
    ELSIF tbl = 'infrastructure_instances' AND jsonb_typeof(r -> 'connection_config') = 'object'
          AND r -> 'connection_config' ? 'secrets' THEN
        r := jsonb_set(r, '{connection_config,secrets}',
                       COALESCE(public.audit_secret_names(r -> 'connection_config' -> 'secrets'), 'null'));
    ELSIF tbl = 'api_keys' AND r ? 'key_hash' THEN
        r := jsonb_set(r, '{key_hash}', CASE WHEN jsonb_typeof(r -> 'key_hash') = 'null' THEN 'null'::jsonb
                                             ELSE '"[set]"'::jsonb END);
    END IF;
    RETURN r;
END;
$$;

-- Append one row to its chain; its id. Only the audit trigger calls it (EXECUTE is revoked).
CREATE FUNCTION public.audit_append(p_space uuid, p_table text, p_row uuid, p_action text,
                                    p_changed text[], p_old jsonb, p_new jsonb) RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
DECLARE
    a public.audit_log;
    head text := COALESCE(p_space::text, 'marketplace');
BEGIN
    -- The chain's lock, held to the end of this transaction (a no-op once this transaction holds
    -- it): a transaction-level advisory lock, which writes nothing (a row lock on the head would
    -- cost a WAL record per transaction). Key: (the audit log's class, the chain's name hashed);
    -- two chains sharing a hash only take turns needlessly. In REPEATABLE READ or SERIALIZABLE a
    -- snapshot older than the lock may miss the chain's latest rows: then the head, which every
    -- committing writer of the chain moved, was changed after that snapshot, and moving it at
    -- commit fails (could not serialize): no chain forks.
    PERFORM pg_advisory_xact_lock(1096107092, hashtext(head));  -- 1096107092: 'AUDT'
    -- Under the lock, this statement's snapshot holds every row of the chain but this
    -- transaction's own, which it sees anyway.
    IF p_space IS NULL THEN
        SELECT x.hash INTO a.prev_hash FROM public.audit_log x WHERE x.space_id IS NULL ORDER BY x.id DESC LIMIT 1;
    ELSE
        SELECT x.hash INTO a.prev_hash FROM public.audit_log x WHERE x.space_id = p_space ORDER BY x.id DESC LIMIT 1;
    END IF;
    a.prev_hash := COALESCE(a.prev_hash, decode(repeat('00', 32), 'hex'));
    a.id := nextval('public.audit_log_id_seq');  -- after the lock: ids increase along the chain
    a.occurred_at := now();
    a.space_id := p_space;
    a.actor_user_id := NULLIF(current_setting('app.user_id', true), '')::uuid;
    a.actor_api_key_id := NULLIF(current_setting('app.api_key_id', true), '')::uuid;
    a.request_id := NULLIF(current_setting('app.request_id', true), '');
    a.action := p_action;
    a.table_name := p_table;
    a.row_id := p_row;
    a.changed_fields := p_changed;
    a.old_values := p_old;
    a.new_values := p_new;
    a.hash := public.audit_row_hash(a);
    INSERT INTO public.audit_log OVERRIDING SYSTEM VALUE VALUES (a.*);
    RETURN a.id;
END;
$$;

-- At commit (deferred), for each audit row the transaction wrote: if it is its chain's last row,
-- the head records it (created with the chain's first row). The chain's lock is still held.
CREATE FUNCTION public.audit_move_head() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
DECLARE
    last_row bigint;
BEGIN
    IF NEW.space_id IS NULL THEN
        SELECT x.id INTO last_row FROM public.audit_log x WHERE x.space_id IS NULL ORDER BY x.id DESC LIMIT 1;
    ELSE
        SELECT x.id INTO last_row FROM public.audit_log x WHERE x.space_id = NEW.space_id ORDER BY x.id DESC LIMIT 1;
    END IF;
    IF last_row = NEW.id THEN
        INSERT INTO public.audit_chain_heads AS h (chain, space_id, last_id, last_hash)
        VALUES (COALESCE(NEW.space_id::text, 'marketplace'), NEW.space_id, NEW.id, NEW.hash)
        ON CONFLICT (chain) DO UPDATE SET last_id = EXCLUDED.last_id, last_hash = EXCLUDED.last_hash;
    END IF;
    RETURN NULL;
END;
$$;

CREATE CONSTRAINT TRIGGER trg_audit_log_chain_head AFTER INSERT ON public.audit_log
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION public.audit_move_head();

-- A parent row's space, for its children's triggers when a delete cascades: by then the parent is
-- gone, so the space it had is kept (transaction-locally) just before it goes.
CREATE FUNCTION public.audit_parent_space(kind text, parent uuid) RETURNS uuid
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
DECLARE
    found uuid;
BEGIN
    IF parent IS NULL THEN
        RETURN NULL;
    END IF;
    IF kind = 'installation' THEN
        SELECT si.space_id INTO found FROM public.service_installations si WHERE si.id = parent;
    ELSIF kind = 'instance' THEN
        SELECT i.space_id INTO found FROM public.infrastructure_instances i WHERE i.id = parent;
    ELSIF kind = 'instance_service' THEN
        SELECT public.audit_parent_space('instance', s.instance_id) INTO found
        FROM public.instance_services s WHERE s.id = parent;
    END IF;
    RETURN COALESCE(found, NULLIF(current_setting('gateway_audit.' || kind || '_'
                                                  || replace(parent::text, '-', ''), true), '')::uuid);
END;
$$;

CREATE FUNCTION public.audit_keep_parent_space() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
DECLARE
    kind text := CASE TG_TABLE_NAME WHEN 'service_installations' THEN 'installation'
                                    WHEN 'infrastructure_instances' THEN 'instance'
                                    ELSE 'instance_service' END;
    space uuid;
BEGIN
    IF kind = 'instance_service' THEN
        space := public.audit_parent_space('instance', OLD.instance_id);
    ELSE
        space := OLD.space_id;
    END IF;
    PERFORM set_config('gateway_audit.' || kind || '_' || replace(OLD.id::text, '-', ''),
                       COALESCE(space::text, ''), true);
    RETURN OLD;
END;
$$;

CREATE FUNCTION public.audit_record() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
DECLARE
    bookkeeping text[] := ARRAY['updated_at', 'installation_count', 'last_used', 'last_used_at',
                                'last_health_check', 'health_status'];
    old_row jsonb;
    new_row jsonb;
    r jsonb;
    changed text[];
    space uuid;
    row_id uuid;
BEGIN
    IF TG_OP <> 'INSERT' THEN
        old_row := to_jsonb(OLD) - bookkeeping;
    END IF;
    IF TG_OP <> 'DELETE' THEN
        new_row := to_jsonb(NEW) - bookkeeping;
    END IF;
    IF TG_OP = 'UPDATE' THEN
        SELECT array_agg(e.key ORDER BY e.key) INTO changed
        FROM jsonb_each(new_row) AS e WHERE e.value IS DISTINCT FROM old_row -> e.key;
        IF changed IS NULL THEN
            RETURN NULL;  -- bookkeeping only, or nothing at all: not a change
        END IF;
    ELSE
        SELECT array_agg(k ORDER BY k) INTO changed FROM jsonb_object_keys(COALESCE(new_row, old_row)) AS k;
    END IF;
    r := COALESCE(new_row, old_row);
    space := CASE TG_TABLE_NAME
        WHEN 'service_registry' THEN NULL
        WHEN 'service_maintainers' THEN NULL
        WHEN 'service_installations' THEN (r ->> 'space_id')::uuid
        WHEN 'api_keys' THEN (r ->> 'space_id')::uuid
        WHEN 'infrastructure_instances' THEN (r ->> 'space_id')::uuid
        WHEN 'service_api_routes' THEN public.audit_parent_space('installation', (r ->> 'installation_id')::uuid)
        WHEN 'service_ui_components' THEN public.audit_parent_space('installation', (r ->> 'installation_id')::uuid)
        WHEN 'instance_services' THEN public.audit_parent_space('instance', (r ->> 'instance_id')::uuid)
        WHEN 'service_management_assignments'
            THEN public.audit_parent_space('instance_service', (r ->> 'instance_service_id')::uuid)
    END;
    IF space IS NULL AND (r ->> 'installation_id') IS NOT NULL THEN
        -- Never file a space's row in the marketplace chain.
        RAISE EXCEPTION 'audit: no space found for % row % (installation %)',
            TG_TABLE_NAME, r ->> 'id', r ->> 'installation_id';
    END IF;
    row_id := CASE WHEN TG_TABLE_NAME = 'service_maintainers' THEN (r ->> 'service_id')::uuid
                   ELSE (r ->> 'id')::uuid END;
    PERFORM public.audit_append(space, TG_TABLE_NAME, row_id, lower(TG_OP), changed,
                                public.audit_redact(TG_TABLE_NAME, old_row),
                                public.audit_redact(TG_TABLE_NAME, new_row));
    RETURN NULL;
END;
$$;

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['service_registry', 'service_api_routes', 'service_ui_components',
                             'service_installations', 'api_keys', 'service_maintainers',
                             'infrastructure_instances', 'instance_services', 'service_management_assignments']
    LOOP
        EXECUTE format('CREATE TRIGGER trg_%1$s_audit AFTER INSERT OR DELETE ON public.%1$I
                        FOR EACH ROW EXECUTE FUNCTION public.audit_record()', t);
        -- Bookkeeping-only updates (last-used touches, health verdicts, installation_count) are
        -- told apart here, without calling the function: the same list as audit_record's.
        EXECUTE format('CREATE TRIGGER trg_%1$s_audit_update AFTER UPDATE ON public.%1$I FOR EACH ROW
                        WHEN ((to_jsonb(OLD) - %2$L::text[]) IS DISTINCT FROM (to_jsonb(NEW) - %2$L::text[]))
                        EXECUTE FUNCTION public.audit_record()', t,
                       '{updated_at,installation_count,last_used,last_used_at,last_health_check,health_status}');
    END LOOP;
    FOREACH t IN ARRAY ARRAY['service_installations', 'infrastructure_instances', 'instance_services']
    LOOP
        EXECUTE format('CREATE TRIGGER trg_%1$s_audit_parent BEFORE DELETE ON public.%1$I
                        FOR EACH ROW EXECUTE FUNCTION public.audit_keep_parent_space()', t);
    END LOOP;
END;
$$;

-- Append-only, for every role: the owner's statements and the auditor's too.
CREATE FUNCTION public.audit_refuse_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$;

CREATE TRIGGER trg_audit_log_append_only BEFORE UPDATE OR DELETE ON public.audit_log
    FOR EACH ROW EXECUTE FUNCTION public.audit_refuse_change();
CREATE TRIGGER trg_audit_log_no_truncate BEFORE TRUNCATE ON public.audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION public.audit_refuse_change();

-- Chain heads move forward, and only through audit_append (as gateway_auditor).
CREATE FUNCTION public.audit_head_guard() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND current_user = 'gateway_auditor' AND NEW.chain = OLD.chain
       AND NEW.space_id IS NOT DISTINCT FROM OLD.space_id
       AND NEW.last_id >= OLD.last_id THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'audit_chain_heads: % refused (a chain head only moves forward, by the audit trigger)', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$;

CREATE TRIGGER trg_audit_chain_heads_guard BEFORE UPDATE OR DELETE ON public.audit_chain_heads
    FOR EACH ROW EXECUTE FUNCTION public.audit_head_guard();
CREATE TRIGGER trg_audit_chain_heads_no_truncate BEFORE TRUNCATE ON public.audit_chain_heads
    FOR EACH STATEMENT EXECUTE FUNCTION public.audit_head_guard();

-- Every chain (or one space's) checked in one snapshot: each row's hash against its content, each
-- row's prev_hash against the hash of the row before it in its chain (by id; the first: 32 zero
-- bytes), each chain's last row against its head (rows cut from the end, a chain with no head or
-- a head with no rows). One row: the rows checked, the chains, and the first failure (by id) or
-- NULLs. `only_space` NULL: every chain; `marketplace` true: the marketplace chain only.
CREATE FUNCTION public.audit_verify(only_space uuid DEFAULT NULL, marketplace boolean DEFAULT false)
RETURNS TABLE (checked bigint, chains bigint, failed_id bigint, problem text)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp SET work_mem = '256MB' AS $$
#variable_conflict use_column
BEGIN
    -- PL/pgSQL: planned with the arguments' values, so one space's chain is read by its index.
    RETURN QUERY
    WITH hashed AS (
        -- The expensive part (the hashes) in a scan of its own, which may run in parallel.
        SELECT count(*) AS checked, min(a.id) FILTER (WHERE a.hash <> public.audit_row_hash(a)) AS bad
        FROM public.audit_log a
        WHERE CASE WHEN marketplace THEN a.space_id IS NULL
                   WHEN only_space IS NOT NULL THEN a.space_id = only_space ELSE true END
    ), linked AS (
        SELECT a.id,
               a.prev_hash <> COALESCE(lag(a.hash) OVER chain, decode(repeat('00', 32), 'hex')) AS bad_link,
               lead(a.id) OVER chain IS NULL AS is_last
        FROM public.audit_log a
        WHERE CASE WHEN marketplace THEN a.space_id IS NULL
                   WHEN only_space IS NOT NULL THEN a.space_id = only_space ELSE true END
        WINDOW chain AS (PARTITION BY a.space_id ORDER BY a.id)
    ), link_problems AS (
        SELECT min(id) FILTER (WHERE bad_link) AS bad,
               array_agg(id) FILTER (WHERE is_last) AS last_ids
        FROM linked
    ), heads AS (
        SELECT h.* FROM public.audit_chain_heads h
        WHERE CASE WHEN marketplace THEN h.space_id IS NULL
                   WHEN only_space IS NOT NULL THEN h.space_id = only_space
                   ELSE true END
    ), ends AS (
        SELECT COALESCE(h.chain, COALESCE(a.space_id::text, 'marketplace')) AS chain,
               a.id AS last_row, a.hash AS last_row_hash, h.last_id AS head_id, h.last_hash AS head_hash
        FROM (SELECT x.id, x.space_id, x.hash FROM link_problems lp
              CROSS JOIN LATERAL unnest(lp.last_ids) AS l(id)
              JOIN public.audit_log x ON x.id = l.id) a
        FULL JOIN heads h ON h.chain = COALESCE(a.space_id::text, 'marketplace')
    ), problems AS (
        SELECT bad AS id, 'row ' || bad || ': its hash does not match its content' AS problem
        FROM hashed WHERE bad IS NOT NULL
        UNION ALL
        SELECT bad, 'row ' || bad || ': its prev_hash is not the hash of the row before it in its chain'
        FROM link_problems WHERE bad IS NOT NULL
        UNION ALL
        SELECT COALESCE(e.last_row, e.head_id),
               CASE
                   WHEN e.head_id IS NULL THEN 'row ' || e.last_row || ': chain ' || e.chain || ' has rows but no chain head'
                   WHEN e.last_row IS NULL THEN 'row ' || e.head_id || ': missing, chain ' || e.chain
                        || ' has no rows but its head names this row'
                   WHEN e.last_row < e.head_id THEN 'row ' || e.head_id || ': missing, chain ' || e.chain
                        || ' ends at row ' || e.last_row || ' but its head names row ' || e.head_id || ' (rows removed from its end)'
                   WHEN e.last_row > e.head_id THEN 'row ' || e.last_row || ': chain ' || e.chain
                        || ' goes past its head (row ' || e.head_id || ')'
                   ELSE 'row ' || e.last_row || ': its hash is not the one the head of chain ' || e.chain || ' holds'
               END
        FROM ends e
        WHERE e.head_id IS NULL OR e.last_row IS NULL OR e.last_row <> e.head_id
              OR e.last_row_hash <> e.head_hash
    )
    SELECT (SELECT checked FROM hashed),
           (SELECT count(*) FROM ends),
           p.id, p.problem
    FROM (SELECT 1) one
    LEFT JOIN LATERAL (SELECT * FROM problems ORDER BY id LIMIT 1) p ON true;
END;
$$;

-- Privileges of the auditor: what its functions read and write, nothing more. Row-level security
-- is forced on every table it reads (migration 900), so it needs policies of its own.
GRANT SELECT (id, space_id) ON public.service_installations TO gateway_auditor;
GRANT SELECT (id, space_id) ON public.infrastructure_instances TO gateway_auditor;
GRANT SELECT (id, instance_id) ON public.instance_services TO gateway_auditor;
CREATE POLICY gateway_auditor ON public.service_installations FOR SELECT TO gateway_auditor USING (true);
CREATE POLICY gateway_auditor ON public.infrastructure_instances FOR SELECT TO gateway_auditor USING (true);
CREATE POLICY gateway_auditor ON public.instance_services FOR SELECT TO gateway_auditor USING (true);

GRANT SELECT, INSERT ON public.audit_log TO gateway_auditor;
GRANT USAGE ON SEQUENCE public.audit_log_id_seq TO gateway_auditor;
GRANT SELECT, INSERT, UPDATE ON public.audit_chain_heads TO gateway_auditor;

ALTER TABLE public.audit_log ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.audit_log FORCE ROW LEVEL SECURITY;
ALTER TABLE public.audit_chain_heads ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.audit_chain_heads FORCE ROW LEVEL SECURITY;

CREATE POLICY gateway_auditor_append ON public.audit_log FOR INSERT TO gateway_auditor WITH CHECK (true);
CREATE POLICY gateway_auditor_read ON public.audit_log FOR SELECT TO gateway_auditor USING (true);
CREATE POLICY gateway_auditor ON public.audit_chain_heads FOR ALL TO gateway_auditor USING (true) WITH CHECK (true);
-- Everyone else reads a space's audit rows inside that space, and platform admins every row; no
-- one else inserts (rows come from the triggers), and no policy allows UPDATE or DELETE at all.
CREATE POLICY space_rows ON public.audit_log FOR SELECT
    USING (NULLIF(current_setting('app.platform_admin', true), '') = 'on'
           OR space_id = NULLIF(current_setting('app.space_id', true), '')::uuid);

ALTER FUNCTION public.audit_append(uuid, text, uuid, text, text[], jsonb, jsonb) OWNER TO gateway_auditor;
ALTER FUNCTION public.audit_parent_space(text, uuid) OWNER TO gateway_auditor;
ALTER FUNCTION public.audit_keep_parent_space() OWNER TO gateway_auditor;
ALTER FUNCTION public.audit_record() OWNER TO gateway_auditor;
ALTER FUNCTION public.audit_move_head() OWNER TO gateway_auditor;
ALTER FUNCTION public.audit_verify(uuid, boolean) OWNER TO gateway_auditor;

-- Only the auditor's own functions append and look up spaces; verifying is for the migrating
-- login (a member of gateway_auditor) and superusers. Trigger functions are not called directly.
REVOKE EXECUTE ON FUNCTION public.audit_append(uuid, text, uuid, text, text[], jsonb, jsonb),
    public.audit_parent_space(text, uuid), public.audit_keep_parent_space(), public.audit_record(), public.audit_move_head(),
    public.audit_verify(uuid, boolean) FROM PUBLIC;
