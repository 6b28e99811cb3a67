-- Migration: 20250101000900_roles_and_row_security.sql
--
-- The seed's security section: row-level security on every table the gateway creates, filtered
-- by space, under the API's own checks (contract revision 3, "Database roles and row-level
-- security"). The host platform's tables (users, spaces, space_members) are only read.
--
-- Who sees what is decided by the transaction's settings, which the API sets for each request
-- (db/pool.py SET_CALLER): app.space_id, app.user_id, app.platform_admin. Unset, no space-scoped
-- row is visible. Policies apply TO PUBLIC and are FORCEd, so the tables' owner is held to them
-- too; only a superuser is not (the gateway refuses to run its queries as one: db/roles.py).
--
-- Paths that must cross spaces (the route-table loader, API-key lookups, bookkeeping, rotate-keys)
-- go through SECURITY DEFINER functions owned by NOLOGIN roles (created by `gateway migrate`
-- before this file runs, see db/roles.py) whose own policies allow exactly what each needs. Each
-- function fixes its search_path, so nothing a caller puts on its path is run with the owner's
-- rights.

-- The settings, read one way everywhere. An unset or empty setting is NULL; a value that is not a
-- UUID is an error (never "no filter").
CREATE OR REPLACE FUNCTION public.app_space_id() RETURNS uuid
LANGUAGE sql STABLE PARALLEL SAFE AS $$ SELECT NULLIF(current_setting('app.space_id', true), '')::uuid $$;

CREATE OR REPLACE FUNCTION public.app_user_id() RETURNS uuid
LANGUAGE sql STABLE PARALLEL SAFE AS $$ SELECT NULLIF(current_setting('app.user_id', true), '')::uuid $$;

CREATE OR REPLACE FUNCTION public.app_platform_admin() RETURNS boolean
LANGUAGE sql STABLE PARALLEL SAFE AS $$ SELECT COALESCE(current_setting('app.platform_admin', true) = 'on', false) $$;

-- Whether the transaction's user maintains the service (marketplace writes).
CREATE OR REPLACE FUNCTION public.app_maintains(service uuid) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT EXISTS (SELECT 1 FROM public.service_maintainers m
                   WHERE m.service_id = service AND m.user_id = public.app_user_id())
$$;

-- Whether an installation belongs to the transaction's space (or the caller is a platform admin).
CREATE OR REPLACE FUNCTION public.app_installation_in_space(installation uuid) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT public.app_platform_admin() OR EXISTS (
        SELECT 1 FROM public.service_installations si
        WHERE si.id = installation AND si.space_id = public.app_space_id())
$$;

CREATE OR REPLACE FUNCTION public.app_instance_in_space(instance uuid) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT public.app_platform_admin() OR EXISTS (
        SELECT 1 FROM public.infrastructure_instances i
        WHERE i.id = instance AND i.space_id = public.app_space_id())
$$;

CREATE OR REPLACE FUNCTION public.app_instance_service_in_space(instance_service uuid) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT public.app_platform_admin() OR EXISTS (
        SELECT 1 FROM public.instance_services s
        JOIN public.infrastructure_instances i ON i.id = s.instance_id
        WHERE s.id = instance_service AND i.space_id = public.app_space_id())
$$;

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['service_registry', 'service_api_routes', 'service_ui_components',
                             'service_installations', 'infrastructure_instances', 'instance_services',
                             'service_management_assignments', 'api_keys', 'service_maintainers'] LOOP
        EXECUTE format('ALTER TABLE public.%I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE public.%I FORCE ROW LEVEL SECURITY', t);
    END LOOP;
END;
$$;

-- Space-scoped rows: visible and writable only inside their space. `FOR ALL ... USING` is also
-- the WITH CHECK of inserts and updates: no row can be written into, or moved to, another space.
CREATE POLICY space_rows ON public.service_installations
    USING (public.app_platform_admin() OR space_id = public.app_space_id());
CREATE POLICY space_rows ON public.api_keys
    USING (public.app_platform_admin() OR space_id = public.app_space_id());
CREATE POLICY space_rows ON public.infrastructure_instances
    USING (public.app_platform_admin() OR space_id = public.app_space_id());
CREATE POLICY space_rows ON public.instance_services
    USING (public.app_instance_in_space(instance_id));
CREATE POLICY space_rows ON public.service_management_assignments
    USING (public.app_instance_service_in_space(instance_service_id));

