"""Development-only helpers: `gateway demo` and the throwaway PostgreSQL and Redis it and the tests start."""
