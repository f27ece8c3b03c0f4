"""End to end on a GPU: train a causal transformer LM for about a minute under ``bf16-mixed``, let
``SketchTuneCallback`` replace its linear layers (monitor ``val_loss``), and report what that bought.

    PANTHER_CUDA_KERNELS=1 python bench/gpu_e2e.py --json e2e.json    # d_model 1024, 6 layers, ~1 min training
    python bench/gpu_e2e.py --device cpu --dry-run --json /tmp/e2e.json  # every step at toy size, seconds

The data are sequences of a sparse random Markov chain (each token has a few likely successors), so the
trained weights carry the structure training gives (random weights have none) and the best possible
validation loss is known: the chain's entropy rate, reported as ``val_loss_floor``.

Reported (JSON, rewritten after each stage so an interrupted run keeps what it had): dense and tuned
validation loss (the callback's and an independent re-evaluation), the tuned model's inference and
training-step (forward, backward, optimizer step) speed-ups over the dense model under the same bf16
autocast, with the fused kernels on and off (CUDA events; best of interleaved rounds), which path the
dispatch rule picks for each sketched layer, and the wall time of training and of tuning.

Kernels "off" replaces the op's extension lookup by ``None`` for the measurement, so both settings run in
one process on the same tuned model; "on" needs ``PANTHER_CUDA_KERNELS=1`` (else both are the PyTorch path,
and ``kernels_available`` says so).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from cpu_standin import H200_SM_COUNT, StandInExtension
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from panther.nn import SKLinear, replace_module
from panther.ops import _custom_ops, _dispatch
from panther.ops._cuda_ext import cuda_extension
from panther_lightning import SketchTuneCallback

#: Successor probabilities of every token of the chain (sorted, so the entropy is easy to read).
SUCCESSOR_PROBS = (0.55, 0.25, 0.12, 0.08)


# -- data -------------------------------------------------------------------------------------------
def markov_successors(vocab: int, seed: int) -> torch.Tensor:
    """``(vocab, len(SUCCESSOR_PROBS))`` successor table: each token's likely next tokens, distinct."""
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randperm(vocab, generator=g)[:len(SUCCESSOR_PROBS)] for _ in range(vocab)])


def entropy_rate() -> float:
    """Nats per token of the chain: the lowest validation loss any model can reach."""
    return -sum(p * math.log(p) for p in SUCCESSOR_PROBS)


def sample_sequences(successors: torch.Tensor, count: int, length: int, seed: int) -> torch.Tensor:
    """``(count, length + 1)`` token sequences walked on the chain from uniform random starts."""
    g = torch.Generator().manual_seed(seed)
    probs = torch.tensor(SUCCESSOR_PROBS)
    choices = torch.multinomial(probs, count * length, replacement=True, generator=g).view(count, length)
    tokens = torch.empty(count, length + 1, dtype=torch.long)
    tokens[:, 0] = torch.randint(successors.shape[0], (count,), generator=g)
    for t in range(length):
        tokens[:, t + 1] = successors[tokens[:, t], choices[:, t]]
    return tokens


# -- model ------------------------------------------------------------------------------------------
class Block(nn.Module):
    """Pre-norm causal self-attention and MLP, every projection an ``nn.Linear`` (what the tuner sketches)."""

    def __init__(self, d_model: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.fc1 = nn.Linear(d_model, 4 * d_model)
        self.fc2 = nn.Linear(4 * d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(attended.transpose(1, 2).reshape(b, t, d))
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


class CausalLM(pl.LightningModule):
    """A small GPT-style language model: token + position embeddings, pre-norm blocks, linear head."""

    def __init__(self, vocab: int, d_model: int, layers: int, heads: int, seq_len: int, lr: float,
                 warmup_steps: int) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.embed = nn.Embedding(vocab, d_model)
        self.pos = nn.Parameter(torch.randn(seq_len, d_model) * 0.02)
        self.blocks = nn.ModuleList(Block(d_model, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens) + self.pos[: tokens.shape[1]]
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))

    def loss(self, batch: list[torch.Tensor]) -> torch.Tensor:
        (seq,) = batch
        logits = self(seq[:, :-1])
        return F.cross_entropy(logits.float().flatten(0, 1), seq[:, 1:].flatten())

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.loss(batch)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: list[torch.Tensor], batch_idx: int) -> None:
        self.log("val_loss", self.loss(batch), prog_bar=True)

    def configure_optimizers(self) -> Any:
        opt = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=0.01)
        warmup = max(1, self.hparams.warmup_steps)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(1.0, (step + 1) / warmup))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class DenseSnapshot(Callback):
    """Keeps the trained dense weights and times training; listed before the tuning callback.

    Its ``on_train_end`` runs first, so the snapshot is the dense model the tuner starts from and the
    time after it is the tuning's.
    """

    def __init__(self) -> None:
        self.state: dict[str, torch.Tensor] = {}
        self.train_start = self.train_end = 0.0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.train_start = time.perf_counter()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.state = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}
        self.train_end = time.perf_counter()


