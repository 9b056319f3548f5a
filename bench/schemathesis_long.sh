#!/usr/bin/env bash
# The long schemathesis run over the API's OpenAPI (not part of `make test`): every
# operation, every phase, checks for 5xx and for answers the document does not declare.
# Usage: make up ...; bench/schemathesis_long.sh http://127.0.0.1:8080 <api-key> [examples]
set -euo pipefail
url=${1:-http://127.0.0.1:8080}; key=${2:-dev}; n=${3:-200}
exec .venv/bin/schemathesis run "$url/openapi.json" -H "Authorization: Bearer $key" \
  -c not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,response_headers_conformance \
  -n "$n" --seed 1 --phases examples,coverage,fuzzing --request-timeout 30 --continue-on-failure
