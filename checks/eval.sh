#!/usr/bin/env bash
# Evaluates the flake's outputs against the real nixpkgs lib, microvm.nix and Colmena, with
# NixOS and nixpkgs' packages stood in (checks/eval/): see checks/eval/default.nix.
set -euo pipefail
usage() {
  cat >&2 <<'USAGE'
usage: checks/eval.sh (--lib DIR | --nixpkgs DIR) --microvm DIR --colmena DIR --flake-utils DIR
                     [--nix-darwin DIR] [OUTPUT...]
  --lib          a nixpkgs lib tree (nix-community/nixpkgs.lib): DIR/lib/default.nix; NixOS and
                 the packages are stood in (checks/eval/)
  --nixpkgs      nixpkgs itself, instead of --lib: no stand-ins (needs Nix >= 2.18)
  --microvm      microvm.nix (microvm-nix/microvm.nix) at flake.lock's revision
  --colmena      Colmena (zhaofengli/colmena) at flake.lock's revision
  --flake-utils  numtide/flake-utils (Colmena's flake calls it)
  --nix-darwin   nix-darwin (optional: darwinConfigurations.dev-mac)
Nothing is fetched: give checked-out trees. OUTPUT: evaluate only these (default: all).
USAGE
  exit 2
}
lib="" nixpkgs="" microvm="" colmena="" flake_utils="" nix_darwin=""
outputs=()
while (($#)); do
  case "$1" in
    --lib) lib=$2; shift 2 ;;
    --nixpkgs) nixpkgs=$2; lib=$2; shift 2 ;;
    --microvm) microvm=$2; shift 2 ;;
    --colmena) colmena=$2; shift 2 ;;
    --flake-utils) flake_utils=$2; shift 2 ;;
    --nix-darwin) nix_darwin=$2; shift 2 ;;
    -h|--help) usage ;;
    -*) echo "unknown option $1" >&2; usage ;;
    *) outputs+=("$1"); shift ;;
  esac
done
[[ -n $lib && -n $microvm && -n $colmena && -n $flake_utils ]] || usage
abs() { (cd "$1" && pwd); }
lib=$(abs "$lib") microvm=$(abs "$microvm") colmena=$(abs "$colmena") flake_utils=$(abs "$flake_utils")
[[ -z $nix_darwin ]] || nix_darwin=$(abs "$nix_darwin")
[[ -f $lib/lib/default.nix ]] || { echo "$lib/lib/default.nix: not a nixpkgs lib tree" >&2; exit 2; }
here=$(cd "$(dirname "$0")" && pwd)

# The stand-in nixpkgs tree: `import nixpkgs { system; }` and nixos/lib/eval-config.nix.
standin=$(mktemp -d /tmp/nx-eval.XXXXXX)
trap 'rm -rf "$standin"' EXIT
mkdir -p "$standin/nixos/lib"
entry="import $here/eval/standin.nix { libPath = $lib/lib; standinPath = $standin; }"
echo "{ system ? null, localSystem ? { system = builtins.currentSystem; }, ... }: ($entry).pkgs (if system != null then system else localSystem.system)" >"$standin/default.nix"
echo "args: ($entry).nixos.evalConfig args" >"$standin/nixos/lib/eval-config.nix"

args=(--arg libPath "$lib/lib" --arg microvmSrc "$microvm" --arg colmenaSrc "$colmena"
  --arg flakeUtilsSrc "$flake_utils" --arg standinPath "$standin")
[[ -z $nix_darwin ]] || args+=(--arg nixDarwinSrc "$nix_darwin")
[[ -z $nixpkgs ]] || args+=(--arg nixpkgsSrc "$(abs "$nixpkgs")")
nixeval() {
  nix-instantiate --option substituters '' --option build-users-group '' --eval --strict --json \
    "${args[@]}" "$@"
}
if ((${#outputs[@]} == 0)); then
  names=$(nixeval -E "{ ... }@a: builtins.attrNames (import $here/eval a)")
  mapfile -t outputs < <(python3 -c 'import json,sys; print("\n".join(json.loads(sys.argv[1])))' "$names")
fi
# Which trees are flake.lock's own: their NAR hash against the lock's narHash.
for input in microvm:"$microvm" colmena:"$colmena" flake-utils:"$flake_utils" nix-darwin:"$nix_darwin"; do
  name=${input%%:*} dir=${input#*:}
  [[ -n $dir ]] || continue
  have=$(nix --extra-experimental-features nix-command hash path "$dir" 2>/dev/null)
  locked=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["nodes"][sys.argv[2]]["locked"]["narHash"])' "$here/../flake.lock" "$name")
  if [[ $have == "$locked" ]]; then
    echo "input $name: $dir is the locked tree ($locked)"
  else
    echo "input $name: $dir is NOT the locked tree (NAR hash $have, flake.lock $locked)"
  fi
done
failed=0
err=$standin/stderr
for o in "${outputs[@]}"; do
  if out=$(nixeval "$here/eval" -A "\"$o\"" 2>"$err"); then
    echo "ok    $o"
    python3 -c 'import json,sys; print(json.dumps(json.loads(sys.argv[1]), sort_keys=True)[:3000])' "$out" | sed 's/^/      /'
  else
    echo "FAIL  $o"
    failed=1
  fi
  # Evaluation warnings (trace: ...) and errors, as Nix printed them.
  grep -v "^warning: the group 'nixbld'" "$err" | sed 's/^/      /' | tail -30 || true
done
exit $failed
