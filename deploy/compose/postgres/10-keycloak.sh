#!/bin/sh
# Runs once, when the PostgreSQL volume is initialised: Keycloak's own role and database next to
# mlflow's (POSTGRES_DB). The password goes through a psql variable, so it is quoted correctly.
set -eu
psql -v ON_ERROR_STOP=1 -v kc_password="$KEYCLOAK_DB_PASSWORD" \
     --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" <<'SQL'
CREATE ROLE keycloak LOGIN PASSWORD :'kc_password';
CREATE DATABASE keycloak OWNER keycloak;
SQL
