#!/usr/bin/env bash
# Installs (once) the npm packages of the Node.js conformance program into
# ${FERRY_CACHE:-~/.cache/ferry}/conformance/node/<hash of package.json,
# package-lock.json and the Node version>/node_modules (`npm ci` from the npm
# registry) and prints, on the last line of stdout, the path of a launcher
# that runs node with NODE_PATH pointing there: `launcher conformance.js ARGS`.
# A second run with the same inputs reuses it. Runs are serialised by a lock.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${FERRY_CACHE:-$HOME/.cache/ferry}/conformance/node"
node="${FERRY_CONFORMANCE_NODE:-node}"
npm="${FERRY_CONFORMANCE_NPM:-npm}"

command -v "$node" >/dev/null && command -v "$npm" >/dev/null ||
    { echo "conformance/node: Node.js (>= 20) and npm are needed" >&2; exit 1; }
hash="$( (cat "$here/package.json" "$here/package-lock.json"; "$node" --version) | sha256sum | cut -c1-16)"
out="$cache/install-$hash"
mkdir -p "$cache"

exec 9>"$cache/.lock"
flock 9

if [[ ! -x "$out/node" ]]; then
    echo "conformance/node: installing into $out" >&2
    rm -rf "$out"
    mkdir -p "$out"
    cp "$here/package.json" "$here/package-lock.json" "$out/"
    (cd "$out" && "$npm" ci --omit=dev --no-audit --no-fund --loglevel=error) >&2
    NODE_PATH="$out/node_modules" "$node" -e \
        'console.error("cassandra-driver", require("cassandra-driver/package.json").version)'
    cat >"$out/node.tmp" <<LAUNCHER
#!/usr/bin/env bash
# Made by e2e/conformance/node/setup.sh.
NODE_PATH="$out/node_modules" exec "$(command -v "$node")" "\$@"
LAUNCHER
    chmod +x "$out/node.tmp"
    mv "$out/node.tmp" "$out/node"
else
    echo "conformance/node: reusing $out" >&2
fi
echo "$out/node"
