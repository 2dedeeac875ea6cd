"""The DMD trainer's parts (qvg_serve/tiny/dmd.py): the gradient forward reproduces the
rollout it trains, the batched rollout equals the per-stream one, the loss is zero where the
fake score equals the real one and pushes the generator otherwise, and a smoke run writes
loadable weights."""

import json

import torch

from qvg_serve.models import TINY, HashedWordEncoder
from qvg_serve.tiny import dmd
from qvg_serve.tiny.evaluate import load_tiny
from qvg_serve.tiny.objective import block_causal_x0, rollout, sample_chunks

PROMPTS = ["a red circle moving left on black", "a blue star bouncing on grey"]


def _text():
    return HashedWordEncoder(TINY.text_len, TINY.text_dim).encode(PROMPTS)


def test_block_causal_forward_reproduces_a_rollout_with_random_exits():
    """The generator's gradient comes from one block-causal forward over the rollout's chunks
    and each chunk's input at its exit step: it must give back the chunks the rollout drew
    (over the dense chunk-by-chunk history), or DMD would train something else."""
    model, text = load_tiny(), _text()
    x0, x_in, t = rollout(model, text, 3, torch.Generator().manual_seed(3), exits=[3, 0, 2])
    assert t == [TINY.timesteps[3], TINY.timesteps[0], TINY.timesteps[2]]
    again = block_causal_x0(model, x0, x_in, torch.tensor(t)[None].expand(2, 3), text)
    torch.testing.assert_close(again, x0, atol=2e-3, rtol=1e-3)
    full = sample_chunks(model, text, 3, torch.Generator().manual_seed(3))
    torch.testing.assert_close(rollout(model, text, 3, torch.Generator().manual_seed(3))[0], full)
    assert (x0[:, 1] - full[:, 1]).abs().max() > 0.1  # exit at step 0: another chunk


def test_lockstep_rollout_equals_the_per_stream_dense_history():
    """The batched rollout (one SDPA per layer, keys cached after RoPE) draws the chunks the
    engine's per-stream dense history draws with the same noise, at every chunk, also with
    random exits; its history length is checked."""
    from qvg_serve.tiny.contexts import LockstepContext

    model, text = load_tiny(), _text()
    for exits in (None, [1, 3, 0, 2]):
        fast = rollout(model, text, 4, torch.Generator().manual_seed(7), exits)
        ref = rollout(model, text, 4, torch.Generator().manual_seed(7), exits, lockstep=False)
        for a, b in zip(fast[:2], ref[:2], strict=True):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
        assert fast[2] == ref[2]
    ctx = LockstepContext(model, 2)
    ctx.at(0)
    try:
        ctx.at(TINY.frames_per_chunk)  # nothing committed yet: chunk 1 has no history
    except ValueError as e:
        assert "history of 0 tokens" in str(e)
    else:
        raise AssertionError("a chunk after a missing history was accepted")


def test_dmd_loss_is_zero_when_fake_equals_real_and_pushes_otherwise():
    real, text = load_tiny(), _text()
    g = dmd.trainable(None, "cpu")
    same = load_tiny()
    loss, video = dmd.generator_loss(
        g, real, same, text, 2, torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)
    )
    assert loss.item() == 0.0 and video.shape[:2] == (2, 2)
    fake = load_tiny()
    with torch.no_grad():
        fake.head.head.bias.add_(0.05)  # a fake score off the real one
    loss, _ = dmd.generator_loss(
        g, real, fake, text, 2, torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)
    )
    loss.backward()
    assert loss.item() > 0
    assert g.head.head.weight.grad.abs().sum() > 0
    assert dmd.fake_loss(fake, video, text, torch.Generator().manual_seed(0)).item() > 0


def test_dmd_smoke_run_writes_loadable_weights(tmp_path):
    log = dmd.main(["--smoke", "--out", str(tmp_path)])
    assert log["steps"] == 2 and len(log["loss_curve"]) == 2
    (_, _, dmd0, fake0, reg0), (_, _, dmd1, fake1, reg1) = log["loss_curve"]
    assert dmd0 is not None and dmd0 == dmd0 and fake0 > 0 and fake1 > 0  # step 0: both
    assert dmd1 is None  # step 1 (ratio 2) trains the fake score only: no generator loss
    assert reg0 is None and reg1 is None  # --regress off


def test_dmd_regression_anchor_is_logged_on_generator_steps_only(tmp_path):
    """--regress adds tiny.train's flow loss on the step's true clips to the generator's
    loss: logged (> 0) on the generator step, absent on the fake-only one; bad weights are
    refused."""
    log = dmd.main(["--smoke", "--regress", "0.5", "--out", str(tmp_path)])
    (_, _, dmd0, _, reg0), (_, _, _, _, reg1) = log["loss_curve"]
    assert reg0 is not None and reg0 > 0 and dmd0 is not None and reg1 is None
    # the regression clips are the clips whose captions drove the step's rollout
    enc = HashedWordEncoder(TINY.text_len, TINY.text_dim)
    seeds = dmd.step_seeds(3, 2, 4)
    caps = [dmd.data.clip_spec(s).caption for s in seeds]
    torch.testing.assert_close(dmd.captions(3, 2, 4, enc, "cpu"), enc.encode(caps))
    assert seeds != dmd.step_seeds(3, 3, 4) and len(set(seeds)) == 4
    try:
        dmd.parse(["--out", str(tmp_path), "--regress", "-1"])
    except SystemExit as e:
        assert e.code == 2
    else:
        raise AssertionError("--regress -1 was accepted")
    model = load_tiny(tmp_path / "tiny.safetensors")
    assert model.config.prediction == TINY.prediction
    assert json.loads((tmp_path / "tiny_dmd.json").read_text())["args"]["smoke"]
