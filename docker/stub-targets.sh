#!/bin/sh
# Creates an empty stand-in for every build target the given Cargo manifests declare,
# so the Dockerfile can build the dependency layer from manifests alone.
#
# Cargo refuses to read a manifest whose declared targets are missing, so the stubs
# must cover exactly what the manifests declare. They are derived from the manifests
# here (never listed by hand) so the image cannot drift from Cargo.toml again:
# `[[bin]]`, `[[bench]]`, `[[example]]` and `[[test]]` tables (their `path`, or
# cargo's default path for their `name`), plus `src/lib.rs` for every package, which
# also gives a package without declared targets one to build.
#
# Usage: stub-targets.sh Cargo.toml actors/Cargo.toml ...
# Prints each stub it created; existing files are left alone.
set -eu
for manifest in "$@"; do
  dir=$(dirname "$manifest")
  awk -v dir="$dir" '
    function flush() {
      if (kind == "") return
      p = path
      if (p == "" && name != "") {
        if (kind == "bin") p = "src/bin/" name ".rs"
        else if (kind == "bench") p = "benches/" name ".rs"
        else if (kind == "example") p = "examples/" name ".rs"
        else if (kind == "test") p = "tests/" name ".rs"
      }
      if (p != "") print dir "/" p
      kind = ""; name = ""; path = ""
    }
    /^[ \t]*\[/ {
      flush()
      if ($0 ~ /^[ \t]*\[\[(bin|bench|example|test)\]\][ \t]*(#.*)?$/) {
        kind = $0; gsub(/[][ \t]|#.*/, "", kind)
      } else if ($0 ~ /^[ \t]*\[lib\][ \t]*(#.*)?$/) {
        kind = "lib"
      }
      next
    }
    kind != "" && /^[ \t]*(name|path)[ \t]*=/ {
      key = $0; sub(/^[ \t]*/, "", key); sub(/[ \t]*=.*/, "", key)
      val = $0; sub(/^[^=]*=[ \t]*"/, "", val); sub(/".*/, "", val)
      if (key == "name") name = val; else path = val
    }
    END { flush(); print dir "/src/lib.rs" }
  ' "$manifest"
done | while IFS= read -r f; do
  f=${f#./}
  [ -e "$f" ] && continue
  mkdir -p "$(dirname "$f")"
  case "$f" in
    */lib.rs|lib.rs) : > "$f" ;;
    *) echo 'fn main() {}' > "$f" ;;
  esac
  echo "$f"
done
