"""torch 2.13 CPU FlexAttention under dynamic shapes: with a mask_mod that indexes a captured
boolean tensor and a score_mod that reads two captured tensors, Inductor's C++ template emits
`cur_qSplitSize7` (or `cur_kvSplitSize1`, `cur_qSplitSize5`, ...) and g++ rejects it.

The CPU template puts the runtime block sizes back into the generated code with a plain
`str.replace(<size-argument name>, "cur_qSplitSize")`; once the kernel has enough size
arguments that one name is a prefix of another (`ks4` of `ks45`), both are rewritten.
Static shapes (dynamic=False) compile and agree with eager. Run: python this_file.py
"""

import re

import torch
from torch.nn.attention.flex_attention import create_block_mask, flex_attention

B, H, T, S, E = 2, 4, 5, 7, 8
torch.manual_seed(0)
q, k, v = torch.randn(B, H, T, E), torch.randn(B, H, S, E), torch.randn(B, H, S, E)
allowed = torch.rand(B, 1, T, S) > 0.3
allowed[..., 0] = True  # no fully masked row
slopes = torch.tensor([0.5, 0.25, 0.125, 0.0625])
bias = torch.randn(B, 1, T, S)


def mask_mod(b, h, q_idx, kv_idx):
    return allowed[b, 0, q_idx, kv_idx]


def score_mod(score, b, h, q_idx, kv_idx):
    return score - slopes[h] * (q_idx - kv_idx).abs() + bias[b, 0, q_idx, kv_idx]


block_mask = create_block_mask(mask_mod, B, 1, T, S, device="cpu")
eager = flex_attention(q, k, v, score_mod=score_mod, block_mask=block_mask)
for dynamic in (False, True):
    compiled = torch.compile(flex_attention, dynamic=dynamic, fullgraph=True)
    try:
        out = compiled(q, k, v, score_mod=score_mod, block_mask=block_mask)
        print(f"dynamic={dynamic}: max abs diff vs eager {(out - eager).abs().max().item():.2e}")
    except Exception as exc:  # noqa: BLE001 - the exception is the report
        name = re.search(r"cur_\w*SplitSize\d+", str(exc))
        print(
            f"dynamic={dynamic}: {type(exc).__name__}; undeclared name in the generated C++: "
            f"{name.group(0) if name else '(none found)'}"
        )
    torch._dynamo.reset()
print("torch", torch.__version__)
