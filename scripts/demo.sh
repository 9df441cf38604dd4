#!/usr/bin/env bash
# The main job on the bundled data (5,000 real MNIST digits, no download): train two MLPs,
# fuse them with the Wasserstein barycenter and the two baselines, then draw the landscape.
# Sets up .venv on a fresh machine. Results: outputs/demo/{train,fuse,landscape}/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_venv.sh
export MPLBACKEND=Agg
fusionctl=.venv/bin/fusionctl
common=(dataset=mnist_small model=mlp "model.widths=[400,200,100]" "seeds=[0,1]")
start=$(date +%s)
"$fusionctl" train "${common[@]}" hydra.run.dir=outputs/demo/train
"$fusionctl" fuse "${common[@]}" solver=wb solver.ot=exact "baselines=[avg,ot]" hydra.run.dir=outputs/demo/fuse
"$fusionctl" landscape "${common[@]}" solver=wb solver.ot=exact hydra.run.dir=outputs/demo/landscape
echo
echo "demo finished in $(( $(date +%s) - start )) s: tables and plots under outputs/demo/"
