#!/usr/bin/env bash
# The NX deploy action (action.yml): install nx (checksum-verified), push, promote on the default
# branch, write the outputs. Reads the action's inputs from NX_ACTION_* and what GitHub gives a
# step (GITHUB_EVENT_NAME, GITHUB_REF, GITHUB_EVENT_PATH, GITHUB_OUTPUT, RUNNER_OS, ...), so it
# runs the same outside GitHub with those set.
set -euo pipefail

fail() {
  echo "::error title=nx deploy::$*"
  exit 1
}
need() { [[ -n "${!1:-}" ]] || fail "$2"; }

need NX_ACTION_HOST "input 'host' is empty: set it to nxd's API URL"
need NX_ACTION_TOKEN "input 'token' is empty: create one with 'nx token create --sandbox NAME --can push,promote' and pass it from a secret"
need NX_ACTION_SANDBOX "input 'sandbox' is empty"
need GITHUB_OUTPUT "GITHUB_OUTPUT is not set: this runs as a GitHub Actions step (or set it to a file)"
echo "::add-mask::$NX_ACTION_TOKEN"
binary="${NX_ACTION_BINARY:-}"
image="${NX_ACTION_IMAGE:-}"
if [[ -n "$binary" && -n "$image" ]] || [[ -z "$binary" && -z "$image" ]]; then
  fail "set exactly one of the inputs 'binary' and 'image'"
fi
work="${RUNNER_TEMP:-$(mktemp -d)}/nx-action"
mkdir -p "$work"

# The release target of this runner, into $target.
release_target() {
  case "${RUNNER_OS:-$(uname -s)}/${RUNNER_ARCH:-$(uname -m)}" in
    Linux/X64 | Linux/x86_64) target=x86_64-unknown-linux-musl ;;
    Linux/ARM64 | Linux/aarch64) target=aarch64-unknown-linux-musl ;;
    macOS/X64 | Darwin/x86_64) target=x86_64-apple-darwin ;;
    macOS/ARM64 | Darwin/arm64) target=aarch64-apple-darwin ;;
    *) fail "no nx release for ${RUNNER_OS:-?}/${RUNNER_ARCH:-?}: pass a built nx with the input 'nx'" ;;
  esac
}

sha256() {
  if command -v sha256sum >/dev/null; then sha256sum "$1"; else shasum -a 256 "$1"; fi | cut -d' ' -f1
}

# Downloads nx for this runner, checks it against the release's SHA256SUMS, sets $nx.
install_nx() {
  local version="${NX_ACTION_VERSION:-}" base name expected actual
  if [[ -z "$version" ]]; then
    if [[ "${NX_ACTION_REF:-}" == v* ]]; then version="$NX_ACTION_REF"; else version=latest; fi
  fi
  base="${NX_ACTION_RELEASES_URL:-https://github.com/${NX_ACTION_REPOSITORY:-nx/nx}/releases/download}"
  if [[ "$version" == latest && -z "${NX_ACTION_RELEASES_URL:-}" ]]; then
    base="https://github.com/${NX_ACTION_REPOSITORY:-nx/nx}/releases/latest/download"
  else
    base="$base/$version"
  fi
  release_target
  name="nx-$target"
  curl --fail --silent --show-error --location --retry 3 -o "$work/$name" "$base/$name" ||
    fail "cannot download $base/$name"
  curl --fail --silent --show-error --location --retry 3 -o "$work/SHA256SUMS" "$base/SHA256SUMS" ||
    fail "cannot download $base/SHA256SUMS"
  expected=$(awk -v n="$name" '$2 == n || $2 == "*" n { print $1 }' "$work/SHA256SUMS")
  [[ -n "$expected" ]] || fail "SHA256SUMS of $version lists no $name"
  actual=$(sha256 "$work/$name")
  [[ "$actual" == "$expected" ]] ||
    fail "$name from $base has sha256 $actual, but SHA256SUMS says $expected: refusing to run it"
  chmod +x "$work/$name"
  nx="$work/$name"
}

