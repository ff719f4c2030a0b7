#!/usr/bin/env bash
# Trains stages on a machine with a GPU and no network, in one run, then assembles and measures the result.
#
#   bash diffdemo/world/train_gpu.sh OUT STAGES [python -m diffdemo.world.train options...]
#
# Prepare beside the repository, on a machine with a network:
#   python -m diffdemo.world.data fetch && python -m diffdemo.world.data pack --archive build/data.tar
#   pip download --no-deps -d build/wheels diffusers==0.42.1     # and whatever else the GPU machine lacks
# e.g. bash diffdemo/world/train_gpu.sh out/ vae,tiny_vae,unet,assemble --init-from assets --photo-share 0.5 \
#        --art-share 0.2 --max-minutes-per-stage 2.5
#   or, to train the shipped upscaler's U-Net further (its autoencoder kept as it is), then its decoder:
#   bash diffdemo/world/train_gpu.sh out/ upscaler,upscaler_decoder,assemble --init-from assets \
#        --upscaler-vae-steps 0 --upscaler-steps 60000 --upscaler-crop 16 --upscaler-pool 60000 --cooldown 0.3 \
#        --photo-share 0.55 --art-share 0.1 --upscaler-decoder-steps 3000
# OUT receives the trained folders, the stage logs and evaluate_photos' JSON; every stage checkpoints into
# OUT/checkpoints, so a second run with the same OUT continues where the first stopped.
set -euo pipefail
out=$1 stages=$2
shift 2
python -c "import diffusers" 2>/dev/null || pip install -q --no-index --find-links build/wheels diffusers
if [ -f build/data.tar ]; then
  mkdir -p build/data && tar -xf build/data.tar -C build/data
  export DIFFDEMO_DATA=$PWD/build/data
fi
export HF_HUB_OFFLINE=1 GRADIO_ANALYTICS_ENABLED=False PYTHONUNBUFFERED=1
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || echo "no GPU: training on the CPU"
python -m diffdemo.world.train --out "$out" --stages "$stages" "$@" 2>&1 | tee "$out/train.log"
