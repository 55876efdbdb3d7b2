#!/usr/bin/env bash
# Makes (once) the virtualenv the Python conformance program runs in, under
# ${FERRY_CACHE:-~/.cache/ferry}/conformance/python/<hash of requirements.txt>,
# and prints the path of its python on the last line of stdout. A second run
# with the same requirements reuses it; a changed requirements.txt makes a new
# one. Packages come from PyPI through pip. Runs are serialised by a lock.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
req="$here/requirements.txt"
cache="${FERRY_CACHE:-$HOME/.cache/ferry}/conformance/python"
python="${FERRY_CONFORMANCE_PYTHON:-python3}"

hash="$( (cat "$req"; "$python" -c 'import sys; print(sys.version_info[:2])') | sha256sum | cut -c1-16)"
venv="$cache/venv-$hash"
mkdir -p "$cache"

exec 9>"$cache/.lock"
flock 9

if [[ ! -f "$venv/.ferry-ready" ]]; then
    echo "conformance/python: creating $venv" >&2
    rm -rf "$venv"
    "$python" -m venv "$venv" >&2
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
        --no-input -r "$req" >&2
    # The driver's compressors must load, or it would silently offer none.
    "$venv/bin/python" -c 'import cassandra, lz4.block, snappy; print("cassandra-driver", cassandra.__version__)' >&2
    touch "$venv/.ferry-ready"
else
    echo "conformance/python: reusing $venv" >&2
fi
echo "$venv/bin/python"
