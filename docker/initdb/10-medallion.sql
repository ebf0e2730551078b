-- Runs once when the compose Postgres volume is created.
CREATE EXTENSION pg_medallion;
CREATE ROLE medallion LOGIN REPLICATION PASSWORD 'medallion';
GRANT medallion_admin TO medallion;