# -- measurements -----------------------------------------------------------------------------------
@contextlib.contextmanager
def kernels(enabled: bool) -> Iterator[bool]:
    """Run the CUDA ops with the fused kernels (if built) or without; yields whether they are in use."""
    real = _custom_ops.cuda_extension
    if not enabled:
        _custom_ops.cuda_extension = lambda: None  # type: ignore[assignment]
    try:
        yield enabled and real() is not None
    finally:
        _custom_ops.cuda_extension = real  # type: ignore[assignment]


def timed_ms(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int = 3) -> float:
    """Median milliseconds of ``fn`` (CUDA events on a GPU, ``perf_counter`` on the CPU)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision.startswith("bf16"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def inference_step(model: nn.Module, tokens: torch.Tensor, device: torch.device, precision: str
                   ) -> Callable[[], object]:
    def step() -> object:
        with torch.no_grad(), autocast(device, precision):
            return model(tokens)
    return step


def train_step(model: CausalLM, seq: torch.Tensor, device: torch.device, precision: str) -> Callable[[], object]:
    """Forward, backward and an AdamW step (lr 0: the full cost, weights unchanged)."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.0, weight_decay=0.0)

    def step() -> object:
        opt.zero_grad(set_to_none=True)
        with autocast(device, precision):
            loss = model.loss([seq])
        loss.backward()
        opt.step()
        return loss
    return step


@torch.no_grad()
def validation_loss(model: CausalLM, loader: DataLoader, device: torch.device, precision: str) -> float:
    """Mean cross-entropy over ``loader`` (batches weighted equally, as Lightning's epoch mean)."""
    model.eval()
    losses = []
    for (seq,) in loader:
        with autocast(device, precision):
            losses.append(model.loss([seq.to(device)]).item())
    return statistics.fmean(losses)


def speed(dense: CausalLM, tuned: CausalLM, seq: torch.Tensor, device: torch.device, precision: str,
          repeats: int, rounds: int) -> dict[str, Any]:
    """Best-of-rounds median times (ms) of dense and tuned, kernels off/on, and the speed-ups over dense."""
    ms: dict[str, float] = {}
    used = False
    cases = {"inference": lambda m: inference_step(m, seq[:, :-1], device, precision),
             "train": lambda m: train_step(m, seq, device, precision)}
    for mode, make in cases.items():
        for model in (dense, tuned):
            model.train(mode == "train")  # a sketch may cache its packed factors in eval mode only
        steps = {"dense": make(dense), "tuned": make(tuned)}
        variants = [("dense", False), ("tuned_kernels_off", False), ("tuned_kernels_on", True)]
        for round_ in range(rounds):  # the order flips every round, so no variant always runs first
            for name, enabled in variants if round_ % 2 == 0 else variants[::-1]:
                with kernels(enabled) as in_use:
                    used |= in_use
                    t = timed_ms(steps[name.split("_")[0]], device, repeats)
                key = f"{mode}_{name}_ms"
                ms[key] = min(ms.get(key, math.inf), t)
    speedups = {f"{mode}_speedup_kernels_{k}": ms[f"{mode}_dense_ms"] / ms[f"{mode}_tuned_kernels_{k}_ms"]
                for mode in cases for k in ("off", "on")}
    return {"ms": ms, **speedups, "kernels_available": used, "tokens_per_step": seq.shape[0] * (seq.shape[1] - 1)}


