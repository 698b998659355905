"""DistributedDataParallel training: `torchrun -m xnect_app.cli.train stage1` with 2 CPU processes (gloo).

The test launches this file under torchrun as a thin wrapper around `xnect_app.cli.train.main`: each rank
runs the real CLI and trainer, and the wrapper (see `_rank_main`) only records what each rank did -- its
step and weights at the start and end of `Trainer.run`, and every path it passed to `torch.save` -- into
$XNECT_DDP_TEST_DUMP/rank<R>.pt. The trainer itself has no test hooks.

Checked: (a) both ranks end with the same parameters (the ranks draw different samples, so this holds only
if the gradients are all-reduced); (b) rank 0 writes the one checkpoint, last.pt, and rank 1 writes none;
(c) the same command with a higher --max-steps resumes from that checkpoint's step and weights. And the
same (a) for `--dynconv --dynconv-freeze`, whose mask-unit loss does not go through the network's forward.
"""
from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
DUMP_ENV = "XNECT_DDP_TEST_DUMP"
# For checking this test itself: with it set, the wrapper runs the training loop on the bare network (or
# mask unit) instead of its DDP wrapper, which has already given every rank rank 0's initial weights: no
# gradient all-reduce. `XNECT_DDP_TEST_NO_SYNC=1 pytest tests/test_train_ddp.py` must fail at (a).
NO_SYNC_ENV = "XNECT_DDP_TEST_NO_SYNC"


def _param_digest(params: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for k in sorted(params):
        h.update(k.encode())
        h.update(params[k].detach().float().contiguous().numpy().tobytes())
    return h.hexdigest()


def _rank_main(argv: list[str]) -> None:
    """One torchrun rank: `xnect-train ARGV`, recording this rank's start/end state and its torch.save calls."""
    import xnect_app.cli.train as cli
    from xnect_app.train.trainer import Trainer

    dump, rank = Path(os.environ[DUMP_ENV]), int(os.environ["RANK"])
    saved: list[str] = []
    real_save, real_run = torch.save, Trainer.run

    def recording_save(obj, f, *args, **kwargs):
        saved.append(str(f))
        return real_save(obj, f, *args, **kwargs)

    def run(self: Trainer) -> None:
        start_step = self.step
        start_digest = _param_digest(dict(self.net.named_parameters()))
        wrapped = [name for name in ("model", "mask_model")  # DDP-wrapped: the network, or the mask unit alone
                   if isinstance(getattr(self, name, None), torch.nn.parallel.DistributedDataParallel)]
        ddp = bool(wrapped)
        if os.environ.get(NO_SYNC_ENV):
            for name in wrapped:
                setattr(self, name, getattr(self, name).module)
        real_run(self)
        real_save({"rank": self.rank, "world": self.world, "ddp": ddp, "start_step": start_step,
                   "start_digest": start_digest, "step": self.step, "saved": list(saved),
                   "params": {k: v.detach().clone() for k, v in self.net.named_parameters()},
                   "state": {k: v.detach().clone() for k, v in self.net.state_dict().items()}},
                  dump / f"rank{rank}.pt")

    torch.save = recording_save
    Trainer.run = run
    cli.main(argv)


if __name__ == "__main__":  # a torchrun rank (launched by _torchrun below)
    _rank_main(sys.argv[1:])
    sys.exit(0)


from shared_data import DATA, needs_data  # noqa: E402

pytestmark = needs_data("lspet")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(out: Path, dump: Path, max_steps: int, *extra: str) -> dict[int, dict]:
    dump.mkdir()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), __file__,
           "stage1", "--out", str(out), "--backbone", "selecsls42b", "--size", "64x64", "--batch-size", "2",
           "--epoch-steps", "2", "--max-steps", str(max_steps), "--lr", "1e-3", "--warmup-steps", "1",
           "--ema", "0", "--data-root", str(DATA), "--dev-set", "", "--teacher-cache", str(REPO / "data_cache"),
           "--workers", "0", "--threads", "1", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", DUMP_ENV: str(dump),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"torchrun failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    ranks = {}
    for rank in (0, 1):
        path = dump / f"rank{rank}.pt"
        assert path.is_file(), f"rank {rank} left no record:\n{r.stderr[-3000:]}"
        ranks[rank] = torch.load(path, map_location="cpu", weights_only=False)
        assert ranks[rank]["world"] == 2 and ranks[rank]["rank"] == rank and ranks[rank]["ddp"]
    return ranks


