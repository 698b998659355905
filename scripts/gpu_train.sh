#!/usr/bin/env bash
# Continue Stage I training on a lent GPU machine (the device tool), within its limits: 10 minutes
# a command, about 30 minutes held, 64 MiB sent, files of at most 16 MiB back. From the
# repository root here:
#   python scripts/pack_training_data.py --out gpu_pack                  # once, ~1.5 min
#   run: bash scripts/gpu_train.sh start    (carry: ["gpu_pack"])        # trains in the background
#   run: bash scripts/gpu_train.sh wait     (at once when the last call returns: the machine is
#                                           given back after 30 s idle, and the training with it)
#   run: bash scripts/gpu_train.sh finish   # waits for the end, exports the weights into $OUT
# Every call also sends back the latest weights (split in 15 MB parts; `cat` them together), so
# a machine lost between calls loses at most one epoch. Settings come from the environment:
# HOURS (training time, default 0.36), DECAY_HOURS (10x drop, default 0.29), BATCH (32),
# LR (2e-4), WORKERS (14), SIZE (512x320), INIT (models/xnect_selecsls60.pt), DEVICE (cuda),
# NEG (share of person-free items, 0.2: what the bundled file was last trained with),
# WAIT_S (seconds a call waits, default 560).
set -uo pipefail
cmd=${1:?usage: gpu_train.sh start|wait|finish}
run=runs/gpu
out=${OUT:-out}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
mkdir -p "$run" "$out"
py=$(command -v python3)

trainer_alive() { [ -f "$run/pid" ] && kill -0 "$(cat "$run/pid")" 2>/dev/null; }

send_back() {  # the latest checkpoint as a weights file, in parts under 16 MiB, and the logs
    [ -f "$run/last.pt" ] || return 0
    "$py" -m xnect_app.cli.train export --stage1 "$run/last.pt" --stage2 "${INIT:-models/xnect_selecsls60.pt}" \
        --out "$run/gpu_weights.pt" >/dev/null || return 0
    rm -f "$out"/gpu_weights.pt.part-*
    split -b 15000000 "$run/gpu_weights.pt" "$out/gpu_weights.pt.part-"
    cp "$run/train.log" "$out/train.log" 2>/dev/null
    cp "$run/log.jsonl" "$out/log.jsonl" 2>/dev/null
    ls -l "$out"
}

wait_and_report() {
    local deadline=$((SECONDS + ${WAIT_S:-560}))
    while trainer_alive && [ $SECONDS -lt "$deadline" ]; do sleep 20; done
    grep -E "img/s|epoch done|drops" "$run/train.log" | tail -n 4
    trainer_alive && echo "trainer still running" || echo "trainer finished"
    send_back
}

case $cmd in
start)
    nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null
    "$py" -c "import torch, cv2; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
    [ -d gpu_pack/lspet ] || { echo "gpu_pack/ missing: pack it and name it in carry" >&2; exit 2; }
    setsid nohup "$py" -m xnect_app.cli.train stage1 --out "$run" --init "${INIT:-models/xnect_selecsls60.pt}" \
        --data-root gpu_pack --dev-set '' --device "${DEVICE:-cuda}" --amp --size "${SIZE:-512x320}" \
        --batch-size "${BATCH:-32}" --lr "${LR:-2e-4}" --workers "${WORKERS:-14}" --epoch-steps 2000 \
        --negative-prob "${NEG:-0.2}" \
        --max-hours "${HOURS:-0.36}" --lr-decay-after-hours "${DECAY_HOURS:-0.29}" \
        > "$run/train.log" 2>&1 < /dev/null &
    echo $! > "$run/pid"
    sleep 60
    tail -n 5 "$run/train.log"
    wait_and_report
    ;;
wait)
    wait_and_report
    ;;
finish)
    WAIT_S=${WAIT_S:-580} wait_and_report
    ;;
*)
    echo "usage: gpu_train.sh start|wait|finish" >&2
    exit 2
    ;;
esac
