#!/usr/bin/env bash
# Re-fetches the vendored front-end files from the npm registry at the
# versions in VERSIONS (edit them there to upgrade).
set -euo pipefail
cd "$(dirname "$0")"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fetch() { # package version file-in-package destination
  # npm pack names @scope/name's tarball scope-name-version.tgz.
  local tgz
  tgz="$(echo "${1#@}" | tr / -)-$2.tgz"
  (cd "$tmp" && npm pack --silent "$1@$2" >/dev/null && mkdir -p "$1" && tar xzf "$tgz" -C "$1")
  cp "$tmp/$1/package/$3" "$4"
}
ver() { awk -v p="$1" '$1 == p {print $2}' VERSIONS; }
fetch bulma "$(ver bulma)" css/bulma.min.css bulma/bulma.min.css
cp "$tmp/bulma/package/LICENSE" bulma/LICENSE
fetch htmx.org "$(ver htmx.org)" dist/htmx.min.js htmx/htmx.min.js
cp "$tmp/htmx.org/package/LICENSE" htmx/LICENSE
fetch @alpinejs/csp "$(ver @alpinejs/csp)" dist/cdn.min.js alpinejs/alpine.min.js
echo "vendored: bulma $(ver bulma), htmx.org $(ver htmx.org), @alpinejs/csp $(ver @alpinejs/csp)"
