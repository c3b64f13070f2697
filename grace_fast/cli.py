"""The `grace-fast` command line: one sub-command per job, each defined in the module that does the job.

A sub-command module provides `add_arguments(parser)` and `run(args) -> int`; only the chosen one is imported.
"""

import argparse
import importlib
import sys

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "caption": ("grace_fast.text.captioner", "caption clips with a local Video-LLaVA, or import captions (CATE)"),
    "demo": ("grace_fast.demo", "the main job: synthetic set, tiny GRACE and its ablations trained and tested on CPU"),
    "coarse-labels": ("grace_fast.text.coarse_labels", "top-k emotions per clip from a baseline classifier (CATE)"),
    "make-synthetic": ("grace_fast.data.synthetic", "write the synthetic DFER set: mp4 faces in DFEW's layout"),
    "evaluate": ("grace_fast.eval.evaluate", "UAR, WAR, per-class recall and confusion matrix of a checkpoint"),
    "explain": ("grace_fast.explain", "PNG of a clip's frames, motion weights and OT plan of its top text tokens"),
    "predict": ("grace_fast.predict", "the emotion of each clip from a trained checkpoint"),
    "refine": ("grace_fast.text.refiner", "rewrite captions into emotion-aware descriptions with an LLM (CATE)"),
    "train": ("grace_fast.train.run", "train GRACE (one fold or the k-fold protocol), select on validation, test"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="grace-fast", description="GRACE dynamic facial expression recognition.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        command = sub.add_parser(name, help=help_text, description=help_text)
        if argv and argv[0] == name:
            job = importlib.import_module(module)
            job.add_arguments(command)
            command.set_defaults(run=job.run)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
