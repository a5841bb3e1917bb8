"""DDP with 2 CPU processes (gloo) under PyTorch's own launcher, against 1 process.

Run as a script by ``torch.distributed.run`` this file is the worker of the gradient test: each
rank takes its share of one global batch, backpropagates through DDP and saves its gradients.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BATCH_PER_PROCESS = 2
SEED = 5


def launch(arguments: list[str], timeout: int = 240) -> subprocess.CompletedProcess:
    """``python -m torch.distributed.run --standalone --nproc_per_node=2 ...`` on the CPU."""
    env = dict(os.environ, PYTHONPATH=str(REPO / "CycleINRSR"), OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"] + arguments
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def make_sampler(batch_size: int):
    from cycleinr.pairs import PairSampler
    from cycleinr.train import load_training_volumes

    head = REPO / "Testing" / "Data" / "invesalius_head_ct_crop.nii.gz"
    return PairSampler(load_training_volumes([str(head)], "ct", 1.6), lr_slices=3, patch=16,
                       batch_size=batch_size, seed=SEED)


def make_network():
    import torch

    from cycleinr.config import preset
    from cycleinr.model import build_model

    torch.manual_seed(SEED)
    return build_model(preset("tiny"))


def gradients(network) -> dict:
    return {name: param.grad.detach().clone() for name, param in network.named_parameters()}


def test_two_processes_average_to_the_one_process_gradient(tmp_path):
    import torch
    from safetensors.torch import load_file

    from cycleinr.train import backward_on_batch

    launch([str(Path(__file__).resolve()), str(tmp_path)])
    torch.set_num_threads(1)
    network = make_network()
    batch = make_sampler(2 * BATCH_PER_PROCESS).sample()  # the union of the two processes' batches
    backward_on_batch(network, batch, 1.0, torch.device("cpu"))
    expected = gradients(network)
    for rank in (0, 1):
        got = load_file(str(tmp_path / f"gradients_rank{rank}.safetensors"))
        assert got.keys() == expected.keys()
        for name in expected:
            torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-7, msg=name)
    # the two processes really had different patches
    half = make_sampler(BATCH_PER_PROCESS)
    first, second = half.sample(0, 2), make_sampler(BATCH_PER_PROCESS).sample(1, 2)
    assert not (first.hr == second.hr).all()


@pytest.mark.slow
def test_torchrun_cycleinr_train_with_two_processes_matches_one(tmp_path):
    import torch
    from safetensors.torch import load_file

    from cycleinr.train import TrainOptions, train

    head = str(REPO / "Testing" / "Data" / "invesalius_head_ct_crop.nii.gz")
    common = ["--preset", "tiny", "--steps", "3", "--steps-per-epoch", "3", "--patch", "16",
              "--lr-slices", "3", "--lr", "1e-3", "--seed", str(SEED), "--device", "cpu"]
    result = launch(["-m", "cycleinr", "train", head, "--output", str(tmp_path / "ddp"),
                     "--batch-size", str(BATCH_PER_PROCESS)] + common)
    assert "world size 2" in result.stderr
    final = tmp_path / "ddp" / "cycleinr.safetensors"
    assert final.exists()
    torch.set_num_threads(1)
    single = train(TrainOptions(data=[head], output=str(tmp_path / "one"), preset="tiny", steps=3,
                                steps_per_epoch=3, patch=16, lr_slices=3, lr=1e-3, seed=SEED,
                                batch_size=2 * BATCH_PER_PROCESS), log=lambda message: None, device="cpu")
    two, one = load_file(str(final)), load_file(str(single))
    for name in one:  # same patches, same averaged gradients: the same weights up to summation order
        torch.testing.assert_close(two[name], one[name], rtol=1e-4, atol=1e-5, msg=name)


def _worker(out_dir: str) -> None:
    """One rank of the gradient test: its share of the global batch through DDP, gradients saved."""
    sys.path.insert(0, str(REPO / "CycleINRSR"))
    import torch
    import torch.distributed as dist
    from safetensors.torch import save_file

    from cycleinr.train import backward_on_batch

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    network = make_network()
    model = torch.nn.parallel.DistributedDataParallel(network)
    batch = make_sampler(BATCH_PER_PROCESS).sample(rank, world)
    backward_on_batch(model, batch, 1.0, torch.device("cpu"))
    save_file(gradients(network), str(Path(out_dir) / f"gradients_rank{rank}.safetensors"))
    dist.destroy_process_group()


if __name__ == "__main__":
    _worker(sys.argv[1])