if [[ -n "${NX_ACTION_NX:-}" ]]; then
  nx="$NX_ACTION_NX"
  [[ -x "$nx" ]] || fail "input 'nx' ($nx) is not an executable file"
else
  install_nx
fi
echo "nx: $("$nx" --version)"

export NX_HOST="$NX_ACTION_HOST" NX_TOKEN="$NX_ACTION_TOKEN" NX_CONFIG=/dev/null
if [[ -n "${NX_ACTION_CA_CERT:-}" ]]; then
  printf '%s\n' "$NX_ACTION_CA_CERT" >"$work/ca.pem"
  grep -q -- '-----BEGIN CERTIFICATE-----' "$work/ca.pem" ||
    fail "input 'ca-cert' is not a PEM certificate (it has no '-----BEGIN CERTIFICATE-----' line)"
  export NX_CA_CERT="$work/ca.pem"
fi
args=(push --sandbox "$NX_ACTION_SANDBOX")
if [[ -n "$binary" ]]; then args+=("$binary"); else args+=(--image "$image"); fi
while IFS= read -r line; do
  [[ -z "${line// /}" ]] && continue
  args+=(--env "$line")
done <<<"${NX_ACTION_ENV:-}"

pushed="$work/push.json"
if ! "$nx" --json "${args[@]}" >"$pushed"; then
  fail "nx push failed: $(jq -r '.error // .' "$pushed" 2>/dev/null || cat "$pushed")"
fi
id=$(jq -r '.deployment.id' "$pushed")
preview=$(jq -r '.deployment.preview_url' "$pushed")

# A field of the event's payload, or nothing.
event_json() {
  if [[ -f "${GITHUB_EVENT_PATH:-}" ]]; then jq -r "$1 // empty" "$GITHUB_EVENT_PATH"; fi
}
default_branch=$(event_json .repository.default_branch)
case "${NX_ACTION_PROMOTE:-auto}" in
  true) promote=true ;;
  false) promote=false ;;
  auto)
    promote=false
    if [[ "${GITHUB_EVENT_NAME:-}" == push && -n "$default_branch" &&
      "${GITHUB_REF:-}" == "refs/heads/$default_branch" ]]; then
      promote=true
    fi
    ;;
  *) fail "input 'promote' is ${NX_ACTION_PROMOTE}: use auto, true or false" ;;
esac

production=""
if [[ "$promote" == true ]]; then
  promoted="$work/promote.json"
  if ! "$nx" --json promote "$NX_ACTION_SANDBOX" "$id" --keep-db >"$promoted"; then
    fail "nx promote failed: $(jq -r '.error // .' "$promoted" 2>/dev/null || cat "$promoted")"
  fi
  production=$(jq -r '.production_url' "$promoted")
fi

{
  echo "deployment-id=$id"
  echo "preview-url=$preview"
  echo "production-url=$production"
  echo "promoted=$promote"
} >>"$GITHUB_OUTPUT"
echo "deployment-id=$id"
echo "preview-url=$preview"
if [[ "$promote" == true ]]; then echo "promoted: production-url=$production"; fi
if [[ -n "${GITHUB_STEP_SUMMARY:-}" ]]; then
  {
    echo "### NX: $NX_ACTION_SANDBOX"
    echo "- deployment \`$id\`: $preview"
    if [[ "$promote" == true ]]; then echo "- promoted: $production"; fi
  } >>"$GITHUB_STEP_SUMMARY"
fi

pr=$(event_json .pull_request.number)
if [[ "${NX_ACTION_COMMENT:-false}" == true && -n "$pr" ]]; then
  body=$(jq -n --arg b "NX preview of \`$NX_ACTION_SANDBOX\`: $preview (deployment \`$id\`)" '{body: $b}')
  curl --fail --silent --show-error -X POST \
    -H "Authorization: Bearer ${NX_ACTION_GITHUB_TOKEN:-}" -H "Accept: application/vnd.github+json" \
    "${GITHUB_API_URL:-https://api.github.com}/repos/${GITHUB_REPOSITORY}/issues/$pr/comments" \
    -d "$body" >/dev/null || echo "::warning title=nx deploy::could not comment on pull request #$pr"
fi
