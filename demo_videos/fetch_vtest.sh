#!/usr/bin/env bash
# Fetch OpenCV's vtest.avi (795 frames, 768x576, 10 fps; pedestrians in a courtyard) from
# Debian's opencv-doc package into this folder. Needs apt-get and dpkg (Debian/Ubuntu); nothing
# is installed: the .deb is downloaded into a temporary folder and unpacked there.
# Usage: demo_videos/fetch_vtest.sh [--all]   (--all also copies messi5.jpg, basketball1/2.png)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
data="usr/share/doc/opencv-doc/examples/data"
want=(vtest.avi)
if [[ "${1:-}" == "--all" ]]; then
    want+=(messi5.jpg basketball1.png basketball2.png)
elif [[ -n "${1:-}" ]]; then
    echo "usage: $0 [--all]" >&2
    exit 2
fi

missing=()
for f in "${want[@]}"; do
    [[ -s "$here/$f" ]] || missing+=("$f")
done
if [[ ${#missing[@]} -eq 0 ]]; then
    echo "already there: ${want[*]} in $here"
    exit 0
fi
for tool in apt-get dpkg; do
    command -v "$tool" >/dev/null || { echo "error: $tool not found (needs a Debian/Ubuntu system)" >&2; exit 1; }
done

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
chmod 755 "$tmp"  # apt's _apt user must be able to write the download here
(cd "$tmp" && apt-get download -q opencv-doc >/dev/null 2>"$tmp/apt.log") || {
    echo "error: 'apt-get download opencv-doc' failed (run 'apt-get update' first?):" >&2
    tail -n 3 "$tmp/apt.log" >&2
    exit 1
}
deb=("$tmp"/opencv-doc_*.deb)
dpkg -x "${deb[0]}" "$tmp/x"
for f in "${missing[@]}"; do
    src="$tmp/x/$data/$f"
    [[ -s "$src" ]] || { echo "error: $f not found in ${deb[0]##*/}" >&2; exit 1; }
    cp "$src" "$here/.$f.part"
    mv -f "$here/.$f.part" "$here/$f"  # atomic: a half-copied file never has the final name
    echo "fetched $here/$f"
done
