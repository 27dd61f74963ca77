"""`stresnet <verb>`: parses arguments and calls the library; errors become one line and exit 2."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable, Sequence

from .plan import PlanError


def _cmd_profile(args: argparse.Namespace) -> int:
    from .cost import format_table, profile
    from .resolve import model_from_name

    size = (3, args.input_size, args.input_size)
    results = {}
    for name in args.models:
        model = model_from_name(name, num_classes=args.num_classes, checkpoint=args.checkpoint)
        results[name] = profile(model, size)
    if args.json:
        out = {k: v.to_dict() for k, v in results.items()}
        print(json.dumps(out[args.models[0]] if len(out) == 1 else out))
    else:
        print(format_table(results))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import format_demo_table, run_demo

    result = run_demo(epochs=args.epochs, finetune_epochs=args.finetune_epochs, seed=args.seed, out=args.out,
                      progress=not args.quiet)
    print(format_demo_table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from .bench import bench_decompose, format_bench

    result = bench_decompose(checkpoint=args.checkpoint, repeats=args.repeats)
    print(json.dumps(result) if args.json else format_bench(result))
    return 0


def _cmd_plan(args: argparse.Namespace) -> int:
    from .zoo.family import family_plan

    plan = family_plan(args.variant, num_classes=args.num_classes)
    if args.out:
        plan.save(args.out)
    else:
        sys.stdout.write(plan.to_json())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stresnet", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("profile", help="params, MACs, int8 flash and peak RAM of models or plans")
    p.add_argument("models", nargs="+", help="timm name, stresnet_<variant> (pico..tiny), or a plan JSON")
    p.add_argument("--input-size", type=int, default=224)
    p.add_argument("--num-classes", type=int, default=None)
    p.add_argument("--checkpoint", default=None, help="safetensors weights to load (shapes are checked)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_cmd_profile)

    p = sub.add_parser("demo", help="offline main job: train on sklearn digits, compress 2x/4x/8x, evaluate")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--finetune-epochs", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="folder for the plans")
    p.add_argument("--json", default=None, help="write the results JSON here")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("bench", help="benchmarks (print ratios against a baseline run side by side)")
    bench = p.add_subparsers(dest="bench", required=True)
    b = bench.add_parser("decompose", help="Tucker-2 of resnet18's 3x3 convs vs tensorly.partial_tucker")
    b.add_argument("--checkpoint", type=Path, default=None)
    b.add_argument("--repeats", type=int, default=3)
    b.add_argument("--json", action="store_true")
    b.set_defaults(func=_cmd_bench)

    p = sub.add_parser("plan", help="write the plan of an STResNet MCU variant")
    p.add_argument("variant", help="pico, nano, micro, milli or tiny")
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--out", type=Path, default=None)
    p.set_defaults(func=_cmd_plan)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except PlanError as e:  # bad plan, rank, module, checkpoint: one line, no traceback
        print(f"stresnet: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("stresnet: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