def dispatch_table(model: nn.Module, rows: int, ext: Any, sm_count: int) -> list[dict[str, Any]]:
    """Each sketched layer's shape and the forward path the rule picks for ``rows`` input rows.

    ``ext`` is the kernels' extension (``None``: not built, no path is named), ``sm_count`` the device's.
    """
    table = []
    for name, module in model.named_modules():
        if isinstance(module, SKLinear):
            rank2 = 2 * module.num_terms * module.low_rank
            picks = None
            if ext is not None:
                probe = module.S1s.new_empty(1, module.in_features, dtype=torch.bfloat16)  # the autocast dtype
                max_rank, per_block = ext.fused_forward_limits(probe)
                fused = _dispatch.use_fused_forward(rows, rank2, max_rank, per_block, sm_count)
                picks = "fused" if fused else "two_gemm"
            table.append({"layer": name, "in": module.in_features, "out": module.out_features,
                          "terms": module.num_terms, "k": module.low_rank, "forward_path": picks})
    return table


def sketch_every_linear(model: nn.Module, rank: int) -> None:
    """Replace each ``nn.Linear`` by its rank-``rank`` SVD sketch (the dry-run's stand-in for a kept plan)."""
    for name, module in list(model.named_modules()):
        if type(module) is nn.Linear:
            replace_module(model, name, SKLinear.from_dense(module, num_terms=1, low_rank=rank))


