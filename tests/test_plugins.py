"""The plugin helpers: functions become adapters, declarations follow the calling convention."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conformance.adapter_api.plugin import (
    ADDITIVE_MASK_FEATURES,
    BOOL_MASK_FEATURES,
    kernel_adapter,
    layer_adapter,
    mask_for,
)
from conformance.adapter_api.registry import _entries_from_module, load_target
from conformance.cases.masks import build_mask, visible
from conformance.running.feature_table import feature_table
from conformance.spec import load_spec
from conformance.verdicts.evaluate import evaluate

ROOT = Path(__file__).resolve().parent.parent
CASES = load_spec(Path(__file__).parent / "plugin_cases.yaml")
KERNEL = [c for c in CASES if c.mode == "kernel"]
LAYER = [c for c in CASES if c.mode == "layer"]


def by_id(fragment: str):  # noqa: ANN201
    return next(c for c in CASES if fragment in c.id)


def softmax(logits: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        e = np.exp(logits - logits.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)


def sdpa(q, k, v, logits_mask=None, attend=None, scale=None):  # noqa: ANN001, ANN201
    """Plain NumPy attention on [B,H,T,K]; k/v with G heads, expanded here (native GQA)."""
    r = q.shape[1] // k.shape[1]
    k, v = np.repeat(k, r, axis=1), np.repeat(v, r, axis=1)
    logits = np.einsum("bhtk,bhsk->bhts", q, k) * (scale or q.shape[-1] ** -0.5)
    if logits_mask is not None:
        logits = logits + logits_mask
    if attend is not None:
        logits = np.where(attend, logits, -np.inf)
    w = softmax(logits)
    return np.einsum("bhts,bhsv->bhtv", w, v), w


def run_all(cls, cases):  # noqa: ANN001, ANN201
    adapter = cls()
    adapter.setup()
    return {c.id: evaluate(adapter, c, "cpu") for c in cases}


def assert_no_failures(records: dict) -> None:
    bad = {k: r["message"] for k, r in records.items() if r["verdict"] in ("fail", "error")}
    assert not bad


# --- kernel functions ----------------------------------------------------------------------


@kernel_adapter(name="test.plugin.additive", returns_weights=True)
def np_attention(q, k, v, mask, *, scale):  # noqa: ANN001
    """NumPy attention, additive mask."""
    return sdpa(q, k, v, logits_mask=mask, scale=scale)


def test_kernel_function_becomes_an_adapter() -> None:
    decl = np_attention.declaration
    assert decl.name == "test.plugin.additive" and decl.summary == "NumPy attention, additive mask."
    assert {"kernel", "scale", "grouped-query", "multi-query", "weights", "weights-mean"} <= (
        decl.features
    )
    assert ADDITIVE_MASK_FEATURES <= decl.features and "layer" not in decl.features
    assert np_attention.function.__name__ == "np_attention"  # the original stays callable
    records = run_all(np_attention, CASES)
    assert_no_failures(records)
    assert all(records[c.id]["verdict"] == "pass" for c in KERNEL)
    assert all(records[c.id]["verdict"] == "unsupported" for c in LAYER)


def test_a_wrong_function_fails() -> None:
    """The helper must not hide a bug: a missing scale is a fail, not a pass."""

    @kernel_adapter(name="test.plugin.noscale")
    def wrong(q, k, v, mask, *, scale):  # noqa: ANN001, ANN202
        return sdpa(q, k, v, logits_mask=mask, scale=1.0)[0]

    records = run_all(wrong, [by_id("kernel-causal-top-left")])
    assert [r["verdict"] for r in records.values()] == ["fail"]


@pytest.mark.parametrize("form", ["attend", "masked", "none"])
def test_boolean_and_no_mask_forms(form: str) -> None:
    @kernel_adapter(name=f"test.plugin.{form}", mask=form)
    def fn(q, k, v, mask, *, scale):  # noqa: ANN001, ANN202
        if mask is None:
            return sdpa(q, k, v, scale=scale)[0]
        assert mask.dtype == np.bool_ and mask.shape[1] == q.shape[1]
        return sdpa(q, k, v, attend=mask if form == "attend" else ~mask, scale=scale)[0]

    features = fn.declaration.features
    assert "attn-bias" not in features  # a boolean cannot carry a finite bias
    if form == "none":
        assert not features & BOOL_MASK_FEATURES
    else:
        assert BOOL_MASK_FEATURES <= features
    records = run_all(fn, KERNEL)
    assert_no_failures(records)
    assert records[by_id("kernel-masks").id]["verdict"] == "unsupported"  # has a finite bias
    padded = records[by_id("kernel-padding-random").id]["verdict"]
    assert padded == ("unsupported" if form == "none" else "pass")


def test_mask_for_conversions() -> None:
    case = by_id("kernel-padding-random")
    seen = visible(case)
    attend = mask_for(case, "attend")
    s = case.shape
    assert attend.shape == (s.batch, s.num_heads, s.query_len, s.kv_len)
    assert np.array_equal(attend, np.broadcast_to(seen, attend.shape))
    assert np.array_equal(mask_for(case, "masked"), ~attend)
    additive = mask_for(case, "additive")
    assert additive.dtype == np.float64 and np.array_equal(np.isneginf(additive), ~attend)
    assert mask_for(case, "attend", broadcast=False).shape == build_mask(case)[0].shape
    assert mask_for(by_id("kernel-float32"), "additive") is None  # no mask at all
    biased = by_id("kernel-masks")
    assert np.isfinite(mask_for(biased, "additive")).any()
    with pytest.raises(Exception, match="finite attention bias"):
        mask_for(biased, "attend")


def test_bthk_layout_and_repeated_kv_heads() -> None:
    @kernel_adapter(name="test.plugin.bthk-repeat-kv", layout="BTHK", kv_heads="repeat")
    def fn(q, k, v, mask, *, scale):  # noqa: ANN001, ANN202
        assert q.shape[2] == k.shape[2]  # heads already repeated by the helper
        out, _ = sdpa(*(x.transpose(0, 2, 1, 3) for x in (q, k, v)), logits_mask=mask, scale=scale)
        return out.transpose(0, 2, 1, 3)  # back to [B, T, H, V]

    assert "repeated by the helper" in fn.declaration.notes
    records = run_all(fn, [by_id("kernel-gqa[G=1]"), by_id("kernel-gqa[G=2]"), by_id("masks")])
    assert {r["verdict"] for r in records.values()} == {"pass"}


def test_equal_kv_heads_and_no_scale_narrow_the_declaration() -> None:
    @kernel_adapter(name="test.plugin.narrow", kv_heads="equal", drop={"window"})
    def fn(q, k, v, mask):  # noqa: ANN001, ANN202
        return sdpa(q, k, v, logits_mask=mask)[0]

    features = fn.declaration.features
    assert not features & {"grouped-query", "multi-query", "scale", "window"}
    records = run_all(fn, KERNEL)
    assert_no_failures(records)
    for fragment in ("kernel-gqa[G=1]", "kernel-masks", "kernel-fully-masked-row"):
        assert records[by_id(fragment).id]["verdict"] == "unsupported"
    with pytest.raises(ValueError, match="mask must be one of"):
        kernel_adapter(name="x", mask="polarity")


# --- layer functions -----------------------------------------------------------------------


def _layer_from_canonical(query, key, value, p, mask, scale):  # noqa: ANN001, ANN202
    def proj(x, w, b):  # noqa: ANN001, ANN202
        y = np.einsum("bld,ndk->bnlk", x, w)
        return y if b is None else y + b[None, :, None, :]

    q, k, v = (
        proj(query, p["wq"], p["bq"]),
        proj(key, p["wk"], p["bk"]),
        proj(value, p["wv"], p["bv"]),
    )
    heads, w = sdpa(q, k, v, logits_mask=mask, scale=scale)
    y = np.einsum("bhtv,hvd->btd", heads, p["wo"])
    return (y if p["bo"] is None else y + p["bo"]), w


@layer_adapter(name="test.plugin.layer-canonical", returns_weights=True)
def np_layer(query, key, value, p, mask, *, scale):  # noqa: ANN001
    return _layer_from_canonical(query, key, value, p, mask, scale)


@layer_adapter(name="test.plugin.layer-linear", weights="linear")
def np_layer_linear(query, key, value, p, mask, *, scale, case):  # noqa: ANN001
    h, g = case.shape.num_heads, case.shape.num_kv_heads

    def heads(weight, n):  # noqa: ANN001, ANN202 - torch Linear [N*K, D] -> [N, D, K]
        return weight.reshape(n, -1, weight.shape[1]).transpose(0, 2, 1)

    def bias(b, n):  # noqa: ANN001, ANN202
        return None if b is None else b.reshape(n, -1)

    canonical = {
        "wq": heads(p["q_weight"], h), "bq": bias(p["q_bias"], h),
        "wk": heads(p["k_weight"], g), "bk": bias(p["k_bias"], g),
        "wv": heads(p["v_weight"], g), "bv": bias(p["v_bias"], g),
        "wo": p["out_weight"].T.reshape(h, -1, p["out_weight"].shape[0]), "bo": p["out_bias"],
    }  # fmt: skip
    return _layer_from_canonical(query, key, value, canonical, mask, scale)[0]


@layer_adapter(name="test.plugin.layer-einsum", weights="einsum")
def np_layer_einsum(query, key, value, p, mask, *, scale):  # noqa: ANN001
    canonical = {f"w{x}": p[f"{x}_kernel"].transpose(1, 0, 2) for x in "qkv"}
    canonical.update({f"b{x}": p[f"{x}_bias"] for x in "qkv"})
    canonical.update(wo=p["out_kernel"], bo=p["out_bias"])
    return _layer_from_canonical(query, key, value, canonical, mask, scale)[0]


@layer_adapter(name="test.plugin.layer-packed", weights="packed")
def np_layer_packed(query, key, value, p, mask, *, scale, case):  # noqa: ANN001
    h = case.shape.num_heads
    wq, wk, wv = np.split(p["in_proj_weight"], 3)
    bq, bk, bv = (None, None, None) if p["in_proj_bias"] is None else np.split(p["in_proj_bias"], 3)
    canonical = {}
    for name, w, b in (("q", wq, bq), ("k", wk, bk), ("v", wv, bv)):
        canonical[f"w{name}"] = w.reshape(h, -1, w.shape[1]).transpose(0, 2, 1)
        canonical[f"b{name}"] = None if b is None else b.reshape(h, -1)
    canonical["wo"] = p["out_weight"].T.reshape(h, -1, p["out_weight"].shape[0])
    canonical["bo"] = p["out_bias"]
    return _layer_from_canonical(query, key, value, canonical, mask, scale)[0]


@pytest.mark.parametrize("cls", [np_layer, np_layer_linear, np_layer_einsum, np_layer_packed])
def test_layer_weight_layouts(cls) -> None:  # noqa: ANN001
    records = run_all(cls, LAYER)
    assert_no_failures(records)
    passed = {k for k, r in records.items() if r["verdict"] == "pass"}
    assert "plugins/layer-float64" in passed and "plugins/layer-no-bias-masks" in passed
    if cls is np_layer_packed:  # one E for everything: no GQA, no other dims
        assert not cls.declaration.features & {"kv-input-dims", "grouped-query", "value-dim"}
        assert "plugins/layer-cross" not in passed
    else:
        assert "plugins/layer-cross" in passed
    if cls is np_layer:
        assert "plugins/layer-causal" in passed  # weights_mean from the returned weights
    assert "plugins/layer-decode-multi-query" not in passed  # decode is not a default feature


def test_self_attention_passes_one_object() -> None:
    seen = []

    @layer_adapter(name="test.plugin.identity")
    def fn(query, key, value, p, mask, *, scale):  # noqa: ANN001, ANN202
        seen.append(query is key is value)
        return _layer_from_canonical(query, key, value, p, mask, scale)[0]

    run_all(fn, [by_id("layer-float64"), by_id("layer-cross")])
    assert seen == [True, False]


def test_torch_arrays() -> None:
    torch = pytest.importorskip("torch")

    @kernel_adapter(name="test.plugin.torch-sdpa", arrays="torch", mask="attend")
    def fn(q, k, v, mask, *, scale):  # noqa: ANN001, ANN202
        assert isinstance(q, torch.Tensor) and (mask is None or mask.dtype == torch.bool)
        return torch.nn.functional.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, scale=scale, enable_gqa=True
        )

    assert fn.declaration.requires == ("torch",) and fn.declaration.framework == "torch"
    cases = [by_id("kernel-float32"), by_id("kernel-gqa[G=2]"), by_id("causal-bottom-right")]
    cases[0] = dataclasses.replace(cases[0], compare=("output",))  # SDPA returns no weights
    records = run_all(fn, cases)
    assert {r["verdict"] for r in records.values()} == {"pass"}, records


# --- registry and entry points -------------------------------------------------------------


def test_decorated_function_is_a_registry_target() -> None:
    module = sys.modules[np_attention.__module__]
    module.ADAPTERS = [np_attention, np_layer]
    try:
        entries = _entries_from_module(np_attention.__module__, "entry-point")
    finally:
        del module.ADAPTERS
    assert [e.name for e in entries] == ["test.plugin.additive", "test.plugin.layer-canonical"]
    assert load_target(entries[0].target) is np_attention


def test_entry_point_plugin_is_listed(tmp_path: Path) -> None:
    """A distribution declaring the entry point shows up in `conformance list adapters`."""
    info = tmp_path / "my_attention_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: my-attention-plugin\nVersion: 1.0\n"
    )
    (info / "entry_points.txt").write_text(
        "[attention_conformance.adapters]\nbroken = examples.broken_attention\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    code = (
        "from conformance.registry import plugin_entries, resolve\n"
        "print([(e.name, e.target, e.source) for e in plugin_entries()])\n"
        "print(resolve(['example.broken'])[0].target)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert (
        "('example.broken.mask-polarity', 'examples.broken_attention:broken_attention', "
        in done.stdout
    )
    assert done.stdout.splitlines()[-1] == "examples.broken_attention:broken_attention"
    listed = subprocess.run(
        [sys.executable, "-m", "conformance.cli", "list", "adapters"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert listed.returncode == 0, listed.stderr
    assert "example.broken.mask-polarity" in listed.stdout


# --- feature table -------------------------------------------------------------------------


def test_feature_table_points_at_the_culprit() -> None:
    def rec(verdict: str, *features: str) -> dict:
        return {"adapter": "mine", "device": "cpu", "verdict": verdict,
                "features": ["kernel", "float32", *features]}  # fmt: skip

    records = [
        rec("pass"), rec("pass", "scale"), rec("fail", "causal", "causal-bottom-right"),
        rec("error", "causal-bottom-right", "kv-len"), rec("pass", "causal"),
        rec("unsupported", "decode"), rec("diverges", "fully-masked-rows"),
    ]  # fmt: skip
    table = feature_table(records)
    lines = table.splitlines()
    assert lines[0].strip().startswith("7 cases")
    row = next(line for line in lines if line.strip().startswith("causal-bottom-right"))
    assert row.split()[1:4] == ["0", "2", "0"] and "every case with it" in row
    causal = next(line for line in lines if line.strip().startswith("causal "))
    assert "some fail" in causal
    assert "ok" in next(line for line in lines if "fully-masked-rows" in line)
    assert "unsupported only: decode" in table
    assert table.splitlines()[-1].strip().startswith("look first at: causal-bottom-right")
    several = feature_table(records + [{**records[0], "adapter": "other"}])
    assert "mine:" in several and "other:" in several


def test_opt_in_adapters_run_only_when_named(monkeypatch: pytest.MonkeyPatch) -> None:
    """Declaration.opt_in: left out of a plain run and of prefix selections, chosen by name,
    and `conformance list adapters` says why."""
    from conformance.adapter_api import registry
    from conformance.adapter_api.adapter import Declaration

    plain = Declaration(
        name="fam.fast", summary="s", framework="numpy", features=frozenset(), dtypes=frozenset()
    )
    costly = dataclasses.replace(plain, name="fam.slow", opt_in="compiles for minutes")
    entries = [registry.AdapterEntry(d.name, f"m:{d.name}", d, "builtin") for d in (plain, costly)]
    monkeypatch.setattr(registry, "all_entries", lambda: entries)
    assert [e.name for e in registry.resolve(None)] == ["fam.fast"]
    assert [e.name for e in registry.resolve(["fam"])] == ["fam.fast"]
    assert [e.name for e in registry.resolve(["fam.slow"])] == ["fam.slow"]


def test_the_shipped_opt_in_adapters_say_why() -> None:
    from conformance.adapter_api.registry import builtin_entries

    opt_in = {e.name: e.declaration.opt_in for e in builtin_entries() if e.declaration.opt_in}
    assert set(opt_in) == {"torch.compile.mha", "torch.compile.mha.weights"}
    assert all(len(why) > 20 for why in opt_in.values())
