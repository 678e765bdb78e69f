#!/usr/bin/env bash
# Legacy entry point kept for the seed's habit: create the 7.3.3 work pools and deployments.
# A thin wrapper over `splash-flows init-work-pools` (needs PREFECT_API_URL or --api-url; see --help).
set -euo pipefail
PYTHON="${PYTHON:-python3}"
exec "$PYTHON" -m splash_flows init-work-pools "$@"
