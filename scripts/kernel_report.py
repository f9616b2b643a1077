#!/usr/bin/env python
"""Build the fused marching kernel (nerf/fused_march.py) for a GPU, without a GPU, and report what the compiler made.

Triton compiles the kernel ahead of time for the architecture given (sm_90, the H100, by default) with the
arguments a render passes for a model of the given sizes (``fused_march.launch_args``: the same tensors and
constants, so the same kernel), then NVIDIA's ptxas (inside the triton wheel) reports each build's registers per
thread, spilled bytes and stack frame. It times nothing a GPU does: it tells whether the kernel builds, how long its
just-in-time build takes on first use, and whether a block size / warp count choice spills registers (every spill
is a round trip through local memory in the marching loop). On the H100, 255 registers per thread is the ceiling.

Examples:
    python scripts/kernel_report.py                                  # configs/gpu_full.txt's sizes, three shapes
    python scripts/kernel_report.py --variants 64x4,64x8 --precision float16
    python scripts/kernel_report.py --config configs/cpu_tiny.txt --torso none --json out/kernel.json
"""

import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import configargparse  # noqa: E402
import torch  # noqa: E402

from common.atomic_io import save_json  # noqa: E402
from scripts.train import _flag  # noqa: E402  (the boolean options as train.py reads them)

DTYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.int32: "i32", torch.int64: "i64", torch.uint8: "u8"}


def example_call(fields, half: bool):
    """The kernel's arguments and constants for one ray of these fields (head, torso or None, FieldConfig; the values
    do not matter here)."""
    from nerf import fused_march

    head, torso, cfg = fields
    R = 1
    v3 = torch.ones(R, 3)
    one, yes = torch.ones(R), torch.ones(R, dtype=torch.bool)
    g = {"o_h": v3, "d_h": v3, "center": v3, "radius": one, "near_h": one, "far_h": one, "hit_h": yes,
         "dirs": v3, "lo": v3, "hi": v3, "near_t": one, "far_t": one, "hit_t": yes}
    c = {"unit_h": v3, "unit": v3, "z_shape": torch.ones(R, cfg.shape_dim), "z_app": torch.ones(R, cfg.app_dim),
         "drive": torch.ones(R, cfg.drive_dim), "et": torch.ones(R, 6)}
    occ = torch.ones(1, 4, 4, 4, dtype=torch.bool)
    with torch.no_grad():
        _, call, consts = fused_march.launch_args(head, torso, g, c, one, one, torch.ones(R, dtype=torch.long),
                                                  one, torch.zeros(R, dtype=torch.long), occ, occ, 20.0, 0.7, half)
    return call, consts


