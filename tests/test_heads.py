"""Heads without data: shapes and gradients of every registered head, the multi-scale structure, the attention
variants against each other, order sensitivity, parameter groups, and `import_original` against a slow reference
forward of the paper's ViS4mer written from docs/design.md."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from references import original_state_dict, reference_forward

from heads import HEADS, build_head
from heads.attention import SelfAttention
from heads.blocks import sinusoid
from heads.ops import avg_pool2
from heads.paper_checkpoint import import_original, load_original, original_config

TINY = {"d_model": 16, "n_layers": 2, "d_state": 8, "dropout": 0.1}


@pytest.mark.parametrize("name", sorted(HEADS))
def test_every_head_shapes_and_backward(name):
    torch.manual_seed(0)
    head = build_head(name, d_input=12, n_outputs=5, seq_len=4 * 3, **TINY)
    x = torch.randn(2, 4, 3, 12).half()  # (B, T, P, D) float16 like the cache
    out = head(x)
    assert out.shape == (2, 5) and out.dtype == torch.float32
    out.square().sum().backward()
    grads = [p.grad for p in head.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    head.eval()
    with torch.no_grad():
        assert torch.equal(head(x), head(x))  # eval is deterministic (no dropout)


def test_unknown_head_lists_valid_names():
    with pytest.raises(ValueError, match="valid heads: s4-multiscale"):
        build_head("s5", 8, 2, 16)


def test_unknown_head_option_is_refused():
    """A typo never passes silently: build_head names the closest option; the heads themselves take no **kwargs."""
    with pytest.raises(ValueError, match=r"unknown head option 'd_stat' \(did you mean 'd_state'\?\)"):
        build_head("s4-multiscale", 8, 2, 16, d_stat=4)
    build_head("mean-pool", 8, 2, 16, d_state=4, n_heads=2)  # a known option another head uses is fine
    for cls in HEADS.values():
        with pytest.raises(TypeError):
            cls(8, 2, 16, d_stat=4)


def test_defaults_are_the_papers():
    from heads.config import HEAD, TRAIN

    assert (HEAD.d_model, HEAD.n_layers, HEAD.d_state, HEAD.dropout) == (1024, 3, 64, 0.2)
    assert (TRAIN.batch, TRAIN.lr, TRAIN.epochs) == (16, 1e-3, 100)
    head = build_head("s4-multiscale", d_input=1024, n_outputs=10, seq_len=None)
    assert head.encoder is None  # no input Linear when d_input == d_model
    widths = [(b.d_model, b.d_out) for b in head.blocks]
    assert widths == [(1024, 512), (512, 256), (256, 128)]
    assert head.decoder.in_features == 128
    assert build_head("s4-multiscale", 768, 10, None).encoder.in_features == 768


def test_multiscale_halves_length_and_width():
    head = build_head("s4-multiscale", 8, 3, 20, d_model=16, n_layers=2, d_state=8).eval()
    seen = []
    for block in head.blocks:
        block.register_forward_hook(lambda m, i, o: seen.append((tuple(i[0].shape), tuple(o.shape))))
    head(torch.randn(1, 5, 4, 8))
    assert seen == [((1, 20, 16), (1, 10, 8)), ((1, 10, 8), (1, 5, 4))]
    single = build_head("s4-singlescale", 8, 3, 20, d_model=16, n_layers=2, d_state=8).eval()
    assert [(b.d_model, b.d_out) for b in single.blocks] == [(16, 16), (16, 16)]
    assert [b.mixer.s4.l_max for b in head.blocks] == [20, 10]


def test_avg_pool2_matches_avgpool1d():
    x = torch.randn(2, 9, 5)  # (B, L, H), odd L
    ref = torch.nn.functional.avg_pool1d(x.transpose(1, 2), 2)  # (B, H, L/2)
    torch.testing.assert_close(avg_pool2(x, dim=1), ref.transpose(1, 2))
    torch.testing.assert_close(avg_pool2(x.transpose(1, 2)), ref)  # S4's (B, H, L) layout, last axis


def test_sdpa_equals_materialized_attention():
    torch.manual_seed(0)
    fused = SelfAttention(32, n_heads=4, attention="sdpa").eval()
    explicit = SelfAttention(32, n_heads=4, attention="materialized").eval()
    explicit.load_state_dict(fused.state_dict())
    x = torch.randn(2, 50, 32)
    torch.testing.assert_close(fused(x), explicit(x), atol=1e-5, rtol=1e-4)
    twin = build_head("transformer-multiscale", 8, 3, 20, attention="materialized", **TINY)
    assert twin(torch.randn(1, 5, 4, 8)).shape == (1, 3)


def test_order_sensitivity():
    """Reversing the segments changes what sequence heads see; the mean-pool floor cannot tell."""
    torch.manual_seed(0)
    x = torch.randn(1, 6, 2, 8)
    flipped = x.flip(1)
    for name in HEADS:
        head = build_head(name, 8, 3, 12, **{**TINY, "dropout": 0.0}).eval()
        with torch.no_grad():
            same = torch.allclose(head(x), head(flipped), atol=1e-6)
        assert same == (name == "mean-pool"), name


def test_positions_distinguish_segment_and_token():
    table = sinusoid(5, 8)
    assert table.shape == (5, 8) and torch.allclose(table[0, :4], torch.zeros(4))
    head = build_head("transformer", 8, 2, None, **TINY)
    code = head.positions.code(3, 4, "cpu")  # (L, H)
    assert code.shape == (12, 16) and len({tuple(r.tolist()) for r in code}) == 12


def test_param_groups_tag_the_ssm():
    from heads.training.optim import param_groups

    head = build_head("s4-multiscale", 8, 3, 16, **TINY)
    groups = param_groups(head, lr=3e-4, weight_decay=0.05)
    ssm = [g for g in groups if g["weight_decay"] == 0.0]
    assert len(ssm) == 1 and ssm[0]["lr"] == 1e-3
    names = {id(p): n for n, p in head.named_parameters()}
    assert sorted({names[id(p)].rsplit(".", 1)[-1] for p in ssm[0]["params"]}) == ["B", "log_dt", "w"]
    default = [g for g in groups if g is not ssm[0]][0]
    assert default["lr"] == 3e-4 and default["weight_decay"] == 0.05
    assert sum(len(g["params"]) for g in groups) == len(list(head.parameters()))


# ----------------------------------------------------------------------------------- paper-code checkpoints
@pytest.mark.parametrize("d_input", [6, 8])  # 6 != d_model: the paper applies its encoder; 8 == d_model: it skips it
def test_import_original_gives_the_papers_logits(d_input):
    sd = original_state_dict(d_input=d_input)
    assert original_config(sd) == {"d_input": d_input, "d_model": 8, "n_layers": 2, "d_state": 4, "n_outputs": 3}
    x = torch.randn(2, 4, 4, d_input, generator=torch.Generator().manual_seed(1))  # (B, T, P, D), L = 16
    ref = reference_forward(sd, x.reshape(2, 16, d_input).double().numpy(), n_layers=2)
    assert abs(ref).max() > 0.1  # the logits are not all near zero, so the tolerance below means something

    loaded = load_original(sd, seq_len=16).eval()
    built = build_head("s4-multiscale", d_input=d_input, n_outputs=3, seq_len=16, d_model=8, n_layers=2,
                       d_state=4).eval()
    built.load_state_dict(import_original(sd))  # strict: docs/design.md, import_original -> s4-multiscale
    for head in (loaded, built):
        assert (head.encoder is not None) == (d_input != 8)
        with torch.no_grad():
            ours = head(x).double().numpy()
        np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-4)

    mapped = import_original(sd)
    assert mapped["blocks.0.mixer.s4.output_linear.bias"].shape == (8,)
    assert not any("krylov" in k or "nodes" in k for k in mapped)
    assert ("encoder.weight" in mapped) == (d_input != 8)


def test_import_original_rejects_other_checkpoints():
    with pytest.raises(ValueError, match="unknown keys: fc.weight"):
        import_original({"fc.weight": torch.zeros(2, 2), **original_state_dict()})


@pytest.mark.parametrize("name,batch,dropout", [("s4-multiscale", 2, 0.0), ("transformer-multiscale", 2, 0.0),
                                                ("s4-multiscale", 1, 0.2), ("s4-multiscale", 3, 0.2)])
def test_pooling_before_the_mixer_output_linear_changes_nothing(name, batch, dropout):
    """The multi-scale block pools before the mixer's output Linear (and may fold that Linear into its own) when the
    mixer is a `PoolingMixer`; values and gradients equal pooling the block's residual sum."""
    from heads.blocks import MultiScaleBlock, PoolingMixer

    class Plain(torch.nn.Module):  # the same mixer, not a PoolingMixer: the block's generic path
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x)

    torch.manual_seed(0)
    head = build_head(name, 16, 3, 2 * 21, d_model=16, n_layers=2, dropout=dropout)  # float32: inputs are cast to it
    x = torch.randn(batch, 2, 21, 16)  # (B, T, P, D), L = 42: batch 1 folds the projection per sample, batch 3 not
    torch.manual_seed(1)  # the same dropout masks on both paths (drawn in the same order)
    fast = head(x)
    fast.sum().backward()
    grads = [p.grad.clone() for p in head.parameters()]
    head.zero_grad()
    for block in head.blocks:
        assert isinstance(block, MultiScaleBlock) and isinstance(block.mixer, PoolingMixer)
        block.mixer = Plain(block.mixer)
    torch.manual_seed(1)
    slow = head(x)
    slow.sum().backward()
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-5)
    for got, want in zip(grads, [p.grad for p in head.parameters()]):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_command_line_and_make_help_read_the_one_config():
    import argparse
    import dataclasses
    import subprocess
    import sys
    from pathlib import Path

    from heads.__main__ import train_parser
    from heads.config import TRAIN
    from heads.training.run import resolve_run_options

    args = train_parser(argparse.ArgumentParser().add_subparsers()).parse_args([])
    resolve_run_options(args, None)  # unset options (None, so that a resume keeps its own) are filled from TRAIN
    assert {f.name: getattr(args, f.name) for f in dataclasses.fields(TRAIN)} == dataclasses.asdict(TRAIN)
    root = Path(__file__).resolve().parents[1]
    shown = subprocess.run([sys.executable, "heads/config.py"], cwd=root, capture_output=True, text=True,
                           check=True).stdout  # what `make help` prints
    for f in dataclasses.fields(TRAIN):
        assert f"--{f.name.replace('_', '-')} {getattr(TRAIN, f.name)}" in shown
