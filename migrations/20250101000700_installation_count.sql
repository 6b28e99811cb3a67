-- Migration: 20250101000700_installation_count.sql
--
-- installation_count must equal the number of non-deleted installations, also under concurrent
-- installs and uninstalls. A trigger adjusts it by the change in "live" rows inside the writing
-- transaction; the UPDATE takes the service row's lock, so concurrent adjustments serialize
-- instead of overwriting each other (a read-count-write in the application would race).

CREATE OR REPLACE FUNCTION public.adjust_installation_count() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') AND OLD.deleted_at IS NULL THEN
        UPDATE public.service_registry SET installation_count = installation_count - 1
        WHERE id = OLD.service_id;
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') AND NEW.deleted_at IS NULL THEN
        UPDATE public.service_registry SET installation_count = installation_count + 1
        WHERE id = NEW.service_id;
    END IF;
    RETURN NULL;
END;
$$;

DROP TRIGGER IF EXISTS trg_service_installations_count ON public.service_installations;
CREATE TRIGGER trg_service_installations_count
    AFTER INSERT OR DELETE OR UPDATE OF deleted_at, service_id ON public.service_installations
    FOR EACH ROW EXECUTE FUNCTION public.adjust_installation_count();