def build(args, fields, half: bool, block: int, warps: int) -> dict:
    """Compile for sm_<arch> and ask ptxas about the result."""
    import triton
    from triton.backends.compiler import BaseBackend, GPUTarget
    from triton.backends.nvidia.compiler import get_ptxas
    from triton.compiler import ASTSource

    from nerf import fused_march

    kernel = fused_march._kernel()
    call, consts = example_call(fields, half)
    consts.update(BLOCK_R=block, PRECISION="tf32")
    names = kernel.arg_names
    signature, attrs = {}, {}
    for i, (name, value) in enumerate(zip(names, call)):
        if torch.is_tensor(value):
            signature[name] = "*" + DTYPES[value.dtype]
            attrs[(i,)] = BaseBackend.parse_attr("D")  # (torch's allocations are 16-byte aligned, as the JIT sees)
        else:
            signature[name] = "fp32" if isinstance(value, float) else "i32"
    for name in names[len(call):]:
        signature[name] = "constexpr"
    t = time.perf_counter()
    compiled = triton.compile(ASTSource(kernel, signature, consts, attrs), target=GPUTarget("cuda", args.arch, 32),
                              options={"num_warps": warps})
    seconds = time.perf_counter() - t
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "k.ptx"
        src.write_text(compiled.asm["ptx"])
        arch = f"sm_{args.arch}a" if args.arch == 90 else f"sm_{args.arch}"
        log = subprocess.run([get_ptxas(args.arch).path, "-v", f"--gpu-name={arch}", str(src), "-o",
                              str(Path(tmp) / "k.cubin")], capture_output=True, text=True, check=True).stderr
    num = lambda pattern: int(m.group(1)) if (m := re.search(pattern, log)) else None  # noqa: E731
    return {"precision": "float16" if half else "float32", "block": block, "warps": warps,
            "registers": num(r"Used (\d+) registers"), "spill_stores": num(r"(\d+) bytes spill stores"),
            "spill_loads": num(r"(\d+) bytes spill loads"), "stack": num(r"(\d+) bytes stack frame"),
            "shared": compiled.metadata.shared, "build_s": round(seconds, 1), "ptx_kb": len(compiled.asm["ptx"]) // 1024}


def main(argv=None) -> int:
    root = Path(__file__).resolve().parents[1]
    p = configargparse.ArgumentParser(description=__doc__, formatter_class=configargparse.RawDescriptionHelpFormatter,
                                      ignore_unknown_config_file_keys=True,
                                      default_config_files=[str(root / "configs" / "gpu_full.txt")])
    p.add_argument("--config", is_config_file=True,
                   help="a training config (its model sizes are read, other keys ignored); default configs/gpu_full.txt")
    p.add_argument("--hidden", type=int, default=64, help="MLP width (16, 32, 64 or 128)")
    p.add_argument("--n_levels", type=int, default=16, help="hash-grid levels")
    p.add_argument("--log2_hashmap_size", type=int, default=19, help="log2 of each level's table rows")
    p.add_argument("--base_resolution", type=int, default=16)
    p.add_argument("--finest_resolution", type=int, default=2048)
    p.add_argument("--hash_half", type=_flag, default=False, help="float16 hash tables (true or false)")
    p.add_argument("--torso", choices=("volume", "none"), default="volume",
                   help="build with the volume torso field (volume) or the head alone (none: a layer-torso model)")
    p.add_argument("--arch", type=int, default=90, help="compute capability x 10 (90: H100, 80: A100)")
    p.add_argument("--variants", default="64x4,64x8,32x4",
                   help="BLOCKxWARPS shapes to build (rays per program x warps); the renderer uses "
                        "fused_march.BLOCK x fused_march.NUM_WARPS")
    p.add_argument("--precision", choices=("float32", "float16", "both"), default="both",
                   help="the kernel for float32 layers, for --amp's float16 layers, or both")
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = p.parse_args(argv)
    from nerf import fused_march

    try:
        variants = fused_march.parse_shapes(args.variants)
    except ValueError as err:
        raise SystemExit(f"error: --variants: {err}") from None
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise SystemExit("error: TRITON_INTERPRET is set: the interpreter builds nothing; unset it")
    # a fresh cache: every build is timed from scratch, as on a machine's first render
    cache = tempfile.TemporaryDirectory(prefix="kernel_report_")
    os.environ["TRITON_CACHE_DIR"] = cache.name
    try:
        import triton  # noqa: F401
    except ImportError:
        raise SystemExit("error: the triton package is not installed (make install brings it)") from None
    fields = example_fields(args)  # (made once: their hash tables are large)
    ok, why = fused_march.supports(*fields[:2])
    if not ok:
        raise SystemExit(f"error: the kernel does not take this model: {why}")
    halves = {"float32": [False], "float16": [True], "both": [False, True]}[args.precision]
    rows = []
    print(f"fused marching kernel for sm_{args.arch}: hidden {args.hidden}, {args.n_levels} levels x 2^"
          f"{args.log2_hashmap_size} rows, torso {args.torso}; renderer's shape {fused_march.BLOCK}x"
          f"{fused_march.NUM_WARPS}", flush=True)
    print("| precision | BLOCK x warps | registers | spill stores / loads (bytes) | stack (bytes) | shared (bytes) "
          "| build (s) | PTX (KB) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |", flush=True)
    for half in halves:
        for block, warps in variants:
            try:
                r = build(args, fields, half, block, warps)
            except Exception as err:  # a compiler failure is the finding: say it in one line
                inner = err
                while inner.__cause__ is not None:  # Triton chains one error per call level: the innermost says why
                    inner = inner.__cause__
                why = [x.strip() for x in str(inner).splitlines() if x.strip()]
                raise SystemExit(f"error: the kernel failed to build for sm_{args.arch} ({type(inner).__name__}: "
                                 f"{why[-1] if why else ''})") from None
            rows.append(r)
            print(f"| {r['precision']} | {block} x {warps} | {r['registers']} | {r['spill_stores']} / "
                  f"{r['spill_loads']} | {r['stack']} | {r['shared']} | {r['build_s']} | {r['ptx_kb']} |", flush=True)
    cache.cleanup()
    if args.json:
        save_json(args.json, {"arch": args.arch, "rows": rows})
    return 0


def example_fields(args):
    """A head field (and a volume torso field) of the given sizes, and their FieldConfig (as train.py makes it)."""
    from nerf.fields import FieldConfig, HeadField, TorsoField
    from nerf.trainer import TrainConfig

    keys = ("hidden", "n_levels", "log2_hashmap_size", "base_resolution", "finest_resolution", "hash_half")
    cfg = TrainConfig(**{k: getattr(args, k) for k in keys}, hash_backend="torch").field_config(FieldConfig.expr_dim)
    return HeadField(cfg), (TorsoField(cfg) if args.torso == "volume" else None), cfg


if __name__ == "__main__":
    sys.exit(main())
