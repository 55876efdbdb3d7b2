#!/usr/bin/env bash
# Builds (once) the DataStax Java driver conformance program into
# ${FERRY_CACHE:-~/.cache/ferry}/conformance/java/<hash of pom.xml, the sources
# and the JDK version>/ and prints the path of its launcher on the last line of
# stdout. The jars come from Maven Central through `mvn` (into ~/.m2, offline
# first: a second machine with a warm ~/.m2 needs no network), are copied into
# lib/ beside the compiled classes, and the launcher runs
# `java -cp classes:lib/*`. A second run with the same inputs reuses the build.
# Runs are serialised by a lock.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${FERRY_CACHE:-$HOME/.cache/ferry}/conformance/java"
java="${FERRY_CONFORMANCE_JAVA:-java}"
javac="${FERRY_CONFORMANCE_JAVAC:-javac}"
mvn="${FERRY_CONFORMANCE_MVN:-mvn}"

sources=$(cd "$here" && find src -name '*.java' | LC_ALL=C sort)
hash="$( (cd "$here" && cat pom.xml $sources; "$javac" -version 2>&1) | sha256sum | cut -c1-16)"
out="$cache/build-$hash"
mkdir -p "$cache"

exec 9>"$cache/.lock"
flock 9

if [[ ! -x "$out/conformance" ]]; then
    echo "conformance/java: building $out" >&2
    rm -rf "$out"
    mkdir -p "$out"
    copy=(-B -q -f "$here/pom.xml" dependency:copy-dependencies
          -DincludeScope=runtime -DoutputDirectory="$out/lib")
    if ! "$mvn" -o "${copy[@]}" >/dev/null 2>&1; then
        "$mvn" "${copy[@]}" >&2
    fi
    # The driver's compressors must be there, or it would refuse lz4/snappy.
    ls "$out/lib"/java-driver-core-*.jar "$out/lib"/lz4-java-*.jar "$out/lib"/snappy-java-*.jar >&2
    (cd "$here" && "$javac" --release 17 -encoding UTF-8 -cp "$out/lib/*" -d "$out/classes" $sources) >&2
    cat >"$out/conformance.tmp" <<LAUNCHER
#!/usr/bin/env bash
# Made by e2e/conformance/java/setup.sh.
exec "$java" -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Xss512k -Xmx256m \\
    -Dorg.slf4j.simpleLogger.defaultLogLevel=warn \\
    -cp "$out/classes:$out/lib/*" ferry.conformance.Conformance "\$@"
LAUNCHER
    chmod +x "$out/conformance.tmp"
    mv "$out/conformance.tmp" "$out/conformance"
else
    echo "conformance/java: reusing $out" >&2
fi
echo "$out/conformance"
