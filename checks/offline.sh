#!/usr/bin/env bash
# What can be checked of the Nix suite without a binary cache or GitHub: every .nix file
# parses, deadnix finds nothing, nixpkgs-fmt would change nothing. (The module's config
# rendering is evaluated by the workspace's tests; full NixOS evaluation, builds and the VM
# tests need a machine with Nix and the network: `nix flake check`.)
set -euo pipefail
cd "$(dirname "$0")/.."
mapfile -t files < <(git ls-files '*.nix')
((${#files[@]})) || { echo "no .nix files found" >&2; exit 1; }
for f in "${files[@]}"; do
  nix-instantiate --option substituters '' --option build-users-group '' --parse "$f" >/dev/null
done
deadnix --fail "${files[@]}"
nixpkgs-fmt --check "${files[@]}"
python3 -c 'import json,sys; l=json.load(open("flake.lock")); r=l["nodes"]["root"]["inputs"]; assert set(r)=={"nixpkgs","microvm","colmena","nix-darwin"}, r; [ (n.get("locked") or {}).get("narHash") or sys.exit("unpinned: "+k) for k,n in l["nodes"].items() if k!="root"]'
echo "nix: ${#files[@]} files parse, deadnix and nixpkgs-fmt clean, flake.lock pins every input"
