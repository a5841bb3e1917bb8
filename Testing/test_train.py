"""Training: the cycle path, the ablation flags, exact resume, loss falling, checkpoints usable."""
from __future__ import annotations

import csv
import threading

import numpy as np
import pytest
import torch
from conftest import HEAD_CT

from cycleinr.config import preset
from cycleinr.errors import Cancelled
from cycleinr.model import build_model, use_channels_last
from cycleinr.pairs import PairSampler
from cycleinr.train import TrainOptions, cycle_loss_terms, load_training_volumes, slice_detail, train


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_options(output, **changes) -> TrainOptions:
    settings = dict(data=[str(HEAD_CT)], output=str(output), preset="tiny", steps=4, steps_per_epoch=2,
                    patch=16, lr_slices=3, batch_size=2, lr=1e-3)
    settings.update(changes)
    return TrainOptions(**settings)


def quiet(_message):
    pass


def read_log(run_dir) -> list[dict]:
    with open(run_dir / "log.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def weights(path) -> dict:
    from safetensors.torch import load_file
    return load_file(str(path))


def head_batch(seed=3, batch_size=2, lr_slices=3):
    volumes = load_training_volumes([str(HEAD_CT)], "ct", 1.6)
    batch = PairSampler(volumes, lr_slices=lr_slices, patch=16, batch_size=batch_size, seed=seed).sample()
    return (torch.from_numpy(batch.lr), torch.from_numpy(batch.hr),
            torch.from_numpy(batch.hr_positions).float(), batch.scale)


def test_cycle_term_encodes_the_generated_patch_again():
    """Fails if the cycle term were an interpolation of the generated patch: the encoder must run a
    second time, on the generated HR patch itself, and the cycle loss must send gradient into it."""
    torch.manual_seed(0)
    network = build_model(preset("tiny"))
    encoded = []
    network.encoder.register_forward_hook(lambda module, inputs, output: encoded.append(inputs[0]))
    lr, hr, positions, scale = head_batch()
    total, inr, cycle, detail = cycle_loss_terms(network, lr, hr, positions, scale, 1.0)
    assert detail == 0  # off unless asked for

    assert len(encoded) == 2
    assert torch.equal(encoded[0], lr)
    second = encoded[1]
    assert second.shape == hr.shape and second.requires_grad  # the generated patch, in the graph
    generated = network(lr, positions, 1.0 / scale)
    assert torch.allclose(second, generated, atol=1e-6)
    # the cycle loss reaches the generated patch through the second encoding ...
    grad_generated, = torch.autograd.grad(total - inr, second, retain_graph=True)
    assert grad_generated.abs().sum() > 0
    # ... and through both passes into the encoder's weights
    grad_weights, = torch.autograd.grad(total - inr, network.encoder.head.weight)
    assert grad_weights.abs().sum() > 0
    # it is the network's reconstruction, not a linear read-out of the generated slices
    lr_positions = torch.arange(lr.shape[2], dtype=torch.float32) * scale
    reconstructed = network(second.detach(), lr_positions.clamp(max=hr.shape[2] - 1), scale)
    assert torch.isclose(cycle, torch.nn.functional.l1_loss(reconstructed, lr), atol=1e-6)
    index = lr_positions.clamp(max=hr.shape[2] - 1)
    low = index.floor().long()
    high = (low + 1).clamp(max=hr.shape[2] - 1)
    weight = (index - low).view(1, 1, -1, 1, 1)
    interpolated = second[:, :, low] * (1 - weight) + second[:, :, high] * weight
    assert not torch.isclose(cycle, torch.nn.functional.l1_loss(interpolated, lr), atol=1e-5)


def test_channels_last_training_matches_the_default_layout():
    """Training runs the encoder channels-last (faster 3D convolutions): same loss and gradients
    up to float summation order, and the latent really comes out in that layout."""
    import copy

    lr, hr, positions, scale = head_batch()
    torch.manual_seed(0)
    plain = build_model(preset("tiny"))
    fast = use_channels_last(copy.deepcopy(plain))
    assert fast.encode(lr).is_contiguous(memory_format=torch.channels_last_3d)
    assert plain.encode(lr).is_contiguous()
    losses = []
    for network in (plain, fast):
        total = cycle_loss_terms(network, lr, hr, positions, scale, 0.0, 3.0)[0]
        total.backward()
        losses.append(total.item())
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    for (name, a), b in zip(plain.named_parameters(), fast.parameters()):
        assert torch.allclose(a.grad, b.grad, rtol=1e-3, atol=1e-6), name


def test_target_slices_leave_the_other_slices_out_of_the_loss():
    """Adaptation trains only the new slices: what the target says at the others must not count."""
    torch.manual_seed(0)
    network = build_model(preset("tiny"))
    lr, hr, positions, scale = head_batch()
    chosen = torch.zeros(hr.shape[2], dtype=torch.bool)
    chosen[1::2] = True
    changed = hr.clone()
    changed[:, :, ~chosen] += 0.5
    masked = [cycle_loss_terms(network, lr, target, positions, scale, 0.0, 3.0, chosen)
              for target in (hr, changed)]
    assert masked[0][1] == pytest.approx(masked[1][1].item()) and masked[0][3] == pytest.approx(masked[1][3].item())
    whole = cycle_loss_terms(network, lr, changed, positions, scale, 0.0, 3.0)
    assert whole[1] > masked[1][1] + 0.1  # without the mask the changed slices do count


def test_no_cycle_has_zero_cycle_loss_and_cycle_adds_it(tmp_path):
    train(tiny_options(tmp_path / "plain", cycle_weight=0.0, steps=2), log=quiet)
    train(tiny_options(tmp_path / "cycle", cycle_weight=1.0, steps=2), log=quiet)
    for row in read_log(tmp_path / "plain"):
        assert float(row["cycle"]) == 0.0 and float(row["loss"]) == pytest.approx(float(row["inr"]))
    for row in read_log(tmp_path / "cycle"):
        assert float(row["cycle"]) > 0
        assert float(row["loss"]) == pytest.approx(float(row["inr"]) + float(row["cycle"]), abs=2e-6)


def test_slice_detail_reads_the_finest_diagonal_band_of_each_slice():
    """Haar HH of a +-a checkerboard is 2a everywhere; a constant or a ramp has none."""
    checker = (torch.arange(8).view(-1, 1) + torch.arange(10).view(1, -1)) % 2 * 2.0 - 1.0  # +-1
    volume = torch.stack([checker * 0.5, torch.full((8, 10), 3.0), torch.arange(80.0).view(8, 10)])
    detail = slice_detail(volume[None, None])
    assert detail.shape == (1, 3)
    assert torch.allclose(detail, torch.tensor([[1.0, 0.0, 0.0]]))
    # odd sizes: the last row/column is left out, not wrapped
    assert torch.allclose(slice_detail(volume[None, None, :, :7, :9]), torch.tensor([[1.0, 0.0, 0.0]]))


def test_detail_term_asks_new_slices_for_the_real_slices_detail_and_is_logged(tmp_path):
    """The term is zero for a perfect output, pushes a smoothed output towards more detail (not
    towards the same noise), and with mu > 0 the log's total is inr + cycle + mu * detail."""
    lr, hr, positions, scale = head_batch()
    noisy = hr + 0.01 * torch.randn(hr.shape, generator=torch.Generator().manual_seed(0))
    smooth = torch.nn.functional.avg_pool3d(noisy, (1, 3, 3), stride=1, padding=(0, 1, 1))
    shuffled = noisy.flip(-1)  # the same detail in other places: the term does not mind
    term = lambda output: torch.nn.functional.l1_loss(slice_detail(output), slice_detail(noisy))
    assert term(noisy) == 0 and term(shuffled) < 1e-7 < term(smooth)
    smooth.requires_grad_(True)
    grad, = torch.autograd.grad(term(smooth), smooth)
    step = 0.002 / grad.abs().max()  # a small descent step adds detail
    assert term((smooth - step * grad).detach()) < term(smooth.detach())

    train(tiny_options(tmp_path / "detail", cycle_weight=1.0, detail_weight=2.0, steps=2), log=quiet)
    for row in read_log(tmp_path / "detail"):
        assert float(row["detail"]) > 0
        assert float(row["loss"]) == pytest.approx(
            float(row["inr"]) + float(row["cycle"]) + 2.0 * float(row["detail"]), abs=5e-6)


def test_no_attention_builds_a_model_without_attention(tmp_path):
    from cycleinr.weights import load_model

    final = train(tiny_options(tmp_path / "run", attention=False, steps=1), log=quiet)
    loaded = load_model(final)
    assert loaded.info.config.attention is False
    assert not [name for name in loaded.network.state_dict() if name.startswith("to_")]
    with_attention = build_model(preset("tiny")).state_dict()
    assert {"to_query.weight", "to_key.weight", "to_value.weight"} <= set(with_attention)


def test_cli_flags_map_to_the_ablation_options():
    import argparse

    from cycleinr.commands import train as command

    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    args = parser.parse_args(["a.nii.gz", "--output", "run", "--no-cycle", "--no-attention"])
    options = command.options_from_args(args)
    assert options.cycle_weight == 0.0 and options.attention is False
    default = command.options_from_args(parser.parse_args(["a.nii.gz", "--output", "run"]))
    assert default.cycle_weight == 1.0 and default.attention is True and default.lr_halve_every == 200


def test_resume_continues_exactly(tmp_path):
    straight = train(tiny_options(tmp_path / "straight"), log=quiet)
    train(tiny_options(tmp_path / "halves", steps=2), log=quiet)
    resumed = train(tiny_options(tmp_path / "halves"), log=quiet)
    a, b = weights(straight), weights(resumed)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    log_a, log_b = read_log(tmp_path / "straight"), read_log(tmp_path / "halves")
    assert [r["loss"] for r in log_a] == [r["loss"] for r in log_b]
    state_a = weights(tmp_path / "straight" / "last_optimizer.safetensors")
    state_b = weights(tmp_path / "halves" / "last_optimizer.safetensors")
    for name in state_a:
        assert torch.equal(state_a[name], state_b[name]), name


def test_log_rows_after_the_last_checkpoint_are_dropped_on_resume(tmp_path):
    run = tmp_path / "run"
    train(tiny_options(run, steps=2), log=quiet)
    with open(run / "log.csv", "a", newline="") as handle:
        csv.writer(handle).writerow([3, 1, 9, 9, 9, 0.1, 1.0, 2.0])  # a step whose checkpoint was lost
    train(tiny_options(run, steps=3), log=quiet)
    steps = [int(row["step"]) for row in read_log(run)]
    assert steps == [1, 2, 3]
    assert float(read_log(run)[-1]["loss"]) != 9


def test_cancel_keeps_a_checkpoint_to_resume_from(tmp_path):
    run = tmp_path / "run"
    stop = threading.Event()
    calls = []

    def progress(fraction):
        calls.append(fraction)
        if len(calls) == 3:
            stop.set()

    with pytest.raises(Cancelled):
        train(tiny_options(run, steps=10, steps_per_epoch=10), progress=progress, cancel=stop, log=quiet)
    import json
    assert json.loads((run / "last_state.json").read_text())["step"] == 3
    train(tiny_options(run, steps=4, steps_per_epoch=10), log=quiet)
    assert [int(r["step"]) for r in read_log(run)] == [1, 2, 3, 4]


def test_checkpoint_drives_super_resolve_cli(tmp_path, capsys):
    import SimpleITK as sitk

    from cycleinr.cli import main

    final = train(tiny_options(tmp_path / "run", steps=1), log=quiet)
    output = tmp_path / "sr.nii.gz"
    code = main(["super-resolve", str(HEAD_CT), str(output), "--scale", "2", "--model",
                 str(tmp_path / "run" / "last.safetensors"), "--device", "cpu", "--no-progress"])
    assert code == 0, capsys.readouterr().err
    image, source = sitk.ReadImage(str(output)), sitk.ReadImage(str(HEAD_CT))
    assert image.GetSize()[2] == 2 * source.GetSize()[2] - 1
    assert final.exists() and final.with_suffix(".json").exists()


def test_validation_rows_compare_model_and_trilinear(tmp_path):
    train(tiny_options(tmp_path / "run", steps=2, validation=[str(HEAD_CT)], validation_scales=(2.0, 3.0)),
          log=quiet)
    with open(tmp_path / "run" / "validation.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert {(r["scale"], r["method"]) for r in rows} == {(s, m) for s in ("2.0", "3.0")
                                                         for m in ("cycleinr", "trilinear")}
    trilinear = {r["scale"]: float(r["psnr"]) for r in rows if r["method"] == "trilinear"}
    assert 30 < trilinear["3.0"] < trilinear["2.0"]  # real head CT: interpolation is decent, x3 worse
    assert all(np.isfinite(float(r["ssim"])) for r in rows)


@pytest.mark.slow
def test_loss_falls_on_shared_data(tmp_path, shared_data):
    """A fixed batch from a shared volume scores a lower loss after a few CPU steps on that data."""
    from cycleinr.weights import load_model

    ct = str(shared_data / "invesalius_cranium_ct0051_1p5mm.nii.gz")
    options = tiny_options(tmp_path / "run", data=[ct], steps=30, steps_per_epoch=30, batch_size=2,
                           lr=2e-3, patch=24, lr_slices=4, cycle_weight=1.0)
    volumes = load_training_volumes([ct], "ct", 1.6)
    batch = PairSampler(volumes, lr_slices=4, patch=24, batch_size=8, seed=99).sample()
    tensors = (torch.from_numpy(batch.lr), torch.from_numpy(batch.hr), torch.from_numpy(batch.hr_positions).float())

    def held_out_loss(network):
        with torch.no_grad():
            return cycle_loss_terms(network.eval(), *tensors, batch.scale, 1.0)[0].item()

    torch.manual_seed(options.seed)
    before = held_out_loss(build_model(preset("tiny")))
    after = held_out_loss(load_model(train(options, log=quiet)).network)
    assert after < 0.8 * before, (before, after)


def test_training_reads_dicom_series_and_folders(shared_data, tmp_path):
    dicom = shared_data / "tcga_thca_ct_dicom_subset"
    volumes = load_training_volumes([str(dicom), str(HEAD_CT)], "ct", 1.6)
    assert [v.fine_axes for v in volumes] == [(1, 2), (0, 1, 2)]  # 2.5 mm DICOM: in-plane only
    assert volumes[0].array.shape == (24, 512, 512)
    folder = tmp_path / "volumes"
    folder.mkdir()
    (folder / HEAD_CT.name).symlink_to(HEAD_CT)
    assert [v.name for v in load_training_volumes([str(folder)], "ct", 1.6)] == [HEAD_CT.name]


def test_fine_tuning_to_another_modality_stores_that_normalisation(tmp_path):
    """A CT model fine-tuned on MR with modality 'mr' saves the MR percentile rule it trained with;
    without a modality the init model's rule is kept."""
    from cycleinr.config import CT_NORMALISATION, MR_NORMALISATION
    from cycleinr.weights import load_model

    base = train(tiny_options(tmp_path / "ct", steps=1), log=quiet)
    assert load_model(base, "cpu").info.normalisation == CT_NORMALISATION
    mr = train(tiny_options(tmp_path / "mr", steps=1, init_model=str(base), modality="mr", batch_size=1), log=quiet)
    info = load_model(mr, "cpu").info
    assert info.normalisation == MR_NORMALISATION
    # this run's facts on top, the base model's kept apart under its own key
    assert info.provenance["batch_size"] == 1 and info.provenance["steps"] == 1
    assert info.provenance["initialised_from"]["provenance"]["batch_size"] == 2
    kept = train(tiny_options(tmp_path / "again", steps=1, init_model=str(mr)), log=quiet)
    assert load_model(kept, "cpu").info.normalisation == MR_NORMALISATION
