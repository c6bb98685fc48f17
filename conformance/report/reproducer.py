"""A failing case as a standalone script plus its arrays: what a bug report should contain.

`write_reproducer(case, record, adapter_target, out_dir)` writes a directory holding
    reproduce.py          standalone: needs Python 3 and NumPy only
    case.json             the case, the verdict, the tolerance, how to call the adapter
    <input>.npy           q/k/v (kernel) or query/key/value + canonical weights (layer), in the
                          case dtype's storage type (bfloat16 as float32)
    weights_linear.npz    layer mode: the same weights as torch Linear / packed in_proj /
    weights_einsum.npz      Keras-Flax einsum kernels (conformance.cases.layouts), for your own calls
    weights_packed.npz
    mask_attend.npy       bool [B,H,T,S], True = attend       (when the case has a mask that a
    mask_masked.npy       bool [B,H,T,S], True = masked out    boolean can carry)
    mask_additive.npy     float [B,H,T,S], 0 / -inf (+ finite bias)
    expected_<name>.npy   the float64 reference for every compared output
    actual_<name>.npy     what the implementation returned (when it returned something)

`python reproduce.py` re-runs the implementation when attention-conformance and the adapter
are importable (it adds the directories it was written from to sys.path), else it checks the
saved output; either way it prints the max error, where it is, and exits 1 on a mismatch.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import numpy as np

from ..adapter_api.plugin import mask_for
from ..cases.case import Case
from ..cases.inputs import CaseInputs, make_inputs
from ..cases.layouts import to_einsum_kernel, to_linear, to_linear_out, to_packed_in_proj
from ..cases.masks import build_mask, picture
from ..oracle.reference import attention, baseline
from ..sanitize import for_docstring
from ..verdicts.compare import baseline_error
from ..verdicts.tolerance import tolerance_for

SCRIPT = '''#!/usr/bin/env python3
"""Reproducer: {case_id}
on {adapter} ({verdict}), written by attention-conformance {version}.

    python reproduce.py          re-run the implementation if it can be imported, else check
                                 the saved output (actual_*.npy)
    python reproduce.py --saved  only check the saved output

