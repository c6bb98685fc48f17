"""Detection proof: the default tier catches classic tiled-kernel bugs that the small tier lets
through, and passes the correct blockwise kernel.

tests/blockwise_kernel.py is a FlashAttention-style NumPy kernel (query blocks of 64, key
blocks of 128, split-KV above 256 keys) with one switch per bug. Each variant is wrapped with
conformance.plugin.kernel_adapter, exactly as a user would wrap their kernel, and judged by
conformance.evaluate against the float64 reference under the shipped tolerance rule.
"""

from __future__ import annotations

import numpy as np
import pytest
from blockwise_kernel import BLOCK_K, BUGS, blockwise_attention
from conftest import shipped_cases
from hypothesis import HealthCheck, find, given, settings
from hypothesis.errors import NoSuchExample

from conformance.adapter_api.adapter import Divergence
from conformance.adapter_api.plugin import kernel_adapter
from conformance.fuzz.strategies import DEFAULT_LIMITS, KERNEL_SCALE_LIMITS, cases
from conformance.verdicts.evaluate import ReferenceCache, evaluate

# The planted bugs overflow and divide by zero on purpose; the verdicts are what count.
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

# The kernel divides by a zero running sum on rows with every key masked (the softmax of all
# -inf); cases expecting zeros there get this declared, verified divergence.
NAN_ROWS = Divergence(
    id="test.blockwise.masked-rows-nan",
    reason="rows with every key masked are 0/0 = NaN",
    when=frozenset({"fully-masked-rows"}),
    masked_rows="nan",
)
DTYPES = ("float32", "float64")

# Which bugs the small tier alone misses: every shipped row is shorter than one key block, so
# no rescaling across key blocks, no tail after a full block, no split and no overflow
# past a stale maximum ever happens there. This is the point of the default tier.
SMALL_TIER_MISSES = {
    "acc-not-rescaled",
    "sum-not-rescaled",
    "stale-max",
    "tail-dropped",
    "query-tail-dropped",
    "split-combine",
}

# A bounded, chosen subset of the default tier, enough to catch every bug (kept < ~30 s).
DETECT = (
    "tiles/straddle-129[float32]",
    "tiles/straddle-257[float64]",
    "tiles/keys-straddle-257[float32]",
    "tiles/queries-straddle-129[float64]",
    "tiles/fa-113x203[float32]",
    "tiles/fa-256x512[float64]",
    "tiles/head-dim-111[float32]",
    "long_masks/causal-129[float32]",
    "long_masks/causal-bottom-right[T=300,S=513,float64]",
    "long_masks/window[window=[64,64],float32]",
    "long_masks/key-padding[lengths=[128,256],float64]",
    "long_masks/gqa-h8-g2[float32]",
    "long_numerics/scale-100.0[T=513,float32]",
    "long_numerics/scale-1000.0[T=513,float64]",
    "long_numerics/long-row-4096[float32]",
)


def _adapter(bug: str | None):  # noqa: ANN202
    def kernel(q, k, v, mask, *, scale):  # noqa: ANN001, ANN202
        return blockwise_attention(q, k, v, mask, scale=scale, bug=bug)

    name = f"test.blockwise.{bug or 'correct'}"
    cls = kernel_adapter(
        kernel, name=name, mask="additive", class_name=f"Blockwise_{bug}", divergences=[NAN_ROWS]
    )
    adapter = cls()
    adapter.setup()
    return adapter


def _kernel_cases(tier: str) -> list:
    cases = shipped_cases()
    return [c for c in cases if c.tier == tier and c.mode == "kernel" and c.dtype in DTYPES]


@pytest.fixture(scope="module")
def small() -> list:
    return _kernel_cases("small")


@pytest.fixture(scope="module")
def default() -> list:
    return _kernel_cases("default")


@pytest.fixture(scope="module")
def detect(default) -> list:  # noqa: ANN001
    by_id = {c.id: c for c in default}
    return [by_id[case_id] for case_id in DETECT]


def _verdicts(bug: str | None, cases: list, cache: ReferenceCache) -> dict[str, str]:
    adapter = _adapter(bug)
    return {c.id: evaluate(adapter, c, "cpu", cache)["verdict"] for c in cases}


@pytest.fixture(scope="module")
def cache() -> ReferenceCache:
    return ReferenceCache(size=512)


def test_correct_kernel_passes_every_kernel_case_it_supports(small, default, cache) -> None:  # noqa: ANN001
    """The whole default tier's kernel cases (float32/float64) and the small tier's."""
    verdicts = _verdicts(None, default + small, cache)
    bad = {k: v for k, v in verdicts.items() if v not in ("pass", "unsupported", "diverges")}
    assert not bad, bad
    # A finite fill (mask.fill) reaches the kernel as written: its fully masked rows come out as
    # the fill makes them, which may be the case's own policy (pass) or the declared
    # finite-fill divergence; every other non-NaN policy must diverge.
    filled = {c.id for c in default + small if c.mask.fill is not None}
    diverging = {k for k, v in verdicts.items() if v == "diverges" and k not in filled}
    assert diverging == {c.id for c in default + small if c.mask.fully_masked_rows != "nan"
                         and "fully-masked-rows" in c.features and not c.gradients
                         and c.id not in filled}  # fmt: skip
    assert list(verdicts.values()).count("pass") >= 150 + 100


