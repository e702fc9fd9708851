#!/usr/bin/env bash
# Test-only dependency of the RocketMQ tests (tests/queue_conformance.rs,
# tests/rocketmq.rs, ...): Apache RocketMQ's Java name server, broker and
# mqadmin (rocketmq-namesrv, rocketmq-broker, rocketmq-tools with their
# dependencies, from Maven Central) for every version the harness
# (tests/common/broker.rs, EXPORT_HOST_BROKER=apache-4.9.4 | apache-5)
# runs, into $HOME/.cache/export-host/rocketmq-apache/<version>/lib/*.jar.
# Needs java (17) and mvn. Idempotent: a version whose lib/ is complete is
# left alone.
#   bash scripts/test-deps.d/rocketmq-apache.sh            # every version
#   bash scripts/test-deps.d/rocketmq-apache.sh 4.9.4      # only these
set -euo pipefail

# The 5.x version must match APACHE_5 in tests/common/broker.rs.
versions=("$@")
[ ${#versions[@]} -gt 0 ] || versions=(4.9.4 5.5.0)
root="${HOME}/.cache/export-host/rocketmq-apache"

for tool in java mvn; do
  command -v "$tool" >/dev/null || { echo "rocketmq-apache test deps: $tool is missing" >&2; exit 1; }
done

for v in "${versions[@]}"; do
  dest="${root}/${v}"
  if [ -f "${dest}/.complete" ] && ls "${dest}"/lib/rocketmq-broker-*.jar >/dev/null 2>&1; then
    echo "==> rocketmq-apache ${v}: present (${dest}/lib)"
    continue
  fi
  echo "==> rocketmq-apache ${v}: fetching namesrv, broker, tools and their dependencies from Maven Central"
  started=$(date +%s)
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  # A throwaway project whose only purpose is to name the three artifacts.
  cat >"${work}/pom.xml" <<EOF
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>export-host.test</groupId>
  <artifactId>rocketmq-apache-${v}</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.rocketmq</groupId><artifactId>rocketmq-namesrv</artifactId><version>${v}</version></dependency>
    <dependency><groupId>org.apache.rocketmq</groupId><artifactId>rocketmq-broker</artifactId><version>${v}</version></dependency>
    <dependency><groupId>org.apache.rocketmq</groupId><artifactId>rocketmq-tools</artifactId><version>${v}</version></dependency>
  </dependencies>
</project>
EOF
  rm -rf "${dest}.tmp"
  mkdir -p "${dest}.tmp/lib"
  # Parallel artifact downloads keep a cold fetch short.
  if ! mvn -B -q -f "${work}/pom.xml" -Dmaven.artifact.threads=8 \
    org.apache.maven.plugins:maven-dependency-plugin:3.6.1:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="${dest}.tmp/lib" >"${work}/mvn.log" 2>&1; then
    cat "${work}/mvn.log" >&2
    echo "rocketmq-apache ${v}: mvn failed (log above)" >&2
    exit 1
  fi
  rm -rf "${dest}"
  mv "${dest}.tmp" "${dest}"
  touch "${dest}/.complete"
  rm -rf "$work"
  trap - EXIT
  echo "==> rocketmq-apache ${v}: $(ls "${dest}/lib" | wc -l) jars in ${dest}/lib ($(( $(date +%s) - started )) s)"
done