def _assert_same_params(ranks: dict[int, dict]) -> None:
    p0, p1 = ranks[0]["params"], ranks[1]["params"]
    assert p0.keys() == p1.keys()
    differ = {k: float((p0[k] - p1[k]).abs().max()) for k in p0 if not torch.equal(p0[k], p1[k])}
    assert not differ, f"{len(differ)} of {len(p0)} parameters differ between the ranks, e.g. " \
                       f"{dict(list(differ.items())[:3])}"
    # BatchNorm running statistics are each rank's own after its last batch (DDP broadcasts rank 0's
    # at the start of every forward); rank 0's are the ones checkpointed. The batch counts agree.
    counts = [k for k in ranks[0]["state"] if k.endswith("num_batches_tracked")]
    assert counts and all(torch.equal(ranks[0]["state"][k], ranks[1]["state"][k]) for k in counts)


def _assert_one_checkpoint_from_rank0(out: Path, ranks: dict[int, dict]) -> dict:
    assert ranks[1]["saved"] == [], f"rank 1 wrote {ranks[1]['saved']}"
    assert ranks[0]["saved"] and set(ranks[0]["saved"]) == {str(out / "last.pt.tmp")}  # then renamed
    assert sorted(p.name for p in out.iterdir() if ".pt" in p.name) == ["last.pt"]
    ck = torch.load(out / "last.pt", map_location="cpu", weights_only=False)
    assert all(torch.equal(v, ck["model"][k]) for k, v in ranks[0]["state"].items())  # rank 0's network
    return ck


def test_two_ranks_train_in_step_and_rank0_checkpoints_and_resumes(tmp_path):
    out = tmp_path / "run"
    first = _torchrun(out, tmp_path / "dump1", max_steps=2)
    assert [first[r]["start_step"] for r in (0, 1)] == [0, 0]
    assert first[0]["start_digest"] == first[1]["start_digest"]  # DDP gave rank 1 rank 0's initial weights
    assert [first[r]["step"] for r in (0, 1)] == [2, 2]
    assert first[0]["start_digest"] != _param_digest(first[0]["params"])  # it trained
    _assert_same_params(first)  # (a)
    ck = _assert_one_checkpoint_from_rank0(out, first)  # (b)
    assert ck["step"] == 2
    assert [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()] == [2]

    # (c) the same command with a higher --max-steps: both ranks resume at step 2 with the checkpoint's weights
    second = _torchrun(out, tmp_path / "dump2", max_steps=4)
    ck_params = {k: ck["model"][k] for k in first[0]["params"]}
    for r in (0, 1):
        assert second[r]["start_step"] == 2, f"rank {r} started at step {second[r]['start_step']}, not 2"
        assert second[r]["start_digest"] == _param_digest(ck_params), f"rank {r} did not load last.pt"
        assert second[r]["step"] == 4
    _assert_same_params(second)
    ck = _assert_one_checkpoint_from_rank0(out, second)
    assert ck["step"] == 4 and [h["step"] for h in ck["history"]] == [2, 4]
    assert [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()] == [2, 4]


def test_frozen_mask_unit_training_syncs_the_mask_unit_across_ranks(tmp_path):
    """--dynconv-freeze trains the mask unit on the frozen network's features, outside the DDP-wrapped
    network's forward; the ranks must still all-reduce its gradients (they once trained one unit each)."""
    from xnect_app.nn.stage1 import Stage1Config, Stage1Net
    from xnect_app.train.release import export_weights

    torch.manual_seed(0)
    net = Stage1Net(Stage1Config(backbone="selecsls42b"))
    torch.save({"model": net.state_dict(), "step": 7, "history": [], "stage1_config": net.cfg.to_dict()},
               tmp_path / "dense_run.pt")
    export_weights(str(tmp_path / "dense_run.pt"), None, str(tmp_path / "dense.pt"), half=False)
    ranks = _torchrun(tmp_path / "run", tmp_path / "dump", 9, "--init", str(tmp_path / "dense.pt"),
                      "--dynconv", "--dynconv-freeze")
    assert [ranks[r]["step"] for r in (0, 1)] == [9, 9]  # 2 steps on from the weights' step 7
    _assert_same_params(ranks)
    dense = net.state_dict()
    params = ranks[0]["params"]
    assert all(torch.equal(dense[k], v) for k, v in params.items() if not k.startswith("mask_unit."))  # frozen
    assert float(params["mask_unit.conv.bias"]) != 3.0  # the unit's initial bias: it trained
    _assert_one_checkpoint_from_rank0(tmp_path / "run", ranks)
