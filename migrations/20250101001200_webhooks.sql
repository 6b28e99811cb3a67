-- Migration: 20250101001200_webhooks.sql
--
-- Lifecycle webhooks (contract revision 3, "Webhooks"): every event is written to an outbox,
-- public.webhook_deliveries, by triggers in the same transaction as the change that causes it,
-- so a rolled-back change sends nothing and a committed one is never forgotten (also across a
-- crash). Delivery workers on every node take due rows with FOR UPDATE SKIP LOCKED after commit
-- (gateway/webhooks.py), woken by NOTIFY on channel `gateway_webhooks`.
--
-- Events, written only while the service has webhook_supported, a capabilities.webhook_url and
-- the event in webhook_events:
--   installation.created   an installation inserted live, or a soft-deleted one revived
--   installation.updated   a live installation changed as the API shows it
--   installation.deleted   a live installation soft-deleted (or its row deleted)
--   service.approved / service.rejected / service.deprecated   the service's status became so
--   assignment.created / assignment.deleted   a management assignment of the plugin inserted or
--                          deleted (also when deleting its instance service takes it along)
-- Bookkeeping is not a change: an update that touches only installation_count, last_used,
-- last_used_at, last_health_check, health_status or updated_at sends nothing, and neither does
-- `gateway rotate-keys` re-sealing credentials under the new key (same names, another key id;
-- a credentials write by the API keeps the key id of the ring's first key and sends an event).
--
-- `data` is the row as the API shows it: credentials appear only as their names
-- (`credential_keys`), never their envelope. Times are rendered in UTC.
--
-- Row-level security (migration 900's design): the outbox is forced like every gateway table.
-- The service's maintainers and platform admins read it; nobody writes it but the NOLOGIN role
-- `gateway_courier`, which owns the SECURITY DEFINER trigger functions (they read the service
-- across spaces and write the outbox under any caller) and the delivery workers' functions
-- (claim, record, redeliver). A role of its own rather than gateway_bookkeeper: the bookkeeper
-- may update counters and timestamps everywhere, the courier may only read the few columns an
-- event needs and write the outbox; neither gains the other's rights.

GRANT CREATE ON SCHEMA public TO gateway_courier;

CREATE TABLE IF NOT EXISTS public.webhook_deliveries (
    id UUID PRIMARY KEY,
    service_id UUID NOT NULL REFERENCES public.service_registry(id) ON DELETE CASCADE,
    -- No foreign keys: deleting a space (which cascades to its installations) must keep the
    -- events it causes, as the audit log keeps its rows.
    space_id UUID,
    installation_id UUID,
    event TEXT NOT NULL CHECK (event IN (
        'installation.created', 'installation.updated', 'installation.deleted',
        'service.approved', 'service.rejected', 'service.deprecated',
        'assignment.created', 'assignment.deleted')),
    occurred_at TIMESTAMPTZ NOT NULL,
    body JSONB NOT NULL,  -- what is POSTed, as body::text (the same bytes on every attempt)
    status TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts INTEGER NOT NULL DEFAULT 0,  -- since the delivery was last queued
    last_status_code INTEGER,
    last_error TEXT,  -- what went wrong, in the gateway's words: never a secret or a vendor's answer
    last_attempt_at TIMESTAMPTZ,
    -- Pending: when the next attempt is due; while an attempt is in flight, the end of its
    -- claim's lease (a node killed mid-delivery leaves it to another then).
    next_attempt_at TIMESTAMPTZ,
    lease_id UUID,  -- the claim in flight; its result is recorded only under the same lease
    created_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    delivered_at TIMESTAMPTZ,
    CHECK ((status = 'pending') = (next_attempt_at IS NOT NULL))
);

CREATE INDEX IF NOT EXISTS idx_webhook_deliveries_due ON public.webhook_deliveries (next_attempt_at)
    WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS idx_webhook_deliveries_service ON public.webhook_deliveries (service_id, created_at, id);

ALTER TABLE public.webhook_deliveries ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.webhook_deliveries FORCE ROW LEVEL SECURITY;

-- Marketplace-style: the vendor's maintainers and platform admins read; no policy lets the app
-- role write (it has SELECT only, db/roles.py), redelivery goes through gateway_webhook_redeliver.
CREATE POLICY maintainers_read ON public.webhook_deliveries FOR SELECT
    USING (public.app_platform_admin() OR public.app_maintains(service_id));

-- gateway_courier: the outbox, and the columns an event's row needs.
CREATE POLICY gateway_courier ON public.webhook_deliveries FOR ALL TO gateway_courier USING (true);
GRANT SELECT, INSERT, UPDATE ON public.webhook_deliveries TO gateway_courier;
CREATE POLICY gateway_courier ON public.service_registry FOR SELECT TO gateway_courier USING (true);
GRANT SELECT (id, slug, name, status, capabilities, webhook_supported, webhook_events, deleted_at)
    ON public.service_registry TO gateway_courier;
CREATE POLICY gateway_courier ON public.service_installations FOR SELECT TO gateway_courier USING (true);
GRANT SELECT (id, service_id, space_id, deleted_at) ON public.service_installations TO gateway_courier;
CREATE POLICY gateway_courier ON public.instance_services FOR SELECT TO gateway_courier USING (true);
GRANT SELECT (id, instance_id) ON public.instance_services TO gateway_courier;
CREATE POLICY gateway_courier ON public.infrastructure_instances FOR SELECT TO gateway_courier USING (true);
GRANT SELECT (id, space_id) ON public.infrastructure_instances TO gateway_courier;
CREATE POLICY gateway_courier ON public.service_management_assignments FOR SELECT TO gateway_courier USING (true);
GRANT SELECT (id, instance_service_id, plugin_id, assigned_by, assigned_at, config, credentials, is_active, last_used)
    ON public.service_management_assignments TO gateway_courier;
-- app_maintains() (redelivery's rights check) reads the maintainers; their read policy is PUBLIC.
GRANT SELECT (service_id, user_id) ON public.service_maintainers TO gateway_courier;

-- The credential names of a sealed envelope (db/encryption.py credential_keys), never more.
CREATE OR REPLACE FUNCTION public.gateway_credential_keys(envelope jsonb) RETURNS jsonb
LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE WHEN jsonb_typeof(envelope->'keys') = 'array' THEN envelope->'keys' ELSE '[]'::jsonb END
$$;

-- The destination host of a webhook URL (its authority without user info, lower-cased): the key
-- of the workers' per-host bound, computed here so that claim and worker agree.
CREATE OR REPLACE FUNCTION public.gateway_webhook_host(url text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
    SELECT lower(substring(url FROM '^[A-Za-z][A-Za-z0-9+.-]*://(?:[^@/?#]*@)?([^/?#]*)'))
$$;

-- Write one event, if the service takes it. Runs as gateway_courier (called only from its
-- definer trigger functions; nobody else may execute it).
CREATE OR REPLACE FUNCTION public.gateway_webhook_enqueue(service uuid, space uuid, installation uuid,
                                                          kind text, data jsonb) RETURNS void
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp SET TimeZone = 'UTC' AS $$
DECLARE
    s record;
    delivery uuid := gen_random_uuid();
    happened timestamptz := clock_timestamp();  -- orders the events of one transaction too
BEGIN
    SELECT r.slug, r.name, r.webhook_supported, r.webhook_events, r.capabilities->>'webhook_url' AS url
    INTO s FROM public.service_registry r WHERE r.id = service AND r.deleted_at IS NULL;
    IF NOT FOUND OR NOT COALESCE(s.webhook_supported, false) OR COALESCE(s.url, '') = ''
            OR NOT kind = ANY(COALESCE(s.webhook_events, '{}'::text[])) THEN
        RETURN;
    END IF;
    IF kind LIKE 'installation.%' THEN
        data := data || jsonb_build_object('service_slug', s.slug, 'service_name', s.name);
    END IF;
    INSERT INTO public.webhook_deliveries
        (id, service_id, space_id, installation_id, event, occurred_at, body, next_attempt_at)
    VALUES (delivery, service, space, installation, kind, happened,
            jsonb_build_object('id', delivery, 'event', kind, 'occurred_at', happened, 'service_id', service,
                               'space_id', space, 'installation_id', installation, 'data', data),
            now());
    -- One notification per transaction (identical payloads are folded), delivered at commit.
    PERFORM pg_notify('gateway_webhooks', '');
END;
$$;

-- Installations, as the API shows them (gateway/api/models/installations.py Installation).
CREATE OR REPLACE FUNCTION public.gateway_webhook_installation_data(r public.service_installations) RETURNS jsonb
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp SET TimeZone = 'UTC' AS $$
    SELECT jsonb_build_object(
        'id', r.id, 'service_id', r.service_id, 'space_id', r.space_id, 'installed_by', r.installed_by,
        'config', r.config, 'credential_keys', public.gateway_credential_keys(r.credentials),
        'status', r.status, 'last_health_check', r.last_health_check, 'health_status', r.health_status,
        'permissions', r.permissions, 'installed_at', r.installed_at, 'updated_at', r.updated_at)
$$;

CREATE OR REPLACE FUNCTION public.gateway_webhook_installation() RETURNS trigger
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET TimeZone = 'UTC' AS $$
DECLARE
    kind text;
    r public.service_installations;
    bookkeeping text[] := ARRAY['updated_at', 'last_health_check', 'health_status', 'credentials'];
BEGIN
    IF TG_OP = 'INSERT' THEN
        IF NEW.deleted_at IS NOT NULL THEN RETURN NULL; END IF;
        kind := 'installation.created'; r := NEW;
    ELSIF TG_OP = 'DELETE' THEN
        IF OLD.deleted_at IS NOT NULL THEN RETURN NULL; END IF;
        kind := 'installation.deleted'; r := OLD;
    ELSIF OLD.deleted_at IS NULL AND NEW.deleted_at IS NOT NULL THEN
        kind := 'installation.deleted'; r := NEW;
    ELSIF OLD.deleted_at IS NOT NULL AND NEW.deleted_at IS NULL THEN
        kind := 'installation.created'; r := NEW;
    ELSIF NEW.deleted_at IS NOT NULL THEN
        RETURN NULL;  -- a deleted installation's row: nothing a vendor knows of
    ELSIF (to_jsonb(NEW) - bookkeeping) = (to_jsonb(OLD) - bookkeeping)
          AND (NEW.credentials IS NOT DISTINCT FROM OLD.credentials
               OR (NEW.credentials->>'kid' IS DISTINCT FROM OLD.credentials->>'kid'
                   AND NEW.credentials->'keys' IS NOT DISTINCT FROM OLD.credentials->'keys')) THEN
        RETURN NULL;  -- bookkeeping, or rotate-keys re-sealing the same credentials
    ELSE
        kind := 'installation.updated'; r := NEW;
    END IF;
    PERFORM public.gateway_webhook_enqueue(r.service_id, r.space_id, r.id, kind,
                                           public.gateway_webhook_installation_data(r));
    RETURN NULL;
END;
$$;

-- Services, as the API shows them (gateway/api/models/services.py Service).
CREATE OR REPLACE FUNCTION public.gateway_webhook_service() RETURNS trigger
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET TimeZone = 'UTC' AS $$
BEGIN
    IF NEW.status NOT IN ('approved', 'rejected', 'deprecated') THEN
        RETURN NULL;
    END IF;
    PERFORM public.gateway_webhook_enqueue(NEW.id, NULL, NULL, 'service.' || NEW.status, jsonb_build_object(
        'id', NEW.id, 'name', NEW.name, 'slug', NEW.slug, 'description', NEW.description,
        'version', NEW.version, 'provider', NEW.provider, 'provider_url', NEW.provider_url,
        'category', NEW.category, 'status', NEW.status, 'status_reason', NEW.status_reason,
        'capabilities', NEW.capabilities, 'api_base_url', NEW.api_base_url,
        'api_auth_type', NEW.api_auth_type, 'api_auth_config', NEW.api_auth_config,
        'ui_type', NEW.ui_type, 'ui_config', NEW.ui_config, 'webhook_supported', NEW.webhook_supported,
        'webhook_events', NEW.webhook_events, 'icon_url', NEW.icon_url, 'screenshots', NEW.screenshots,
        'documentation_url', NEW.documentation_url, 'support_url', NEW.support_url,
        'pricing_info', NEW.pricing_info, 'installation_count', NEW.installation_count,
        'rating', NEW.rating, 'review_count', NEW.review_count, 'verified', NEW.verified,
        'security_audit', NEW.security_audit, 'created_at', NEW.created_at, 'updated_at', NEW.updated_at));
    RETURN NULL;
END;
$$;

-- Assignments, as the API shows them (gateway/api/models/assignments.py Assignment), with the
-- space they are in and the plugin's installation there.
CREATE OR REPLACE FUNCTION public.gateway_webhook_assignment_event(a public.service_management_assignments,
                                                                   kind text, space uuid) RETURNS void
LANGUAGE sql VOLATILE SET search_path = pg_catalog, pg_temp SET TimeZone = 'UTC' AS $$
    SELECT public.gateway_webhook_enqueue(a.plugin_id, space, (
            SELECT si.id FROM public.service_installations si
            WHERE si.service_id = a.plugin_id AND si.space_id = space AND si.deleted_at IS NULL), kind,
        jsonb_build_object(
            'id', a.id, 'instance_service_id', a.instance_service_id, 'plugin_id', a.plugin_id,
            'assigned_by', a.assigned_by, 'assigned_at', a.assigned_at, 'config', a.config,
            'credential_keys', public.gateway_credential_keys(a.credentials), 'is_active', a.is_active,
            'last_used', a.last_used))
$$;

CREATE OR REPLACE FUNCTION public.gateway_webhook_assignment() RETURNS trigger
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET TimeZone = 'UTC' AS $$
DECLARE
    a public.service_management_assignments;
    space uuid;
BEGIN
    IF TG_OP = 'INSERT' THEN a := NEW; ELSE a := OLD; END IF;
    SELECT i.space_id INTO space FROM public.instance_services s
    JOIN public.infrastructure_instances i ON i.id = s.instance_id WHERE s.id = a.instance_service_id;
    -- Not found on a delete: its instance service is being deleted, whose trigger (below) wrote
    -- the event while the space could still be read.
    IF space IS NOT NULL THEN
        PERFORM public.gateway_webhook_assignment_event(
            a, CASE TG_OP WHEN 'INSERT' THEN 'assignment.created' ELSE 'assignment.deleted' END, space);
    END IF;
    RETURN NULL;
END;
$$;

-- Deleting an instance service deletes its assignments (ON DELETE CASCADE), after the instance
-- service is gone: their events are written before, while its space can be read.
CREATE OR REPLACE FUNCTION public.gateway_webhook_instance_service_deleted() RETURNS trigger
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET TimeZone = 'UTC' AS $$
DECLARE
    a public.service_management_assignments;
    space uuid;
BEGIN
    SELECT i.space_id INTO space FROM public.infrastructure_instances i WHERE i.id = OLD.instance_id;
    IF space IS NOT NULL THEN
        FOR a IN SELECT * FROM public.service_management_assignments x WHERE x.instance_service_id = OLD.id LOOP
            PERFORM public.gateway_webhook_assignment_event(a, 'assignment.deleted', space);
        END LOOP;
    END IF;
    RETURN OLD;
END;
$$;

DROP TRIGGER IF EXISTS trg_service_installations_webhook ON public.service_installations;
CREATE TRIGGER trg_service_installations_webhook AFTER INSERT OR DELETE ON public.service_installations
    FOR EACH ROW EXECUTE FUNCTION public.gateway_webhook_installation();
-- Bookkeeping updates (health verdicts, mostly) do not even call the function.
DROP TRIGGER IF EXISTS trg_service_installations_webhook_update ON public.service_installations;
CREATE TRIGGER trg_service_installations_webhook_update AFTER UPDATE ON public.service_installations
    FOR EACH ROW
    WHEN ((to_jsonb(OLD) - '{updated_at,last_health_check,health_status}'::text[])
          IS DISTINCT FROM (to_jsonb(NEW) - '{updated_at,last_health_check,health_status}'::text[]))
    EXECUTE FUNCTION public.gateway_webhook_installation();
DROP TRIGGER IF EXISTS trg_service_registry_webhook ON public.service_registry;
CREATE TRIGGER trg_service_registry_webhook AFTER UPDATE OF status ON public.service_registry
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION public.gateway_webhook_service();
DROP TRIGGER IF EXISTS trg_service_management_assignments_webhook ON public.service_management_assignments;
CREATE TRIGGER trg_service_management_assignments_webhook AFTER INSERT OR DELETE
    ON public.service_management_assignments
    FOR EACH ROW EXECUTE FUNCTION public.gateway_webhook_assignment();
DROP TRIGGER IF EXISTS trg_instance_services_webhook ON public.instance_services;
CREATE TRIGGER trg_instance_services_webhook BEFORE DELETE ON public.instance_services
    FOR EACH ROW EXECUTE FUNCTION public.gateway_webhook_instance_service_deleted();

-- The delivery workers' claim: due deliveries, at most `per_host` in flight per destination host
-- on the claiming node (`busy_hosts` / `busy_counts`: what it has in flight now) and `max_total`
-- in all, oldest due first, locked with SKIP LOCKED so concurrent claimers never take the same
-- row. Each is leased: `next_attempt_at` moves `lease_seconds` ahead, so a node killed mid-delivery
-- leaves it to the next claim after that. `attempts` counts the attempt now starting. `active`:
-- whether the service still takes webhooks (the worker fails those that no longer do).
CREATE OR REPLACE FUNCTION public.gateway_webhook_claim(max_total integer, per_host integer, busy_hosts text[],
                                                        busy_counts integer[], lease_seconds double precision)
RETURNS TABLE (id uuid, service_id uuid, slug varchar, url text, host text, event text, body text,
               attempts integer, lease uuid, active boolean)
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    WITH due AS (
        SELECT d.id, d.next_attempt_at, public.gateway_webhook_host(s.capabilities->>'webhook_url') AS host
        FROM public.webhook_deliveries d JOIN public.service_registry s ON s.id = d.service_id
        WHERE d.status = 'pending' AND d.next_attempt_at <= now()
    ), ranked AS (
        SELECT due.id, due.next_attempt_at,
               row_number() OVER (PARTITION BY due.host ORDER BY due.next_attempt_at, due.id)
                   + COALESCE(b.n, 0) AS place
        FROM due LEFT JOIN unnest(busy_hosts, busy_counts) AS b(h, n) ON b.h = due.host
    ), chosen AS (
        SELECT ranked.id FROM ranked WHERE ranked.place <= per_host
        ORDER BY ranked.next_attempt_at, ranked.id LIMIT max_total
    ), locked AS (
        SELECT d.id FROM public.webhook_deliveries d
        WHERE d.id IN (SELECT chosen.id FROM chosen) AND d.status = 'pending' AND d.next_attempt_at <= now()
        FOR UPDATE SKIP LOCKED
    ), claimed AS (
        UPDATE public.webhook_deliveries d
        SET attempts = d.attempts + 1, last_attempt_at = now(), lease_id = gen_random_uuid(),
            next_attempt_at = now() + make_interval(secs => lease_seconds)
        FROM locked WHERE d.id = locked.id
        RETURNING d.id, d.service_id, d.event, d.body, d.attempts, d.lease_id
    )
    SELECT c.id, c.service_id, s.slug, s.capabilities->>'webhook_url',
           public.gateway_webhook_host(s.capabilities->>'webhook_url'), c.event, c.body::text, c.attempts,
           c.lease_id,
           s.deleted_at IS NULL AND COALESCE(s.webhook_supported, false)
               AND COALESCE(s.capabilities->>'webhook_url', '') <> ''
    FROM claimed c JOIN public.service_registry s ON s.id = c.service_id
$$;

-- An attempt's outcome, under the lease that claimed it (a lease that expired and was claimed
-- again, or a redelivery meanwhile, makes it a no-op): `delivered`, `retry` after
-- `retry_seconds`, or `failed`. True when recorded.
CREATE OR REPLACE FUNCTION public.gateway_webhook_record(delivery uuid, lease uuid, outcome text,
                                                         status_code integer, error text,
                                                         retry_seconds double precision)
RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    done integer;
BEGIN
    IF outcome NOT IN ('delivered', 'retry', 'failed') THEN
        RAISE EXCEPTION 'unknown outcome %', outcome;
    END IF;
    UPDATE public.webhook_deliveries d
    SET status = CASE outcome WHEN 'retry' THEN 'pending' ELSE outcome END,
        delivered_at = CASE outcome WHEN 'delivered' THEN now() ELSE NULL END,
        next_attempt_at = CASE outcome WHEN 'retry' THEN now() + make_interval(secs => retry_seconds) END,
        last_status_code = status_code, last_error = left(error, 500), lease_id = NULL
    WHERE d.id = delivery AND d.lease_id = lease AND d.status = 'pending';
    GET DIAGNOSTICS done = ROW_COUNT;
    RETURN done = 1;
END;
$$;

-- POST .../redeliver: queue a delivery again (due now, its attempts counted afresh), for the
-- service's maintainers and platform admins only (checked here too, on the transaction's
-- app.* settings). The row as queued, or nothing when the caller may not or it is not there.
CREATE OR REPLACE FUNCTION public.gateway_webhook_redeliver(service uuid, delivery uuid)
RETURNS SETOF public.webhook_deliveries
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NOT (public.app_platform_admin() OR public.app_maintains(service)) THEN
        RETURN;
    END IF;
    RETURN QUERY
        UPDATE public.webhook_deliveries d
        SET status = 'pending', attempts = 0, next_attempt_at = now(), lease_id = NULL, delivered_at = NULL
        WHERE d.id = delivery AND d.service_id = service
        RETURNING d.*;
    IF FOUND THEN
        PERFORM pg_notify('gateway_webhooks', '');
    END IF;
END;
$$;

ALTER FUNCTION public.gateway_webhook_enqueue(uuid, uuid, uuid, text, jsonb) OWNER TO gateway_courier;
ALTER FUNCTION public.gateway_webhook_installation_data(public.service_installations) OWNER TO gateway_courier;
ALTER FUNCTION public.gateway_webhook_installation() OWNER TO gateway_courier;
ALTER FUNCTION public.gateway_webhook_service() OWNER TO gateway_courier;
ALTER FUNCTION public.gateway_webhook_assignment_event(public.service_management_assignments, text, uuid)
    OWNER TO gateway_courier;
ALTER FUNCTION public.gateway_webhook_assignment() OWNER TO gateway_courier;
ALTER FUNCTION public.gateway_webhook_instance_service_deleted() OWNER TO gateway_courier;
ALTER FUNCTION public.gateway_webhook_claim(integer, integer, text[], integer[], double precision)
    OWNER TO gateway_courier;
ALTER FUNCTION public.gateway_webhook_record(uuid, uuid, text, integer, text, double precision)
    OWNER TO gateway_courier;
ALTER FUNCTION public.gateway_webhook_redeliver(uuid, uuid) OWNER TO gateway_courier;

-- Only the gateway's role may call the workers' and the API's functions (granted by `gateway
-- migrate`, db/roles.py); the helpers are the courier's own.
REVOKE EXECUTE ON FUNCTION public.gateway_webhook_enqueue(uuid, uuid, uuid, text, jsonb),
    public.gateway_webhook_installation_data(public.service_installations),
    public.gateway_webhook_assignment_event(public.service_management_assignments, text, uuid),
    public.gateway_webhook_installation(), public.gateway_webhook_service(), public.gateway_webhook_assignment(),
    public.gateway_webhook_instance_service_deleted(),
    public.gateway_webhook_claim(integer, integer, text[], integer[], double precision),
    public.gateway_webhook_record(uuid, uuid, text, integer, text, double precision),
    public.gateway_webhook_redeliver(uuid, uuid) FROM PUBLIC;
