"""Everything a bare GPU host needs, in one run of at most ``--budget`` seconds (default 480):
install, a real-layout smoke run, and the LLaSO-Base-dimension benchmark, writing one JSON
line per stage as it goes (to stdout and ``--out``).

1. ``install``: the packages the host lacks (deepspeed, soundfile, soxr, hjson, accelerate,
   ...) and this project's transformers, from the wheelhouse that ``bench/build_wheelhouse.sh``
   writes (``gpu_bundle/wheels``), with ``pip install --no-index --no-deps --target
   .gpu_check/site``; that folder goes first on ``PYTHONPATH`` of every later stage. Skipped
   (and said so) when the wheelhouse is absent and everything already imports.
2. ``smoke``: tiny checkpoints of the real layouts (``llaso_synth.checkpoints``: fp16
   Whisper with 128 mel bins, bf16 Llama-3.2-style LM, Llama-3-style tokenizer) trained
   through ``llaso_base_align.yaml`` then ``llaso_base_instruct.yaml`` on 1 rank in bf16
   (fp32 with ``--cpu``) on the shipped demo shards (``gpu_bundle/shards``), with dynamic
   batches and gradient accumulation; the instruct run stops at a checkpoint and a second
   launch resumes it to the end; then the export is loaded by ``llaso_eval generate``.
3. ``bench``: ``bench/train_gpu.py`` (LLaSO-Base dimensions, random weights; the Base
   instruct workload: stack 1, batch 1, 4 workers, gradient accumulation) for sdpa and
   eager attention, gradient checkpointing on and off, in that order of priority, each in its
   own process; a configuration that no longer fits the budget is reported as skipped.

``--cpu`` runs the same stages CI-sized (tiny preset, a few steps, gloo). Exit status 0 when
every stage that ran passed.

    python bench/gpu_check.py --out runs/gpu_check.jsonl            # on the GPU host
    DS_ACCELERATOR=cpu python bench/gpu_check.py --cpu               # anywhere
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NEEDED = ("deepspeed", "soundfile", "soxr", "hjson", "accelerate", "yaml", "safetensors", "transformers")


class Check:
    def __init__(self, args: argparse.Namespace):
        self.args, self.started, self.failed = args, time.monotonic(), False
        self.out = Path(args.out)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.out.write_text("")
        self.work = Path(args.work)
        self.work.mkdir(parents=True, exist_ok=True)
        site = self.work / "site"
        self.env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), str(REPO)]), OMP_NUM_THREADS="1")
        if args.cpu:
            self.env["DS_ACCELERATOR"] = "cpu"
            self.env["CUDA_VISIBLE_DEVICES"] = ""

    def left(self) -> float:
        return self.args.budget - (time.monotonic() - self.started)

    def emit(self, stage: str, **fields) -> dict:
        row = {"stage": stage, "t": round(time.monotonic() - self.started, 1), **fields}
        if fields.get("ok") is False:
            self.failed = True
        line = json.dumps(row)
        print(line, flush=True)
        with open(self.out, "a") as handle:
            handle.write(line + "\n")
        return row

    def run(self, command: list[str], timeout: float) -> subprocess.CompletedProcess:
        try:
            return subprocess.run(command, cwd=REPO, env=self.env, capture_output=True, text=True,
                                  timeout=max(1.0, timeout))
        except subprocess.TimeoutExpired as error:
            return subprocess.CompletedProcess(command, 124, error.stdout or "", f"timed out after {timeout:.0f} s")


def stage_environment(check: Check) -> None:
    probe = ("import json, sys, torch, transformers; print(json.dumps({'python': sys.version.split()[0], "
             "'torch': torch.__version__, 'cuda': torch.version.cuda, 'transformers': transformers.__version__, "
             "'gpu': torch.cuda.get_device_name() if torch.cuda.is_available() else None}))")
    result = check.run([sys.executable, "-c", probe], 120)
    fields = json.loads(result.stdout) if result.returncode == 0 else {"error": result.stderr[-1000:]}
    check.emit("environment", ok=result.returncode == 0, **fields)


def stage_install(check: Check) -> None:
    wheels = Path(check.args.wheelhouse)
    started = time.monotonic()
    found = sorted(wheels.glob("*.whl")) if wheels.is_dir() else []
    if not found:
        missing = [m for m in NEEDED if importlib.util.find_spec(m) is None]
        check.emit("install", ok=not missing, skipped=f"no wheels in {wheels}", missing=missing)
        return
    result = check.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps",
                        "--upgrade", "--target", str(check.work / "site"), *map(str, found)], check.left())
    check.emit("install", ok=result.returncode == 0, wheels=len(found),
               seconds=round(time.monotonic() - started, 1), error=result.stderr[-1500:] or None)


def _torchrun(*arguments: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "1", *arguments]


def stage_smoke(check: Check) -> None:
    args, work = check.args, check.work / "smoke"
    started = time.monotonic()
    checkpoints = work / "checkpoints"
    made = check.run([sys.executable, "-c", "import sys; from pathlib import Path; "
                      "from llaso_synth.checkpoints import write_checkpoints; write_checkpoints(Path(sys.argv[1]))",
                      str(checkpoints)], check.left())
    if made.returncode:
        check.emit("smoke", ok=False, step="checkpoints", error=made.stderr[-2000:])
        return
    common = [f"data.shards={args.shards}", f"model.encoder={checkpoints / 'encoder'}", f"model.lm={checkpoints / 'lm'}",
              f"model.tokenizer={checkpoints / 'lm'}", "data.batch_size=null", "data.max_tokens=3000",
              "data.chars_per_token=2", "gradient_accumulation=2", "epochs=50", "data.num_workers=2",
              f"bf16={'false' if args.cpu else 'true'}"]
    config = lambda name: ["-m", "llaso_train", "--config", str(REPO / "llaso_train" / "configs" / name)]  # noqa: E731
    steps = [
        ("align", config("llaso_base_align.yaml") + [f"output_dir={work / 'align'}", "max_steps=2", "save_every=0", *common]),
        ("instruct", config("llaso_base_instruct.yaml") + [f"output_dir={work / 'instruct'}", "max_steps=2", "save_every=2",
                                                           f"init_projector={work / 'align' / 'export' / 'projector.safetensors'}", *common]),
        ("resume", config("llaso_base_instruct.yaml") + [f"output_dir={work / 'instruct'}", "max_steps=4", "save_every=2",
                                                         f"init_projector={work / 'align' / 'export' / 'projector.safetensors'}", *common]),
        ("generate", ["-m", "llaso_eval", "generate", "--model", str(work / "instruct" / "export"), "--shards", str(args.shards),
                      "--out", str(work / "predictions"), "--max-new-tokens", "8", "--batch-size", "8",
                      "--zero-stage", "0"]),
    ]
    for name, arguments in steps:
        result = check.run(_torchrun(*arguments), check.left())
        if result.returncode:
            check.emit("smoke", ok=False, step=name, error=(result.stdout + result.stderr)[-3000:])
            return
        if name == "resume" and "resumed at step 2" not in result.stdout:
            check.emit("smoke", ok=False, step=name, error="the second launch did not resume at step 2")
            return
    metrics = [json.loads(line) for line in (work / "instruct" / "metrics.jsonl").read_text().splitlines()]
    summary = json.loads((work / "predictions" / "generation.json").read_text())
    ok = [row["step"] for row in metrics][-4:] == [1, 2, 3, 4] and summary["missing"] == []
    check.emit("smoke", ok=ok, seconds=round(time.monotonic() - started, 1),
               instruct_losses=[row["loss"] for row in metrics], predicted=summary["predicted"],
               samples=summary["samples"])


def stage_bench(check: Check) -> None:
    args = check.args
    if args.cpu:
        sizing = ["--preset", "tiny", "--grad-accum", "2", "--warmup", "1", "--steps", "1", "--num-workers", "1"]
    else:
        sizing = ["--preset", "base", "--grad-accum", str(args.grad_accum), "--warmup", "1", "--steps", "2",
                  "--num-workers", "4"]
    estimate = None
    for attention, checkpointing in (("sdpa", True), ("sdpa", False), ("eager", True), ("eager", False)):
        name = f"{attention}, gradient checkpointing {'on' if checkpointing else 'off'}"
        if estimate is not None and check.left() < 1.2 * estimate:
            check.emit("bench", ok=None, config=name, skipped=f"{check.left():.0f} s left, a run took {estimate:.0f} s")
            continue
        started = time.monotonic()
        command = [sys.executable, str(REPO / "bench" / "train_gpu.py"), "--json", "--shards", str(args.shards),
                   "--attn", attention, "--grad-ckpt" if checkpointing else "--no-grad-ckpt", *sizing]
        result = check.run(command, check.left())
        estimate = time.monotonic() - started
        if result.returncode:
            check.emit("bench", ok=False, config=name, error=result.stderr[-2000:])
            continue
        figures = json.loads(result.stdout)
        keep = ("device_name", "attn_implementation", "grad_ckpt", "grad_accum", "bf16", "tokens_per_s",
                "samples_per_s", "step_time_s", "data_wait_fraction", "mfu", "mfu_with_attention", "peak_tflops",
                "peak_memory_gb", "peak_reserved_gb", "step", "params", "loss_last")
        check.emit("bench", ok=True, config=name, seconds=round(estimate, 1), **{k: figures.get(k) for k in keep})


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu", action="store_true", help="CI-sized run on the CPU (gloo, tiny benchmark)")
    parser.add_argument("--wheelhouse", default=str(REPO / "gpu_bundle" / "wheels"))
    parser.add_argument("--shards", default=str(REPO / "gpu_bundle" / "shards"))
    parser.add_argument("--out", default=str(REPO / "runs" / "gpu_check" / "gpu_check.jsonl"))
    parser.add_argument("--work", default=str(REPO / ".gpu_check"), help="scratch folder (installed packages, runs)")
    parser.add_argument("--budget", type=float, default=480.0, help="seconds for the whole check (default 480)")
    parser.add_argument("--grad-accum", type=int, default=8, help="micro-batches per benchmark step on the GPU")
    args = parser.parse_args(argv)
    if not (Path(args.shards) / "manifest.parquet").exists():
        parser.error(f"{args.shards}: no shards (bench/build_wheelhouse.sh writes gpu_bundle/shards)")
    check = Check(args)
    for stage in (stage_environment, stage_install, stage_smoke, stage_bench):
        if check.left() <= 5:
            check.emit(stage.__name__.removeprefix("stage_"), ok=None, skipped="budget spent")
            continue
        stage(check)
    check.emit("done", ok=not check.failed, seconds=round(time.monotonic() - check.started, 1))
    return 1 if check.failed else 0


if __name__ == "__main__":
    sys.exit(main())
