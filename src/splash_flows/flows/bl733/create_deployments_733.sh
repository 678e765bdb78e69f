#!/usr/bin/env bash
# Legacy entry point kept for the seed's habit: create the 7.3.3 work pools and deployments.
# A thin wrapper over `splash-flows init-work-pools` (needs PREFECT_API_URL or --api-url; see --help).
#
# It finds the Python that has splash_flows by itself, so no virtualenv needs to be on PATH: $PYTHON if set;
# else the interpreter of the environment this script is installed in (…/venv/lib/pythonX.Y/site-packages/
# splash_flows/flows/bl733/ -> …/venv/bin/python) or of a source checkout (<repo>/.venv/bin/python); else
# python3 on PATH. Each candidate is used only if it can import splash_flows.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)"

has_splash_flows() {
    [ -x "$1" ] && "$1" -c 'import splash_flows' >/dev/null 2>&1
}

candidates=()
if [ -n "${PYTHON:-}" ]; then
    candidates+=("$PYTHON")
fi
dir="$here"
while [ "$dir" != "/" ]; do
    candidates+=("$dir/bin/python" "$dir/.venv/bin/python" "$dir/venv/bin/python")
    dir="$(dirname "$dir")"
done
if command -v python3 >/dev/null 2>&1; then
    candidates+=("$(command -v python3)")
fi

for python in "${candidates[@]}"; do
    if has_splash_flows "$python"; then
        exec "$python" -m splash_flows init-work-pools "$@"
    fi
done
echo "create_deployments_733.sh: no Python with splash_flows installed found (tried \$PYTHON, the environment" \
     "around $here, and python3 on PATH); set PYTHON=/path/to/venv/bin/python" >&2
exit 127
