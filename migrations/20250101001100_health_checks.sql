-- Migration: 20250101001100_health_checks.sql
--
-- Active health checks (contract revision 3, "Plugin health"): the route-table loader also reads
-- each installation's service's `api_base_url` and `capabilities.health_check`, and the probing
-- node writes its verdicts into the seed's `last_health_check` / `health_status` across spaces.
-- Both through SECURITY DEFINER functions, as every cross-space path (migration 900).

DROP FUNCTION IF EXISTS public.gateway_live_installations();
CREATE FUNCTION public.gateway_live_installations()
RETURNS TABLE (id uuid, space_id uuid, service_id uuid, service_slug varchar, status varchar,
               permissions jsonb, credentials jsonb, api_auth_type varchar, api_auth_config jsonb,
               updated_at timestamptz, api_base_url text, health_check jsonb, health_status varchar)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT si.id, si.space_id, si.service_id, s.slug, si.status,
           COALESCE(si.permissions, '{}'), COALESCE(si.credentials, '{}'),
           s.api_auth_type, COALESCE(s.api_auth_config, '{}'), si.updated_at,
           s.api_base_url, s.capabilities->'health_check', si.health_status
    FROM public.service_installations si
    JOIN public.service_registry s ON s.id = si.service_id
    WHERE si.deleted_at IS NULL AND s.deleted_at IS NULL AND s.status IN ('approved', 'deprecated')
$$;
GRANT SELECT (capabilities) ON public.service_registry TO gateway_reader;
ALTER FUNCTION public.gateway_live_installations() OWNER TO gateway_reader;
REVOKE EXECUTE ON FUNCTION public.gateway_live_installations() FROM PUBLIC;

-- Verdicts, in one statement per batch: bookkeeping (no updated_at, no audit row, no change
-- notification from the row triggers). An installation that turns healthy is announced on the
-- change channel, so every node closes its breakers for it.
CREATE POLICY gateway_bookkeeper ON public.service_installations FOR ALL TO gateway_bookkeeper USING (true);
GRANT SELECT (id, health_status), UPDATE (last_health_check, health_status)
    ON public.service_installations TO gateway_bookkeeper;

CREATE OR REPLACE FUNCTION public.gateway_record_health(ids uuid[], verdicts text[], at timestamptz)
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    turned uuid;
BEGIN
    FOR turned IN
        WITH v AS (SELECT * FROM unnest(ids, verdicts) AS v(id, verdict)),
             -- The statement's snapshot: the verdicts as they were (no lock here: a row the
             -- UPDATE below changes would then be skipped as modified by this same statement).
             before AS (SELECT si.id, si.health_status FROM public.service_installations si
                        JOIN v ON v.id = si.id),
             done AS (UPDATE public.service_installations si
                      SET last_health_check = at, health_status = v.verdict
                      FROM v WHERE si.id = v.id AND v.verdict IN ('healthy', 'unhealthy')
                      RETURNING si.id, si.health_status)
        SELECT done.id FROM done JOIN before ON before.id = done.id
        WHERE done.health_status = 'healthy' AND before.health_status IS DISTINCT FROM 'healthy'
    LOOP
        PERFORM pg_notify('gateway_changes', jsonb_build_object('table', 'health', 'id', turned,
                                                                'status', 'healthy')::text);
    END LOOP;
END;
$$;
ALTER FUNCTION public.gateway_record_health(uuid[], text[], timestamptz) OWNER TO gateway_bookkeeper;
REVOKE EXECUTE ON FUNCTION public.gateway_record_health(uuid[], text[], timestamptz) FROM PUBLIC;

-- GET /api/v1/services/{id}/health (maintainers, platform admins): how the service's live, active
-- installations fare, in every space, as counts only: no space's or installation's id.
CREATE OR REPLACE FUNCTION public.gateway_service_health(service uuid)
RETURNS TABLE (health_status varchar, installations bigint)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT si.health_status, count(*) FROM public.service_installations si
    WHERE si.service_id = service AND si.deleted_at IS NULL AND COALESCE(si.status, 'active') = 'active'
    GROUP BY si.health_status
$$;
ALTER FUNCTION public.gateway_service_health(uuid) OWNER TO gateway_reader;
REVOKE EXECUTE ON FUNCTION public.gateway_service_health(uuid) FROM PUBLIC;

-- Bookkeeping is not a change (contract revision 3, "Audit log"): an update that touches only
-- these columns keeps `updated_at` as it was, so a verdict, a last-used touch or a count does not
-- look like an edit (nor change the installation's version, which cache keys include).
CREATE OR REPLACE FUNCTION public.set_updated_at() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    bookkeeping text[] := ARRAY['updated_at', 'installation_count', 'last_used', 'last_used_at',
                                'last_health_check', 'health_status'];
BEGIN
    IF (to_jsonb(NEW) - bookkeeping) = (to_jsonb(OLD) - bookkeeping) THEN
        NEW.updated_at := OLD.updated_at;
    ELSE
        NEW.updated_at := NOW();
    END IF;
    RETURN NEW;
END;
$$;
