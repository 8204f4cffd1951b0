-- The Postgres exporter's role (monitor-role.sh runs this at every `up`):
-- it may log in and read the statistics views (pg_monitor), nothing else, and holds at most 3
-- connections. Its name and password come from the environment (psql 15+).
SET client_min_messages = warning;
\getenv monitor_user MONITOR_USER
\getenv monitor_password MONITOR_PASSWORD
SELECT format('CREATE ROLE %I', :'monitor_user')
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'monitor_user') \gexec
ALTER ROLE :"monitor_user" WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE CONNECTION LIMIT 3
  PASSWORD :'monitor_password';
GRANT pg_monitor TO :"monitor_user";
