-- Migration: 20250101001300_management_proxy.sql
--
-- The management proxy (contract revision 3): /spaces/{space}/instance-services/{id}/manage/...
-- calls the management plugin assigned to an instance service with the assignment's credentials.
-- Assignments and instance services are served from memory like routes, so the loader reads them
-- (across spaces, through a SECURITY DEFINER function) and their changes notify every node.

CREATE POLICY gateway_reader ON public.service_management_assignments FOR SELECT TO gateway_reader USING (true);
CREATE POLICY gateway_reader ON public.instance_services FOR SELECT TO gateway_reader USING (true);
CREATE POLICY gateway_reader ON public.infrastructure_instances FOR SELECT TO gateway_reader USING (true);
GRANT SELECT (id, instance_service_id, plugin_id, assigned_at, credentials, is_active)
    ON public.service_management_assignments TO gateway_reader;
GRANT SELECT (id, instance_id) ON public.instance_services TO gateway_reader;
GRANT SELECT (id, space_id, deleted_at) ON public.infrastructure_instances TO gateway_reader;

-- Active assignments of instance services on live instances. `version` changes whenever the
-- sealed credentials do (the proxy caches opened credentials per version).
CREATE OR REPLACE FUNCTION public.gateway_live_assignments()
RETURNS TABLE (id uuid, instance_service_id uuid, instance_id uuid, space_id uuid, plugin_id uuid,
               credentials jsonb, assigned_at timestamptz, version text)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT a.id, a.instance_service_id, s.instance_id, i.space_id, a.plugin_id,
           COALESCE(a.credentials, '{}'), a.assigned_at, md5(COALESCE(a.credentials, '{}')::text)
    FROM public.service_management_assignments a
    JOIN public.instance_services s ON s.id = a.instance_service_id
    JOIN public.infrastructure_instances i ON i.id = s.instance_id
    WHERE COALESCE(a.is_active, true) AND i.deleted_at IS NULL AND i.space_id IS NOT NULL
$$;
ALTER FUNCTION public.gateway_live_assignments() OWNER TO gateway_reader;
REVOKE EXECUTE ON FUNCTION public.gateway_live_assignments() FROM PUBLIC;

-- last_used, to the minute, across spaces: bookkeeping.
CREATE POLICY gateway_bookkeeper ON public.service_management_assignments FOR ALL TO gateway_bookkeeper USING (true);
GRANT SELECT (id), UPDATE (last_used) ON public.service_management_assignments TO gateway_bookkeeper;
CREATE OR REPLACE FUNCTION public.gateway_touch_assignments(ids uuid[], at timestamptz) RETURNS void
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    UPDATE public.service_management_assignments SET last_used = at WHERE id = ANY(ids)
$$;
ALTER FUNCTION public.gateway_touch_assignments(uuid[], timestamptz) OWNER TO gateway_bookkeeper;
REVOKE EXECUTE ON FUNCTION public.gateway_touch_assignments(uuid[], timestamptz) FROM PUBLIC;

-- The change notification of migration 800, with last_used and last_seen (a discovery sync's
-- refresh) as bookkeeping too, now also on the three tables the management proxy keeps in memory.
CREATE OR REPLACE FUNCTION public.notify_gateway_change() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    r record;
    payload jsonb;
    bookkeeping text[] := ARRAY['updated_at', 'last_used_at', 'last_used', 'last_seen', 'installation_count',
                                'rating', 'review_count', 'last_health_check', 'health_status'];
BEGIN
    IF TG_OP = 'UPDATE' AND (to_jsonb(NEW) - bookkeeping) = (to_jsonb(OLD) - bookkeeping) THEN
        RETURN NULL;
    END IF;
    IF TG_OP = 'DELETE' THEN r := OLD; ELSE r := NEW; END IF;
    payload := jsonb_build_object('table', TG_TABLE_NAME, 'op', TG_OP);
    IF TG_TABLE_NAME = 'space_members' THEN
        payload := payload || jsonb_build_object('space_id', r.space_id, 'user_id', r.user_id);
    ELSE
        payload := payload || jsonb_build_object('id', r.id);
    END IF;
    PERFORM pg_notify('gateway_changes', payload::text);
    RETURN NULL;
END;
$$;

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['service_management_assignments', 'instance_services', 'infrastructure_instances']
    LOOP
        EXECUTE format('DROP TRIGGER IF EXISTS trg_%1$s_notify ON public.%1$I', t);
        EXECUTE format('CREATE TRIGGER trg_%1$s_notify AFTER INSERT OR UPDATE OR DELETE ON public.%1$I
                        FOR EACH ROW EXECUTE FUNCTION public.notify_gateway_change()', t);
    END LOOP;
END;
$$;
