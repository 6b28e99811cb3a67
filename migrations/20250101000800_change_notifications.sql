-- Migration: 20250101000800_change_notifications.sql
--
-- Every gateway keeps routes, installations, memberships and API keys in memory so a proxied
-- request needs no query. These triggers tell them, through LISTEN/NOTIFY on channel
-- `gateway_changes`, which rows changed, so a change made through any node (or by the host
-- platform writing its own tables) is in force everywhere within a second.
-- The payload names the table and the ids a cache is keyed by, never any secret. Updates that
-- touch only bookkeeping columns (counters, health, last use) notify nobody: the API-key
-- last-use flush and every install's count update would otherwise empty caches for nothing.

CREATE OR REPLACE FUNCTION public.notify_gateway_change() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    r record;
    payload jsonb;
    bookkeeping text[] := ARRAY['updated_at', 'last_used_at', 'installation_count', 'rating',
                                'review_count', 'last_health_check', 'health_status'];
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
    FOREACH t IN ARRAY ARRAY['service_registry', 'service_installations', 'service_api_routes',
                             'space_members', 'api_keys', 'users']
    LOOP
        EXECUTE format('DROP TRIGGER IF EXISTS trg_%1$s_notify ON public.%1$I', t);
        EXECUTE format('CREATE TRIGGER trg_%1$s_notify AFTER INSERT OR UPDATE OR DELETE ON public.%1$I
                        FOR EACH ROW EXECUTE FUNCTION public.notify_gateway_change()', t);
    END LOOP;
END;
$$;