-- Marketplace rows: the registry is readable by every caller of the API (the handlers hide
-- unpublished entries from non-maintainers, as the API's table says); written only by the
-- service's maintainers and platform admins. Creating a service needs a user (API keys cannot).
CREATE POLICY marketplace_read ON public.service_registry FOR SELECT USING (true);
CREATE POLICY marketplace_create ON public.service_registry FOR INSERT
    WITH CHECK (public.app_platform_admin() OR public.app_user_id() IS NOT NULL);
CREATE POLICY marketplace_update ON public.service_registry FOR UPDATE
    USING (public.app_platform_admin() OR public.app_maintains(id));
CREATE POLICY marketplace_delete ON public.service_registry FOR DELETE
    USING (public.app_platform_admin() OR public.app_maintains(id));

-- Maintainers: readable (they decide the marketplace's visibility); added by a maintainer or an
-- admin, or by a user claiming a service nobody maintains yet (the creator, in the creating
-- transaction: the service row exists, its maintainer row not yet).
CREATE POLICY maintainers_read ON public.service_maintainers FOR SELECT USING (true);
CREATE POLICY maintainers_add ON public.service_maintainers FOR INSERT WITH CHECK (
    public.app_platform_admin() OR public.app_maintains(service_id)
    OR (user_id = public.app_user_id()
        AND NOT EXISTS (SELECT 1 FROM public.service_maintainers m WHERE m.service_id = service_maintainers.service_id)));
CREATE POLICY maintainers_remove ON public.service_maintainers FOR DELETE
    USING (public.app_platform_admin() OR public.app_maintains(service_id));

-- Routes and UI components: service-wide ones are marketplace rows, an installation's are its
-- space's.
CREATE POLICY routes_read ON public.service_api_routes FOR SELECT
    USING (installation_id IS NULL OR public.app_installation_in_space(installation_id));
CREATE POLICY routes_write ON public.service_api_routes FOR ALL
    USING (CASE WHEN installation_id IS NULL THEN public.app_platform_admin() OR public.app_maintains(service_id)
                ELSE public.app_installation_in_space(installation_id) END);
CREATE POLICY components_read ON public.service_ui_components FOR SELECT
    USING (installation_id IS NULL OR public.app_installation_in_space(installation_id));
CREATE POLICY components_write ON public.service_ui_components FOR ALL
    USING (CASE WHEN installation_id IS NULL THEN public.app_platform_admin() OR public.app_maintains(service_id)
                ELSE public.app_installation_in_space(installation_id) END);

-- A function's owner needs CREATE on its schema (checked when a non-superuser migrating login
-- hands the definer functions over). The definer roles log in as nobody.
GRANT CREATE ON SCHEMA public TO gateway_reader, gateway_bookkeeper, gateway_rotator, gateway_auditor;

-- gateway_reader: what the route-table loader and the API-key cache read across spaces.
CREATE POLICY gateway_reader ON public.service_registry FOR SELECT TO gateway_reader USING (true);
CREATE POLICY gateway_reader ON public.service_api_routes FOR SELECT TO gateway_reader USING (true);
CREATE POLICY gateway_reader ON public.service_installations FOR SELECT TO gateway_reader USING (true);
CREATE POLICY gateway_reader ON public.api_keys FOR SELECT TO gateway_reader USING (true);
GRANT SELECT ON public.service_registry, public.service_api_routes, public.service_installations,
    public.api_keys TO gateway_reader;

CREATE OR REPLACE FUNCTION public.gateway_live_routes()
RETURNS TABLE (id uuid, service_id uuid, service_slug varchar, installation_id uuid, route_path varchar,
               method varchar, target_url text, api_base_url text, auth_type varchar, auth_config jsonb,
               rate_limit integer, rate_limit_window integer, cache_enabled boolean, cache_ttl integer,
               options jsonb, updated_at timestamptz)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT r.id, r.service_id, s.slug, r.installation_id, r.route_path, r.method,
           r.target_url, s.api_base_url, r.auth_type, r.auth_config, r.rate_limit, r.rate_limit_window,
           COALESCE(r.cache_enabled, false), r.cache_ttl, COALESCE(r.options, '{}'), r.updated_at
    FROM public.service_api_routes r
    JOIN public.service_registry s ON s.id = r.service_id
    LEFT JOIN public.service_installations si ON si.id = r.installation_id
    WHERE s.deleted_at IS NULL AND s.status IN ('approved', 'deprecated')
      AND (r.installation_id IS NULL OR si.deleted_at IS NULL)
$$;

CREATE OR REPLACE FUNCTION public.gateway_live_installations()
RETURNS TABLE (id uuid, space_id uuid, service_id uuid, service_slug varchar, status varchar,
               permissions jsonb, credentials jsonb, api_auth_type varchar, api_auth_config jsonb,
               updated_at timestamptz)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT si.id, si.space_id, si.service_id, s.slug, si.status,
           COALESCE(si.permissions, '{}'), COALESCE(si.credentials, '{}'),
           s.api_auth_type, COALESCE(s.api_auth_config, '{}'), si.updated_at
    FROM public.service_installations si
    JOIN public.service_registry s ON s.id = si.service_id
    WHERE si.deleted_at IS NULL AND s.deleted_at IS NULL AND s.status IN ('approved', 'deprecated')
$$;

CREATE OR REPLACE FUNCTION public.gateway_routes_fingerprint() RETURNS text
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT (SELECT count(*) || ':' || COALESCE(max(updated_at)::text, '') FROM public.service_api_routes)
        || '|' || (SELECT count(*) || ':' || COALESCE(max(updated_at)::text, '') FROM public.service_installations)
        || '|' || (SELECT count(*) || ':' || COALESCE(max(updated_at)::text, '') FROM public.service_registry)
$$;

CREATE OR REPLACE FUNCTION public.gateway_live_api_keys()
RETURNS TABLE (id uuid, space_id uuid, role varchar, key_hash bytea)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT k.id, k.space_id, k.role, k.key_hash FROM public.api_keys k WHERE k.revoked_at IS NULL
$$;

CREATE OR REPLACE FUNCTION public.gateway_api_keys_by_id(ids uuid[])
RETURNS TABLE (id uuid, space_id uuid, role varchar, key_hash bytea)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT k.id, k.space_id, k.role, k.key_hash FROM public.api_keys k
    WHERE k.id = ANY(ids) AND k.revoked_at IS NULL
$$;

-- One key by the hash the caller presented: nothing else of any key is returned.
CREATE OR REPLACE FUNCTION public.gateway_api_key_by_hash(hash bytea)
RETURNS TABLE (id uuid, space_id uuid, role varchar)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT k.id, k.space_id, k.role FROM public.api_keys k WHERE k.key_hash = hash AND k.revoked_at IS NULL
$$;

CREATE OR REPLACE FUNCTION public.gateway_api_keys_fingerprint() RETURNS text
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT count(*)::text || ':' || COALESCE(md5(string_agg(
               k.id::text || k.space_id::text || k.role || encode(k.key_hash, 'hex'), ',' ORDER BY k.id)), '')
    FROM public.api_keys k WHERE k.revoked_at IS NULL
$$;

ALTER FUNCTION public.gateway_live_routes() OWNER TO gateway_reader;
ALTER FUNCTION public.gateway_live_installations() OWNER TO gateway_reader;
ALTER FUNCTION public.gateway_routes_fingerprint() OWNER TO gateway_reader;
ALTER FUNCTION public.gateway_live_api_keys() OWNER TO gateway_reader;
ALTER FUNCTION public.gateway_api_keys_by_id(uuid[]) OWNER TO gateway_reader;
ALTER FUNCTION public.gateway_api_key_by_hash(bytea) OWNER TO gateway_reader;
ALTER FUNCTION public.gateway_api_keys_fingerprint() OWNER TO gateway_reader;

-- gateway_bookkeeper: counters and timestamps that are not changes (no audit row, no updated_at):
-- last-used touches of API keys, installation_count.
CREATE POLICY gateway_bookkeeper ON public.api_keys FOR ALL TO gateway_bookkeeper USING (true);
CREATE POLICY gateway_bookkeeper ON public.service_registry FOR ALL TO gateway_bookkeeper USING (true);
GRANT SELECT (id), UPDATE (last_used_at) ON public.api_keys TO gateway_bookkeeper;
GRANT SELECT (id, installation_count), UPDATE (installation_count) ON public.service_registry TO gateway_bookkeeper;

CREATE OR REPLACE FUNCTION public.gateway_touch_api_keys(ids uuid[], at timestamptz) RETURNS void
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    UPDATE public.api_keys SET last_used_at = at WHERE id = ANY(ids)
$$;
ALTER FUNCTION public.gateway_touch_api_keys(uuid[], timestamptz) OWNER TO gateway_bookkeeper;

-- Installing and uninstalling lock the service row first (db/installations.py: the lock order,
-- and an approved-status check that holds until commit). A row lock needs the right to update the
-- row, which a space admin installing a plugin does not have on a marketplace row: the lock is
-- taken here. Returns the locked service's id, NULL when none is live.
GRANT SELECT (id, slug, deleted_at) ON public.service_registry TO gateway_bookkeeper;
CREATE OR REPLACE FUNCTION public.gateway_lock_service(service uuid, service_slug text) RETURNS uuid
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT s.id FROM public.service_registry s
    WHERE (s.id = service OR s.slug = service_slug) AND s.deleted_at IS NULL
    FOR NO KEY UPDATE
$$;
ALTER FUNCTION public.gateway_lock_service(uuid, text) OWNER TO gateway_bookkeeper;

-- The installation_count trigger (migration 20250101000700) writes the service row, which a
-- space admin installing a plugin may not: it runs as the bookkeeper.
ALTER FUNCTION public.adjust_installation_count() SECURITY DEFINER;
ALTER FUNCTION public.adjust_installation_count() SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION public.adjust_installation_count() OWNER TO gateway_bookkeeper;

-- gateway_rotator: `gateway rotate-keys` re-seals credentials in every space, and nothing else.
CREATE POLICY gateway_rotator ON public.service_installations FOR ALL TO gateway_rotator USING (true);
CREATE POLICY gateway_rotator ON public.service_management_assignments FOR ALL TO gateway_rotator USING (true);
CREATE POLICY gateway_rotator ON public.infrastructure_instances FOR ALL TO gateway_rotator USING (true);
GRANT SELECT (id, credentials), UPDATE (credentials) ON public.service_installations TO gateway_rotator;
GRANT SELECT (id, credentials), UPDATE (credentials) ON public.service_management_assignments TO gateway_rotator;
GRANT SELECT (id, connection_config), UPDATE (connection_config) ON public.infrastructure_instances TO gateway_rotator;

-- The next rows (by id, after `after`) whose sealed value is not under key `kid`.
CREATE OR REPLACE FUNCTION public.gateway_sealed_batch(tbl text, kid text, after uuid, batch integer)
RETURNS TABLE (id uuid, value jsonb)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF tbl IN ('service_installations', 'service_management_assignments') THEN
        RETURN QUERY EXECUTE format(
            'SELECT t.id, t.credentials FROM public.%I t WHERE t.credentials ? ''kid'' '
            'AND t.credentials->>''kid'' <> $1 AND t.id > $2 ORDER BY t.id LIMIT $3', tbl)
            USING kid, after, batch;
    ELSIF tbl = 'infrastructure_instances' THEN
        RETURN QUERY
            SELECT t.id, t.connection_config FROM public.infrastructure_instances t
            WHERE t.connection_config->'secrets' ? 'kid' AND t.connection_config->'secrets'->>'kid' <> kid
              AND t.id > after ORDER BY t.id LIMIT batch;
    ELSE
        RAISE EXCEPTION 'no sealed values in table %', tbl;
    END IF;
END;
$$;

-- Replace a row's sealed value, only if it still holds the one that was read (a concurrent API
-- write wins). True when replaced.
CREATE OR REPLACE FUNCTION public.gateway_reseal(tbl text, row_id uuid, new_value jsonb, old_value jsonb)
RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    done integer;
BEGIN
    IF tbl IN ('service_installations', 'service_management_assignments') THEN
        EXECUTE format('UPDATE public.%I SET credentials = $1 WHERE id = $2 AND credentials = $3', tbl)
            USING new_value, row_id, old_value;
    ELSIF tbl = 'infrastructure_instances' THEN
        UPDATE public.infrastructure_instances SET connection_config = new_value
        WHERE id = row_id AND connection_config = old_value;
    ELSE
        RAISE EXCEPTION 'no sealed values in table %', tbl;
    END IF;
    GET DIAGNOSTICS done = ROW_COUNT;
    RETURN done = 1;
END;
$$;
ALTER FUNCTION public.gateway_sealed_batch(text, text, uuid, integer) OWNER TO gateway_rotator;
ALTER FUNCTION public.gateway_reseal(text, uuid, jsonb, jsonb) OWNER TO gateway_rotator;

-- Definer functions are executable by PUBLIC by default; only the gateway's role (granted by
-- `gateway migrate`, db/roles.py) may call them.
REVOKE EXECUTE ON FUNCTION public.gateway_live_routes(), public.gateway_live_installations(),
    public.gateway_routes_fingerprint(), public.gateway_live_api_keys(), public.gateway_api_keys_by_id(uuid[]),
    public.gateway_api_key_by_hash(bytea), public.gateway_api_keys_fingerprint(),
    public.gateway_touch_api_keys(uuid[], timestamptz), public.gateway_lock_service(uuid, text),
    public.gateway_sealed_batch(text, text, uuid, integer),
    public.gateway_reseal(text, uuid, jsonb, jsonb) FROM PUBLIC;
