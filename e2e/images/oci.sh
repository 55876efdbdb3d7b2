# shellcheck shell=bash
# Writing OCI image archives without Docker: plain tar, gzip, sha256sum and jq.
# Sourced by build.sh, never run.
#
# An archive is an OCI image layout (oci-layout, index.json, blobs/sha256/*)
# in a tar file, which `ctr images import` reads. Layers are reproducible:
# sorted entries, mtime 0, numeric owners, `gzip -n`. The image name is in the
# index's `io.containerd.image.name` annotation, so the import needs no flag.

# oci_layer ROOTFS BLOBS: tars ROOTFS (owners as they are on disk) into a
# gzip layer blob under BLOBS and prints "DIGEST DIFF_ID SIZE".
oci_layer() {
  local rootfs=$1 blobs=$2 tmp diff_id digest
  tmp=$(mktemp "$blobs/.layer.XXXXXX")
  tar -C "$rootfs" --sort=name --mtime=@0 --numeric-owner \
    --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime -cf "$tmp" .
  diff_id=$(sha256sum "$tmp" | cut -d' ' -f1)
  gzip -n -f "$tmp"
  mv "$tmp.gz" "$tmp"
  digest=$(sha256sum "$tmp" | cut -d' ' -f1)
  mv "$tmp" "$blobs/$digest"
  echo "sha256:$digest sha256:$diff_id $(stat -c %s "$blobs/$digest")"
}

# oci_blob BLOBS FILE: moves FILE into BLOBS under its digest; prints "DIGEST SIZE".
oci_blob() {
  local blobs=$1 file=$2 digest size
  digest=$(sha256sum "$file" | cut -d' ' -f1)
  size=$(stat -c %s "$file")
  mv "$file" "$blobs/$digest"
  echo "sha256:$digest $size"
}

# oci_image OUT REF CONFIG_JSON ROOTFS...: writes the archive OUT for image
# REF (e.g. ferry.dev/pause:dev), one layer per ROOTFS folder, in that order.
# CONFIG_JSON is the OCI image config's "config" object (Entrypoint, Env, User...).
oci_image() {
  local out=$1 ref=$2 config=$3; shift 3
  local layout layers='[]' diff_ids='[]' history='[]' d digest diff_id size line cfg man
  layout=$(mktemp -d "$(dirname "$out")/.layout.XXXXXX")
  mkdir -p "$layout/blobs/sha256"
  for d in "$@"; do
    line=$(oci_layer "$d" "$layout/blobs/sha256")
    read -r digest diff_id size <<<"$line"
    layers=$(jq -c --arg d "$digest" --argjson s "$size" \
      '. + [{mediaType: "application/vnd.oci.image.layer.v1.tar+gzip", digest: $d, size: $s}]' <<<"$layers")
    diff_ids=$(jq -c --arg d "$diff_id" '. + [$d]' <<<"$diff_ids")
    # The layer's name without the staging folder's random suffix, so that
    # the config, hence the image digest, is the same on every build.
    history=$(jq -c --arg c "ferry e2e/images/build.sh: $(basename "${d%.*}")" \
      '. + [{created: "1970-01-01T00:00:00Z", created_by: $c}]' <<<"$history")
  done
  cfg=$layout/config.json
  jq -n --argjson config "$config" --argjson diff_ids "$diff_ids" --argjson history "$history" \
    '{created: "1970-01-01T00:00:00Z", architecture: "amd64", os: "linux", config: $config,
      rootfs: {type: "layers", diff_ids: $diff_ids}, history: $history}' >"$cfg"
  read -r digest size <<<"$(oci_blob "$layout/blobs/sha256" "$cfg")"
  man=$layout/manifest.json
  jq -n --arg cd "$digest" --argjson cs "$size" --argjson layers "$layers" \
    '{schemaVersion: 2, mediaType: "application/vnd.oci.image.manifest.v1+json",
      config: {mediaType: "application/vnd.oci.image.config.v1+json", digest: $cd, size: $cs},
      layers: $layers}' >"$man"
  read -r digest size <<<"$(oci_blob "$layout/blobs/sha256" "$man")"
  jq -n --arg md "$digest" --argjson ms "$size" --arg ref "$ref" --arg tag "${ref##*:}" \
    '{schemaVersion: 2, mediaType: "application/vnd.oci.image.index.v1+json",
      manifests: [{mediaType: "application/vnd.oci.image.manifest.v1+json", digest: $md, size: $ms,
        platform: {architecture: "amd64", os: "linux"},
        annotations: {"io.containerd.image.name": $ref, "org.opencontainers.image.ref.name": $tag}}]}' \
    >"$layout/index.json"
  echo '{"imageLayoutVersion":"1.0.0"}' >"$layout/oci-layout"
  tar -C "$layout" --sort=name --mtime=@0 --numeric-owner -cf "$out.tmp" oci-layout index.json blobs
  mv "$out.tmp" "$out"
  echo "$digest" >"$out.digest"
  rm -rf "$layout"
}