@pytest.mark.parametrize("bug", BUGS)
def test_default_tier_catches_each_bug(bug: str, detect, cache) -> None:  # noqa: ANN001
    verdicts = _verdicts(bug, detect, cache)
    assert "fail" in verdicts.values() or "error" in verdicts.values(), verdicts


def test_which_bugs_the_small_tier_misses(small, cache) -> None:  # noqa: ANN001
    missed = set()
    for bug in BUGS:
        verdicts = _verdicts(bug, small, cache)
        if not {"fail", "error"} & set(verdicts.values()):
            missed.add(bug)
    assert missed == SMALL_TIER_MISSES


# --- fuzzing at kernel scale -----------------------------------------------------------------

FUZZ = settings(max_examples=60, derandomize=True, deadline=None, database=None,
                suppress_health_check=list(HealthCheck))  # fmt: skip


def _drawn_lengths(limits) -> list[int]:  # noqa: ANN001
    """max(T, S) of the kernel-mode examples drawn under `limits`, checking the budget."""
    seen: list[int] = []

    @FUZZ
    @given(cases(limits=limits, forbid={"layer"}))
    def collect(case) -> None:  # noqa: ANN001
        s = case.shape
        if limits.long_len:
            assert s.batch * s.num_heads * s.query_len * s.kv_len <= limits.max_elements
        seen.append(max(s.query_len, s.kv_len))

    collect()
    return seen


def test_default_fuzz_limits_stay_small() -> None:
    """The option is off by default: existing fuzz runs keep their sizes and speed."""
    assert DEFAULT_LIMITS.long_len == 0
    assert max(_drawn_lengths(DEFAULT_LIMITS)) <= DEFAULT_LIMITS.max_len


def test_kernel_scale_fuzz_reaches_multi_block_rows_under_its_budget() -> None:
    seen = _drawn_lengths(KERNEL_SCALE_LIMITS)
    assert max(seen) > 2 * BLOCK_K  # several key blocks and a split
    assert sum(n > 128 for n in seen) >= 5


def test_kernel_scale_fuzz_finds_a_rescaling_bug() -> None:
    """Hypothesis, drawing from what the kernel declares at kernel scale, finds the
    unrescaled accumulator (at the default limits every row fits one block: it cannot)."""
    adapter = _adapter("acc-not-rescaled")
    cache = ReferenceCache(size=8)

    def fails(case) -> bool:  # noqa: ANN001
        return evaluate(adapter, case, "cpu", cache)["verdict"] == "fail"

    strategy = cases(adapter.declaration, limits=KERNEL_SCALE_LIMITS)
    # 400 examples: how often a draw reaches a multi-block row depends on Hypothesis's version
    # (6.170 prefers the short branch more than 6.155; 60 examples found nothing there).
    found = find(strategy, fails, settings=settings(FUZZ, max_examples=400))
    assert found.shape.kv_len > BLOCK_K
    with pytest.raises(NoSuchExample):
        find(cases(adapter.declaration, limits=DEFAULT_LIMITS), fails, settings=FUZZ)


# --- a float64 case computed in float32, declared: held to float32's rule, baseline included --


def _float32_inside(bug: str | None, declared: bool):  # noqa: ANN202
    def kernel(q, k, v, mask, *, scale):  # noqa: ANN001, ANN202
        low = [None if x is None else x.astype(np.float32) for x in (q, k, v, mask)]
        return blockwise_attention(*low, scale=scale, bug=bug).astype(q.dtype)

    lower = Divergence(id="test.float32-inside", reason="computes float64 cases in float32",
                       when=frozenset({"float64"}), compute_dtype="float32")  # fmt: skip
    cls = kernel_adapter(kernel, name=f"test.blockwise.f32.{bug}.{declared}", mask="additive",
                         class_name="Float32Inside", divergences=[lower] if declared else [])  # fmt: skip
    adapter = cls()
    adapter.setup()
    return adapter


def test_compute_dtype_divergence_uses_that_dtypes_baseline(default, cache) -> None:  # noqa: ANN001
    """At logits of ~10^3 a correct float32 computation errs ~1e-5, far above float32's fixed
    rule; the declared divergence is verified against a float32 baseline (not the float64
    case's own baseline, whose error is 0), and a real bug still fails."""
    case = next(c for c in default if c.id == "long_numerics/scale-100.0[T=129,float64]")
    assert evaluate(_float32_inside(None, True), case, "cpu", cache)["verdict"] == "diverges"
    assert evaluate(_float32_inside(None, False), case, "cpu", cache)["verdict"] == "fail"
    bugged = evaluate(_float32_inside("query-tail-dropped", True), case, "cpu", cache)
    assert bugged["verdict"] == "fail"


def test_cli_fuzz_tier_default_finds_what_tier_small_cannot(tmp_path) -> None:  # noqa: ANN001
    from conftest import run_cli

    args = ("fuzz", "--adapter", "blockwise_kernel:Unrescaled", "--property", "differential",
            "--seed", "1", "-n", "60")  # fmt: skip
    small = run_cli(*args, "--out", str(tmp_path / "small"))
    assert small.returncode == 0, small.stdout + small.stderr
    found = run_cli(*args, "--tier", "default", "--out", str(tmp_path / "default"))
    assert found.returncode == 1, found.stdout + found.stderr
    assert "COUNTEREXAMPLE" in found.stdout
    assert "--seed 1 --max-examples 60 --tier default" in found.stdout  # the rerun line
    assert len(list((tmp_path / "default").rglob("*.yaml"))) == 1
