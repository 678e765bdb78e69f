#!/usr/bin/env bash
# The playbook's check run (tests/integration/test_ansible_playbook.py) runs Ansible's apt module against this
# machine in check mode, which needs the system Python's apt bindings (python3-apt). ansible-core itself is a
# test dependency in pyproject.toml. Installs python3-apt with apt-get when absent and we are allowed to.
set -euo pipefail
if /usr/bin/python3 -c "import apt" 2>/dev/null; then
  echo "ansible: /usr/bin/python3 has python3-apt"
  exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "ansible: installing python3-apt for the playbook's check run"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends python3 python3-apt >/dev/null
else
  echo "ansible: python3-apt missing and cannot install it here; the playbook check run will be skipped" >&2
fi
