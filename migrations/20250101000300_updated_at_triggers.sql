-- Migration: 20250101000300_updated_at_triggers.sql
--
-- The seed gives `updated_at` a default but nothing keeps it current on UPDATE. One trigger
-- function, attached to every seed table that has the column, so no writer can forget it.

CREATE OR REPLACE FUNCTION public.set_updated_at() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := NOW();
    RETURN NEW;
END;
$$;

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['service_registry', 'service_installations', 'service_ui_components',
                             'service_api_routes', 'infrastructure_instances', 'instance_services']
    LOOP
        EXECUTE format('DROP TRIGGER IF EXISTS trg_%1$s_updated_at ON public.%1$I', t);
        EXECUTE format('CREATE TRIGGER trg_%1$s_updated_at BEFORE UPDATE ON public.%1$I
                        FOR EACH ROW EXECUTE FUNCTION public.set_updated_at()', t);
    END LOOP;
END;
$$;