# -- the run ----------------------------------------------------------------------------------------
def write_json(path: str | None, data: dict[str, Any]) -> None:
    """Replace ``path`` atomically, so a run killed mid-write leaves the previous stage's file."""
    if path:
        tmp = f"{path}.tmp"
        with open(tmp, "w") as fh:
            json.dump(data, fh, indent=1, default=str)
        os.replace(tmp, path)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--dry-run", action="store_true", help="toy sizes and budgets (seconds), for CI on the CPU")
    p.add_argument("--precision", default="bf16-mixed")
    p.add_argument("--vocab", type=int, default=512)
    p.add_argument("--d-model", type=int, default=1024)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=32, help="sequences per batch (rows = batch x seq-len)")
    p.add_argument("--train-batches", type=int, default=200, help="batches per training epoch")
    p.add_argument("--val-batches", type=int, default=8)
    p.add_argument("--train-seconds", type=float, default=60.0, help="training wall time (Trainer max_time)")
    p.add_argument("--max-steps", type=int, default=-1)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--warmup-steps", type=int, default=100)
    p.add_argument("--max-drop", type=float, default=0.05, help="allowed val_loss increase (nats) over dense")
    p.add_argument("--objective", choices=["speed", "size"], default="speed")
    p.add_argument("--strategy", choices=["auto", "allocate", "search"], default="auto")
    p.add_argument("--ranks", type=int, nargs="+", default=None,
                   help='sketch ranks to choose from (num_terms 1, no int8); default: the tuner\'s params="auto"')
    p.add_argument("--calibration-batches", type=int, default=4)
    p.add_argument("--tune-budget-s", type=float, default=120.0, help="callback time_budget_s")
    p.add_argument("--timing-repeats", type=int, default=20)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-dir", default=None, help="Lightning logs and the sketch plan (default: a temp folder)")
    p.add_argument("--json", default=None, help="write the report here (rewritten after each stage)")
    args = p.parse_args(argv)
    if args.dry_run:
        args.vocab, args.d_model, args.layers, args.heads, args.seq_len, args.batch_size = 32, 128, 2, 4, 16, 8
        args.train_batches, args.val_batches, args.train_seconds, args.max_steps = 8, 2, None, 16
        args.warmup_steps, args.lr, args.calibration_batches = 2, 3e-3, 1
        # The GPU run's objective and strategy; ranks because params="auto" proposes int8 layers on the CPU only.
        args.max_drop, args.tune_budget_s, args.ranks = 100.0, 20.0, [4, 8]
        args.timing_repeats, args.rounds = 2, 2
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_e2e.py: --device cuda needs a CUDA device (use --device cpu --dry-run here)")
        return 2
    torch.set_float32_matmul_precision("high")
    pl.seed_everything(args.seed, verbose=False)
    log_dir = args.log_dir or os.path.join(os.environ.get("TMPDIR", "/tmp"), f"panther_e2e_{os.getpid()}")
    report: dict[str, Any] = {"args": vars(args), "device": torch.cuda.get_device_name(device)
                              if device.type == "cuda" else "cpu", "torch": torch.__version__,
                              "val_loss_floor": entropy_rate(), "stage": "data"}
    write_json(args.json, report)

    successors = markov_successors(args.vocab, args.seed)
    train = sample_sequences(successors, args.train_batches * args.batch_size, args.seq_len, args.seed + 1)
    val = sample_sequences(successors, args.val_batches * args.batch_size, args.seq_len, args.seed + 2)
    pin = device.type == "cuda"
    train_loader = DataLoader(TensorDataset(train), batch_size=args.batch_size, shuffle=True, pin_memory=pin)
    val_loader = DataLoader(TensorDataset(val), batch_size=args.batch_size, pin_memory=pin)

    model = CausalLM(args.vocab, args.d_model, args.layers, args.heads, args.seq_len, args.lr, args.warmup_steps)
    snapshot = DenseSnapshot()
    params = "auto" if args.ranks is None else {"num_terms": [1], "low_rank": args.ranks}
    tune = SketchTuneCallback(configs=[{"layer_names": {"type": ["Linear"]}, "params": params, "separate": True}],
                              monitor="val_loss", mode="min", max_drop=args.max_drop, objective=args.objective,
                              strategy=args.strategy, calibration_batches=args.calibration_batches,
                              time_budget_s=args.tune_budget_s, seed=args.seed)
    trainer = pl.Trainer(accelerator="gpu" if device.type == "cuda" else "cpu", devices=1,
                         precision=args.precision, max_epochs=-1, max_steps=args.max_steps,
                         max_time={"seconds": args.train_seconds} if args.train_seconds else None,
                         logger=CSVLogger(log_dir, name="gpu_e2e"), callbacks=[snapshot, tune],
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=1)
    report["stage"] = "fit"
    write_json(args.json, report)
    trainer.fit(model, train_loader, val_loader)
    fit_end = time.perf_counter()
    tuned = model.to(device)
    dense = CausalLM(**model.hparams).to(device)
    dense.load_state_dict(snapshot.state)
    fixed = args.dry_run and not any(isinstance(m, SKLinear) for m in tuned.modules())
    if fixed:  # toy sketches are rarely faster on a CPU: later steps still need sketched layers to run on
        sketch_every_linear(tuned, args.ranks[0])

    report.update(stage="tuned", train_s=snapshot.train_end - snapshot.train_start,
                  train_steps=trainer.global_step, tune_wall_s=fit_end - snapshot.train_end,
                  tune_failure=tune.failure, best_params=tune.best_params, dry_run_fixed_sketch=fixed,
                  callback_report=tune.report.table() if tune.report else None,
                  callback_dense_val_loss=tune.report.dense_metric if tune.report else None,
                  callback_tuned_val_loss=tune.report.tuned_metric if tune.report else None,
                  callback_bound=tune.report.threshold_metric if tune.report else None,
                  callback_speedup=tune.report.speedup if tune.report else None)
    write_json(args.json, report)

    if device.type == "cuda":
        ext, sm_count = cuda_extension(), _dispatch.multiprocessor_count(device)
    else:  # the dry-run: the extension and the device stood in for
        ext, sm_count = StandInExtension, H200_SM_COUNT
    report.update(stage="evaluated", dense_val_loss=validation_loss(dense, val_loader, device, args.precision),
                  tuned_val_loss=validation_loss(tuned, val_loader, device, args.precision),
                  dense_params=sum(p.numel() for p in dense.parameters()),
                  tuned_params=sum(p.numel() for p in tuned.parameters()),
                  sketched_layers=dispatch_table(tuned, args.batch_size * args.seq_len, ext, sm_count))
    write_json(args.json, report)

    seq = val[: args.batch_size].to(device)
    report.update(stage="done", speed=speed(dense, tuned, seq, device, args.precision, args.timing_repeats,
                                            args.rounds))
    write_json(args.json, report)
    summary = {k: report[k] for k in ("dense_val_loss", "tuned_val_loss", "val_loss_floor", "train_s",
                                      "train_steps", "tune_wall_s")}
    print(json.dumps({**summary, **{k: v for k, v in report["speed"].items() if k != "ms"}}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
