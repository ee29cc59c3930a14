"""The ``mtcore`` command line."""

from __future__ import annotations

import argparse
import json
import sys

from mtcore.errors import BackendUnavailable, MTCoreError


def cmd_info(args: argparse.Namespace) -> int:
    from mtcore.devices import info

    data = info()
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    print(f"python {data['python']} on {data['platform']} ({data['cpu_count']} CPUs)")
    for name, fw in data["frameworks"].items():
        if not fw["available"]:
            print(f"{name}: not available: {fw['reason']}")
            continue
        versions = ", ".join(f"{k} {v}" for k, v in fw["versions"].items())
        print(f"{name}: {versions}")
        for d in fw["devices"]:
            print(f"  {d}")
    print(f"transformers: {data['transformers'] or 'not installed'}")
    return 0


def cmd_params(args: argparse.Namespace) -> int:
    from mtcore.config import ModelConfig

    cfg = ModelConfig.from_hf(args.model) if "/" in args.model else ModelConfig.preset(args.model)
    print(f"{args.model}: {cfg.num_params():,} trainable parameters")
    print(json.dumps(cfg.__dict__, indent=2))
    return 0


def _run_config(args: argparse.Namespace, framework: str):
    from mtcore.run import RunConfig

    return RunConfig(
        framework=framework, device=args.device, model=args.model, data=args.data, source_lang=args.source_lang,
        target_lang=args.target_lang, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        warmup_steps=args.warmup_steps, precision=args.precision, seed=args.seed, dropout=args.dropout,
        max_len=args.max_len, validation=args.validation, test=args.test, eval_sentences=args.eval_sentences,
        synthetic_size=args.synthetic_size, vocab_size=args.vocab_size, on_error="skip" if args.skip_bad_lines else "raise",
    )


def _summary(metrics: dict) -> str:
    last = metrics["epochs"][-1]
    test = metrics.get("test") or {}

    def score(x):
        return "-" if x is None else f"{x:.1f}"

    return (f"{metrics['run']['framework']}: {len(metrics['epochs'])} epochs, last epoch {last['training_time']:.1f} s "
            f"({last['tokens_per_sec']:,.0f} tokens/s), train loss {last['train_loss']:.3f}, validation loss "
            f"{last['validation_loss']:.3f}, BLEU {score(last['bleu'])}, "
            f"test BLEU {score(test.get('test_bleu'))}, test chrF {score(test.get('test_chrf'))}")


def cmd_train(args: argparse.Namespace) -> int:
    from mtcore.run import train

    metrics = train(_run_config(args, args.framework), args.out, progress=not args.quiet, resume=args.resume)
    print(_summary(metrics))
    print(f"metrics: {args.out}/metrics.json; checkpoint: {args.out}/checkpoints")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from mtcore.run import compare

    frameworks = tuple(f.strip() for f in args.frameworks.split(",") if f.strip())
    report = compare(_run_config(args, frameworks[0]), args.out, frameworks=frameworks, progress=not args.quiet)
    print(report.read_text(encoding="utf-8").split("## Quality")[0].strip())
    print(f"\nreport: {report}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from mtcore.report import write_report

    print(f"report: {write_report(args.dir)}")
    return 0


def _add_run_options(p: argparse.ArgumentParser) -> None:
    from mtcore.run import RunConfig

    d = RunConfig()
    p.add_argument("--model", default=d.model, help="preset (tiny, small, base, marian-en-hu) or HF Marian checkpoint dir")
    p.add_argument("--data", default=d.data,
                   help="'synthetic', a prefix PATH with PATH.en and PATH.hu beside it, a .tsv file, a saved HF "
                        "dataset dir, or hf:NAME")
    p.add_argument("--source-lang", default=d.source_lang)
    p.add_argument("--target-lang", default=d.target_lang)
    p.add_argument("--device", default=d.device, choices=("cpu", "gpu", "tpu"))
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr, help="peak learning rate (linear warm-up, then 1/sqrt decay)")
    p.add_argument("--warmup-steps", type=int, default=d.warmup_steps)
    p.add_argument("--precision", default=d.precision, choices=("fp32", "bf16"))
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--dropout", type=float, default=None, help="override the model's dropout")
    p.add_argument("--max-len", type=int, default=d.max_len, help="longest sentence pair in tokens")
    p.add_argument("--validation", type=_count_or_fraction, default=d.validation, help="held-out pairs (count or fraction)")
    p.add_argument("--test", type=_count_or_fraction, default=d.test, help="test pairs (count or fraction)")
    p.add_argument("--eval-sentences", type=int, default=d.eval_sentences,
                   help="validation sentences translated for BLEU/chrF each epoch")
    p.add_argument("--synthetic-size", type=int, default=d.synthetic_size)
    p.add_argument("--vocab-size", type=int, default=None, help="of the tokenizer trained on the data (default: the preset's)")
    p.add_argument("--skip-bad-lines", action="store_true", help="drop (and count) pairs with an empty side")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _count_or_fraction(value: str) -> int | float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
    return int(number) if number >= 1 and number.is_integer() else number


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mtcore", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("info", help="framework versions and the devices each framework sees")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_info)
    p = sub.add_parser("params", help="a model preset's (or HF checkpoint's) config and parameter count")
    p.add_argument("model", help="preset name (tiny, small, base, marian-en-hu) or HF checkpoint directory")
    p.set_defaults(func=cmd_params)
    p = sub.add_parser("train", help="train one framework epoch by epoch; metrics.json and checkpoints in --out")
    p.add_argument("--framework", default="torch", choices=("torch", "jax"))
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--resume", action="store_true", help="continue the run in --out after its last checkpoint")
    _add_run_options(p)
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("compare", help="train both frameworks from the same weights on the same batches; report.md + plots")
    p.add_argument("--frameworks", default="torch,jax", help="comma list (default torch,jax)")
    p.add_argument("--out", required=True, help="output directory")
    _add_run_options(p)
    p.set_defaults(func=cmd_compare)
    p = sub.add_parser("report", help="rewrite report.md and the plots of a compare directory")
    p.add_argument("dir")
    p.set_defaults(func=cmd_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (MTCoreError, BackendUnavailable) as e:
        print(f"mtcore: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