Needs Python 3 and NumPy only. Arrays beside this script: see case.json ("files").
{call}
Mask, batch 0, head 0 ('#' attend, '.' masked, '-' -inf additive):
{picture}
"""

import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
META = json.loads((HERE / "case.json").read_text())


def load(name):
    return np.load(HERE / name, allow_pickle=False)


def rerun():
    """Run the adapter on the saved arrays; None when it cannot be imported here."""
    for path in reversed(META["search_path"]):
        path = str((HERE / path).resolve())  # stored relative to this folder
        if path not in sys.path:
            sys.path.insert(0, path)
    try:
        from conformance.cases.case import Case
        from conformance.cases.inputs import CaseInputs
        from conformance.adapter_api.registry import load_target
    except ImportError as error:
        print(f"(attention-conformance is not importable: {{error}}; checking the saved output)")
        return None
    case = Case.from_dict(META["case"])
    arrays = {{n: load(f).astype(np.float64) for n, f in META["inputs"].items()}}
    weights = {{n: load(f).astype(np.float64) for n, f in META["weights"].items()}}
    if case.self_attention and "query" in arrays:
        arrays["key"] = arrays["value"] = arrays["query"]  # the same object, as in the run
    try:
        adapter = load_target(META["adapter_target"])()
    except Exception as error:  # noqa: BLE001
        print(f"(cannot import {{META['adapter_target']}}: {{error}}; checking the saved output)")
        return None
    adapter.setup()
    inputs = CaseInputs(dtype=case.dtype, arrays=arrays, weights=weights)
    print(f"re-ran {{META['adapter']}} ({{META['adapter_target']}}) on {{META['device']}}")
    return adapter.run(case, inputs, META["device"])


def check(name, actual, expected, tol):
    actual = np.asarray(actual, dtype=np.float64)
    if actual.shape != expected.shape:
        print(f"{{name}}: FAIL shape {{actual.shape}}, expected {{expected.shape}}")
        return False
    nan_e, nan_a = np.isnan(expected), np.isnan(actual)
    finite = np.isfinite(expected)
    misplaced = (nan_e != nan_a) | (np.isinf(expected) & (actual != expected))
    diff = np.where(finite & np.isfinite(actual), np.abs(actual - expected), 0.0)
    bad = misplaced | (finite & (diff > tol["atol"] + tol["rtol"] * np.abs(expected)))
    max_abs = float(diff.max()) if diff.size else 0.0
    ok = not bad.any() or (
        not misplaced.any() and tol.get("budget") is not None and max_abs <= tol["budget"]
    )
    rule = f"rtol {{tol['rtol']:g}}, atol {{tol['atol']:g}}"
    if tol.get("budget") is not None:
        rule += f", or max abs <= {{tol['budget']:.3g}} (2x same-dtype baseline error)"
    if ok:
        print(f"{{name}}: ok, max abs error {{max_abs:.3g}} ({{rule}})")
        return True
    first = tuple(int(i) for i in np.argwhere(bad)[0])
    print(f"{{name}}: FAIL, max abs error {{max_abs:.3g}} ({{rule}})")
    print(f"  {{int(bad.sum())}}/{{bad.size}} elements differ; first at {{first}}: "
          f"got {{float(actual[first])!r}}, expected {{float(expected[first])!r}}")
    if (nan_a & finite).any():
        print(f"  {{int((nan_a & finite).sum())}} NaN where the reference is finite")
    if (nan_e & ~nan_a).any():
        print(f"  {{int((nan_e & ~nan_a).sum())}} finite values where the reference is NaN "
              "(fully masked rows: the case expects NaN)")
    rows = sorted({{tuple(int(i) for i in idx[:-1]) for idx in np.argwhere(bad)}})
    every = len(rows) == int(np.prod(expected.shape[:-1]))
    print("  every row differs" if every else
          f"  rows that differ (index without the last axis): {{rows[:8]}}"
          + (" ..." if len(rows) > 8 else ""))
    return False


def main():
    print(f"case    {{META['case']['id']}} ({{META['case']['mode']}}, {{META['case']['dtype']}})")
    print(f"        features: {{', '.join(META['features'])}}")
    print(f"run     {{META['verdict']}}: {{META['message']}}")
    outputs = None if "--saved" in sys.argv else rerun()
    if outputs is None:
        saved = {{n: f"actual_{{n}}.npy" for n in META["compare"]}}
        if not all((HERE / f).exists() for f in saved.values()):
            print("no saved output to check (the run raised: see case.json 'message')")
            return 1
        outputs = {{n: load(f) for n, f in saved.items()}}
        print("checking the saved output of the run")
    ok = True
    for name in META["compare"]:
        if name not in outputs:
            print(f"{{name}}: FAIL, the implementation returned no {{name!r}}")
            ok = False
            continue
        expected = load(f"expected_{{name}}.npy")
        ok = check(name, outputs[name], expected, META["tolerance"][name]) and ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
'''


def _slug(adapter: str, case_id: str) -> str:
    text = re.sub(r"[^A-Za-z0-9_.=+-]+", "_", f"{adapter}__{case_id}").strip("_")
    digest = hashlib.sha1(f"{adapter}|{case_id}".encode()).hexdigest()[:8]
    return f"{text[:80]}-{digest}"


def _save(directory: Path, name: str, array: np.ndarray) -> str:
    np.save(directory / name, np.ascontiguousarray(array))
    return name


def _capture(
    case: Case, inputs: CaseInputs, adapter_target: str, device: str
) -> tuple[dict | None, str | None]:
    """Run the adapter once here to get its outputs (the record holds no arrays)."""
    from ..adapter_api.registry import load_target

    try:
        adapter = load_target(adapter_target)()
        adapter.setup()
        outputs = adapter.run(case, inputs, device)
        close = getattr(adapter, "close", None)
        if callable(close):
            close()
        return outputs, None
    except Exception as error:  # noqa: BLE001 - reported in case.json, not raised
        return None, f"{type(error).__name__}: {error}"


def _call_line(adapter_target: str) -> str:
    """For function adapters: the exact call the plugin helper makes (shown in the script)."""
    try:
        from ..adapter_api.plugin import FunctionAdapter, describe_convention
        from ..adapter_api.registry import load_target

        cls = load_target(adapter_target)
        if isinstance(cls, type) and issubclass(cls, FunctionAdapter):
            return "\nYour function is called as\n    " + describe_convention(cls) + "\n"
    except Exception:  # noqa: BLE001 - a nicety only
        pass
    return ""


def write_reproducer(
    case: Case,
    record: dict,
    adapter_target: str,
    out_dir: str | Path,
    *,
    outputs: dict | None = None,
    rerun: bool = True,
    search_path: list[str] | None = None,
) -> Path:
    """Write a standalone reproducer for `case` under `out_dir`; return the script's path.

    adapter_target: "module:Class" (as in the registry; external adapters' targets too).
    outputs: the implementation's outputs from the run, if the caller has them; otherwise,
    with rerun=True, the adapter is run once here to save them.
    search_path: directories the script adds to sys.path to import the adapter again
    (default: the current directory, where module:Class targets are usually relative to).
    """
    from .. import __version__

    directory = Path(out_dir) / _slug(record.get("adapter", "adapter"), case.id)
    directory.mkdir(parents=True, exist_ok=True)
    inputs = make_inputs(case)
    device = record.get("device") or "cpu"
    files: dict[str, str] = {}

    saved_inputs = {}
    for name in inputs.arrays:
        if name in ("key", "value") and case.self_attention:
            continue  # self-attention: key and value are the query itself
        saved_inputs[name] = _save(directory, f"{name}.npy", inputs.native(name))
    saved_weights = {n: _save(directory, f"{n}.npy", inputs.native(n)) for n in inputs.weights}
    files.update(saved_inputs)
    files.update(saved_weights)
    if case.mode == "layer":
        w = {n: inputs.native(n) for n in inputs.weights}
        linear = {}
        for p in "qkv":
            linear[f"{p}_weight"], linear[f"{p}_bias"] = to_linear(w[f"w{p}"], w[f"b{p}"])
        linear["out_weight"], linear["out_bias"] = to_linear_out(w["wo"]), w["bo"]
        np.savez(directory / "weights_linear.npz", **linear)
        einsum = {f"{p}_kernel": to_einsum_kernel(w[f"w{p}"]) for p in "qkv"}
        einsum.update({f"{p}_bias": w[f"b{p}"] for p in "qkv"})
        einsum["out_kernel"], einsum["out_bias"] = w["wo"], w["bo"]
        np.savez(directory / "weights_einsum.npz", **einsum)
        files["weights_linear"] = "weights_linear.npz"
        files["weights_einsum"] = "weights_einsum.npz"
        s = case.shape
        if s.num_kv_heads == s.num_heads and s.query_dim == s.num_heads * s.key_dim:
            weight, bias = to_packed_in_proj(w["wq"], w["wk"], w["wv"], w["bq"], w["bk"], w["bv"])
            np.savez(directory / "weights_packed.npz", in_proj_weight=weight, in_proj_bias=bias,
                     out_weight=linear["out_weight"], out_bias=w["bo"])  # fmt: skip
            files["weights_packed"] = "weights_packed.npz"

    for form in ("attend", "masked", "additive"):
        try:
            mask = mask_for(case, form)
        except Exception:  # noqa: BLE001 - a finite bias has no boolean form
            mask = None
        if mask is not None:
            files[f"mask_{form}"] = _save(directory, f"mask_{form}.npy", mask)

    policy = case.mask.fully_masked_rows
    expected = attention(case, inputs, masked_rows=policy)
    tol = tolerance_for(case.dtype)
    base = baseline(case, inputs, masked_rows=policy) if tol.baseline_factor else None
    tolerance = {}
    for name in case.compare:
        files[f"expected_{name}"] = _save(directory, f"expected_{name}.npy", expected[name])
        budget = None
        if base is not None:
            finite = np.isfinite(expected[name])
            magnitude = float(np.abs(expected[name][finite]).max()) if finite.any() else 0.0
            budget = tol.baseline_factor * baseline_error(base[name], expected[name])
            budget += tol.floor(magnitude)
        tolerance[name] = {
            "rtol": record.get("rtol") or tol.rtol,
            "atol": record.get("atol") or tol.atol,
            "budget": budget,
        }

    capture_error = None
    if outputs is None and rerun:
        outputs, capture_error = _capture(case, inputs, adapter_target, device)
    for name in case.compare:
        if outputs is not None and name in outputs:
            value = np.asarray(outputs[name])
            files[f"actual_{name}"] = _save(directory, f"actual_{name}.npy", value)

    case_dict = case.to_dict()
    case_dict.pop("expected", None)
    meta = {
        "case": case_dict,
        "features": sorted(case.features),
        "adapter": record.get("adapter"),
        "adapter_target": adapter_target,
        "device": device,
        "verdict": record.get("verdict"),
        "message": record.get("message", ""),
        "max_abs_error": record.get("max_abs_error"),
        "compare": list(case.compare),
        "tolerance": tolerance,
        "fully_masked_rows": policy,
        "inputs": saved_inputs,
        "weights": saved_weights,
        "files": files,
        # Relative to the reproducer's folder: no machine path in what may be committed.
        "search_path": [
            os.path.relpath(Path(p).resolve(), directory.resolve())
            for p in (search_path if search_path is not None else [os.getcwd()])
        ],
        "capture_error": capture_error,
    }
    (directory / "case.json").write_text(json.dumps(meta, indent=1, default=list))
    attend, bias = build_mask(case)
    # Only the docstring shows values, made unable to end it; the code reads the exact values
    # from case.json, so nothing a spec or adapter controls is ever pasted in as code.
    script = SCRIPT.format(
        case_id=for_docstring(case.id),
        adapter=for_docstring(record.get("adapter")),
        verdict=for_docstring(record.get("verdict")),
        version=for_docstring(__version__),
        call=for_docstring(_call_line(adapter_target)),
        picture="\n".join("    " + line for line in picture(attend, bias, limit=24).splitlines()),
    )
    path = directory / "reproduce.py"
    path.write_text(script)
    path.chmod(0o755)
    return path


def write_reproducer_isolated(
    case: Case,
    record: dict,
    adapter_target: str,
    out_dir: str | Path,
    *,
    timeout_s: float,
    search_path: list[str] | None = None,
) -> Path:
    """`write_reproducer` in a child process, killed after `timeout_s` seconds.

    Writing a reproducer imports the adapter and runs it once: user code, which may crash,
    hang or call sys.exit. The CLI calls this so that none of that can happen in its own
    process (issue 18). Raises ReproducerError saying what went wrong.
    """
    import subprocess
    import sys
    import tempfile

    payload = {
        "case": case.to_dict(),
        "record": record,
        "target": adapter_target,
        "out_dir": str(out_dir),
        "search_path": search_path if search_path is not None else [os.getcwd()],
        "sys_path": [p for p in sys.path if isinstance(p, str)],
    }
    with tempfile.TemporaryDirectory(prefix="conformance-repro-") as tmp:
        request = Path(tmp) / "request.json"
        request.write_text(json.dumps(payload, default=str), encoding="utf-8")
        answer = Path(tmp) / "answer.txt"
        try:
            done = subprocess.run(
                [sys.executable, "-m", "conformance.report.reproducer", str(request), str(answer)],
                capture_output=True, text=True, errors="replace", timeout=timeout_s,
                start_new_session=True,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            raise ReproducerError(f"writing it timed out after {timeout_s:g} s") from None
        if done.returncode != 0 or not answer.exists():
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
            raise ReproducerError(f"the writer exited with code {done.returncode}: {tail[0]}")
        return Path(answer.read_text(encoding="utf-8"))


class ReproducerError(RuntimeError):
    """The reproducer could not be written (its child crashed, hung or failed)."""


def _child_main(argv: list[str]) -> int:
    import sys

    request, answer = Path(argv[0]), Path(argv[1])
    payload = json.loads(request.read_text(encoding="utf-8"))
    for entry in reversed(payload["sys_path"]):
        if entry not in sys.path:
            sys.path.insert(0, entry)
    path = write_reproducer(
        Case.from_dict(payload["case"]),
        payload["record"],
        payload["target"],
        payload["out_dir"],
        search_path=payload["search_path"],
    )
    answer.write_text(str(path), encoding="utf-8")
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(_child_main(sys.argv[1:]))
