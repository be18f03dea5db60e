"""Training throughput of our RepViT vs timm's repvit_m0_9: same loop, batch, machine, one run.

Both models are trained (forward, cross-entropy, backward, AdamW step) on the same random batch,
interleaved round by round so that machine drift favours neither; the script prints images/s for
each and the ratio ours / timm (goal: >= 1.0) for each setting: float32, channels-last, bf16
autocast, and both.

Usage:  .venv/bin/python benchmarks/train_throughput.py [--model repvit_m0_9] [--batch 32]
                                                        [--img-size 224] [--rounds 5] [--steps 3]
"""

import argparse
import contextlib
import statistics
import time

import timm
import torch

import repvit


def _step_fn(model, images, targets, channels_last, bf16):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext

    def step():
        with autocast():
            loss = torch.nn.functional.cross_entropy(model(images), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="repvit_m0_9")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=5)
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
        times = {name: [] for name in steps}
        for fn in steps.values():  # warm-up
            fn()
        for r in range(args.rounds):
            for name in (list(steps) if r % 2 == 0 else list(steps)[::-1]):
                for _ in range(args.steps):
                    start = time.perf_counter()
                    steps[name]()
                    times[name].append(time.perf_counter() - start)
        ips = {name: args.batch / statistics.median(t) for name, t in times.items()}
        label = " + ".join([s for s, on in (("channels-last", channels_last), ("bf16", bf16)) if on]) or "float32"
        print(f"  {label:22s} ours {ips['ours']:6.1f} img/s   timm {ips['timm']:6.1f} img/s   "
              f"ratio ours/timm {ips['ours'] / ips['timm']:.3f}")


if __name__ == "__main__":
    main()
