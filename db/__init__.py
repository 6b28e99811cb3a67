"""PostgreSQL: the pool, the migration runner and repository functions with their SQL."""
