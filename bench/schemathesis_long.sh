#!/usr/bin/env bash
# The long schemathesis run over the API's OpenAPI (not part of `make test`): the checks and
# stream settings of the short run (tests/sdk/schemathesis.toml), with more examples per
# operation and the stateful phase. Start the stack with a failure budget that does not turn
# the run into 429s:
#   RUNSTORE_API_BAD_REQUESTS_BURST=1000000 make up
#   bench/schemathesis_long.sh http://127.0.0.1:8080 <api-key> [examples] [seed]
set -euo pipefail
url=${1:-http://127.0.0.1:8080}; key=${2:-dev}; n=${3:-200}; seed=${4:-18}
exec .venv/bin/schemathesis --config-file tests/sdk/schemathesis.toml run "$url/openapi.json" \
  -H "Authorization: Bearer $key" -n "$n" --seed "$seed" \
  --phases examples,coverage,fuzzing,stateful --continue-on-failure
