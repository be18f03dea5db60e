"""Training throughput of our RepViT vs timm's repvit_m0_9: same loop, batch, machine, one run.

Both models are trained (forward, cross-entropy, backward, AdamW step: the package's own training
step, ``repvit.train.OptimizerStep``) on the same random batch, interleaved round by round by the
package's timing harness so that machine drift favours neither; the script prints images/s for
each and the ratio ours / timm (goal: >= 1.0) for each setting: float32, channels-last, bf16
autocast, and both.

Usage:  .venv/bin/python benchmarks/train_throughput.py [--model repvit_m0_9] [--batch 32]
                                                        [--img-size 224] [--rounds 5] [--steps 3]
"""

import argparse
import statistics

import timm
import torch

import repvit
from repvit.tools import interleaved
from repvit.train import OptimizerStep
from repvit.train.step import autocast

CPU = torch.device("cpu")


def _step_fn(model, images, targets, channels_last, bf16):
    dtype = torch.bfloat16 if bf16 else None
    update = OptimizerStep(torch.optim.AdamW(model.parameters(), lr=1e-4), dtype, CPU)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)

    def step():
        with autocast(CPU, dtype):
            loss = torch.nn.functional.cross_entropy(model(images), targets)
        update(loss)

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="repvit_m0_9")
    for flag, default in (("--batch", 32), ("--img-size", 224), ("--rounds", 5)):
        parser.add_argument(flag, type=int, default=default)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per model per round")
    args = parser.parse_args()

    torch.manual_seed(0)
    images = torch.randn(args.batch, 3, args.img_size, args.img_size)
    targets = torch.randint(0, 1000, (args.batch,))
    print(f"{args.model}, batch {args.batch}, {args.img_size}x{args.img_size}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, timm {timm.__version__}; {args.rounds} interleaved rounds x {args.steps} steps")
    for channels_last, bf16 in ((False, False), (True, False), (False, True), (True, True)):
        steps = {
            "ours": _step_fn(repvit.create_model(args.model).train(), images, targets, channels_last, bf16),
            "timm": _step_fn(timm.create_model(args.model, distillation=False).train(), images, targets, channels_last, bf16),
        }
        times = interleaved(list(steps.items()), warmup=1, rounds=args.rounds, iters=args.steps)
        ips = {name: args.batch / statistics.median(t) for name, t in times.items()}
        label = " + ".join([s for s, on in (("channels-last", channels_last), ("bf16", bf16)) if on]) or "float32"
        print(f"  {label:22s} ours {ips['ours']:6.1f} img/s   timm {ips['timm']:6.1f} img/s   "
              f"ratio ours/timm {ips['ours'] / ips['timm']:.3f}")


if __name__ == "__main__":
    main()
