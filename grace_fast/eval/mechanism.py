"""Mechanism metrics on the synthetic set, from the regions its generator records (issue 17; docs/method.md
sections 1 and 4): does the motion weighting put its mass on the action units rather than on the nuisances, and
does the text's plan point at the face part that its words name?

Tokens and pixels. A model sees `frames` frames of a clip, the centres of equal segments (data.video.uniform_indices),
as the square that the evaluation transform makes of the (square) synthetic frame. Token (t, h, w) of its
[T', H', W'] grid covers the sampled frames t * tubelet ... (t + 1) * tubelet - 1 and the image fractions
[w / W', (w + 1) / W'] x [h / H', (h + 1) / H'] (`token_footprints`). An event of a clip (an action unit, "blink",
"talk", "stray", "head": `synthetic.region_record`) marks the tokens that overlap one of its part boxes:
- moving, for the motion mass: Delta_t compares tubelets t - 1 and t (Delta_0 = Delta_1), so an event moves at t
  when its level changes by at least MOVING over the frames of both (the head: when its box moves by at least
  HEAD_MOVING of the image side); its tokens at t overlap its boxes in those frames;
- present, for the pointing game: an action unit of the expression is present at t when its level reaches PRESENT
  in a frame of tubelet t; its tokens at t overlap its part's box in those frames.

1. `motion_mass`: the share of a clip's motion-weight mass on the tokens of its moving action units ("au"), and on
   the tokens of its moving nuisances that no moving unit marks ("nuisance"), beside the share of the tokens that
   each holds ("au_area", "nuisance_area": what uniform weights give). Weights (`weight_maps`): "raw", the norm of
   each token's difference from the previous tubelet (the temporal score before normalisation and softmax), and
   ops.motion_weights' "temporal", "spatial" and "both", on the tokens of pixels (`pixel_tokens`) or of a model.
2. `pointing_game`: for each word of a text that names a face part (synthetic.PART_WORDS) moved by an action unit
   present in the clip, a hit when the word's plan row puts its largest mass on a token where that part shows the
   unit; for q = P^T 1, a hit when q's largest mass lands on a token of any such word's part. Chance: the share of
   the kept tokens that are targets.

>>> import numpy as np
>>> token_footprints(np.array([[0.0, 0.0, 0.3, 0.3]]), (4, 4)).astype(int)
array([[1, 1, 0, 0],
       [1, 1, 0, 0],
       [0, 0, 0, 0],
       [0, 0, 0, 0]])
"""

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from grace_fast import ops
from grace_fast.data.layouts import load_clips
from grace_fast.data.synthetic import PART_WORDS, folds, region_record, render_clip, sample_specs
from grace_fast.data.video import uniform_indices
from grace_fast.files import write_atomic
from grace_fast.model.alignment import ALIGNMENTS

MOVING = 0.05  # the level change (0 to 1) over two tubelets that makes an action unit, a blink or talking move
HEAD_MOVING = 0.01  # the head box's move, as a fraction of the image side, that makes the head move
PRESENT = 0.1  # the level at which an action unit is present
TIE = 0.01  # values within this share of the peak tie in the pointing game (Sinkhorn stops at tol 1e-4 in L1)
WEIGHTS = ("raw", "temporal", "spatial", "both")
NUISANCES = ("blink", "talk", "stray", "head")


def token_frames(length: int, frames: int, tubelet: int) -> np.ndarray:
    """[T', tubelet] the clip frames (of `length`) that each tubelet of a model on `frames` frames covers (T' >= 2)."""
    if frames % tubelet or frames < 2 * tubelet:
        raise ValueError(f"frames ({frames}) must be a multiple of tubelet ({tubelet}) and hold two tubelets")
    return uniform_indices(length, frames).reshape(frames // tubelet, tubelet)


def token_footprints(boxes: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """[H', W'] bool: the patches of a grid that overlap one of boxes ([F, 4] (x0, y0, x1, y1) image fractions)."""
    H, W = grid
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    rows = (boxes[:, None, 1] < (np.arange(H) + 1) / H) & (boxes[:, None, 3] > np.arange(H) / H)  # [F, H']
    cols = (boxes[:, None, 0] < (np.arange(W) + 1) / W) & (boxes[:, None, 2] > np.arange(W) / W)  # [F, W']
    return (rows[:, :, None] & cols[:, None, :]).any(axis=0)


def active_frames(record: dict, event: str, tubelets: np.ndarray, t: int, moving: bool) -> np.ndarray | None:
    """The frames whose boxes mark an event of a clip's region record at tubelet t (see the module doc), None when
    the event is not active there: moving over tubelets t - 1 and t (0 and 1 for t = 0), or present in t."""
    if moving:
        frames = tubelets[[0, 1] if t == 0 else [t - 1, t]].ravel()
        if event == "head":
            head = np.asarray(record["boxes"]["head"])[frames]
            return frames if (head.max(axis=0) - head.min(axis=0)).max() >= HEAD_MOVING else None
        level = np.asarray(record["levels"][event])[frames]
        return frames if level.max() - level.min() >= MOVING else None
    level = np.asarray(record["levels"][event])[tubelets[t]]
    return tubelets[t][level >= PRESENT] if level.max() >= PRESENT else None


def event_tokens(record: dict, event: str, tubelets: np.ndarray, grid: tuple[int, int], moving: bool) -> np.ndarray:
    """[T', H', W'] bool: the tokens of one event of a clip's region record (see the module doc), moving or present;
    tubelets: `token_frames`."""
    out = np.zeros((len(tubelets), *grid), dtype=bool)
    for t in range(len(tubelets)):
        frames = active_frames(record, event, tubelets, t, moving)
        if frames is not None:
            boxes = [np.asarray(record["boxes"][part])[frames] for part in record["parts"][event]]
            out[t] = token_footprints(np.concatenate(boxes), grid)
    return out


def tubelet_boxes(record: dict, tubelets: np.ndarray) -> list[list[tuple[str, str, list[float]]]]:
    """What `grace-fast explain` draws on the first frame of each tubelet: [(kind, event, box)] per tubelet, kind
    "au" for the part boxes of each action unit present there and "nuisance" for those of each moving nuisance, box
    (x0, y0, x1, y1) image fractions at that frame."""
    out = []
    for t, frames in enumerate(tubelets):
        drawn = []
        for event, parts in record["parts"].items():
            kind = "nuisance" if event in NUISANCES else "au"
            if active_frames(record, event, tubelets, t, moving=kind == "nuisance") is not None:
                drawn += [(kind, event, record["boxes"][part][frames[0]]) for part in parts]
        out.append(drawn)
    return out


def moving_regions(record: dict, tubelets: np.ndarray, grid: tuple[int, int]) -> dict[str, np.ndarray]:
    """{"au", "nuisance"}: [T', H', W'] bool, the tokens of the moving action units of the expression, and those of
    the moving nuisances that no moving action unit marks."""
    empty = np.zeros((len(tubelets), *grid), dtype=bool)
    units = [name for name in record["parts"] if name not in NUISANCES]
    au = np.any([empty, *(event_tokens(record, name, tubelets, grid, moving=True) for name in units)], axis=0)
    events = [name for name in NUISANCES if name in record["parts"]]
    nuisance = np.any([empty, *(event_tokens(record, name, tubelets, grid, moving=True) for name in events)], axis=0)
    return {"au": au, "nuisance": nuisance & ~au}


def pixel_tokens(frames: np.ndarray, tubelet: int, patch: int) -> torch.Tensor:
    """The frames as tokens of pixels: [T, S, S, 3] (uint8 or float) -> [1, T / tubelet, S / patch, S / patch,
    tubelet patch patch 3] float32, each token the pixel values (0 to 1 for uint8) it covers."""
    T, H, W, C = frames.shape
    if T % tubelet or H % patch or W % patch:
        raise ValueError(f"frames {frames.shape} must split into tubelets of {tubelet} and patches of {patch}")
    x = torch.as_tensor(np.asarray(frames, dtype=np.float32) / (255 if frames.dtype == np.uint8 else 1))
    x = x.view(T // tubelet, tubelet, H // patch, patch, W // patch, patch, C).permute(0, 2, 4, 1, 3, 5, 6)
    return x.reshape(1, T // tubelet, H // patch, W // patch, -1)


def weight_maps(X: torch.Tensor) -> dict[str, torch.Tensor]:
    """{WEIGHTS name: [T', H', W'] float32} of one clip's tokens X [1, T', H', W', D] (T' >= 2): "raw" the norm of
    Delta_t (Delta_0 = Delta_1), the others ops.motion_weights' w in that mode."""
    delta = torch.diff(X.float(), dim=1)
    maps = {"raw": torch.linalg.vector_norm(torch.cat([delta[:, :1], delta], dim=1), dim=-1)[0]}
    for mode in WEIGHTS[1:]:
        maps[mode] = ops.motion_weights(X, mode=mode)[1][0].float()
    return maps


def motion_mass(weights: dict[str, torch.Tensor], regions: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """{weights name: {"au", "nuisance": share of the mass; "au_area", "nuisance_area": share of the tokens}} of one
    clip: weights from `weight_maps`, regions from `moving_regions` (all [T', H', W'])."""
    out = {}
    for name, w in weights.items():
        w = w.double().cpu().numpy()
        total = max(w.sum(), np.finfo(np.float64).tiny)
        out[name] = {region: float(w[mask].sum() / total) for region, mask in regions.items()}
        out[name].update({f"{region}_area": float(mask.mean()) for region, mask in regions.items()})
    return out


def part_word_rows(tokens: list[str]) -> list[tuple[int, str]]:
    """(row, face part) of each text token that belongs to a word of PART_WORDS. tokens: the tokenizer's tokens
    (convert_ids_to_tokens) in CLIP's convention, where a word's last piece ends with "</w>"."""
    out, word = [], []
    for row, token in enumerate(tokens):
        if token.startswith("<|"):  # BOS, EOS and padding end a word and belong to none
            word = []
            continue
        word.append(row)
        if token.endswith("</w>"):
            text = "".join(tokens[r] for r in word).removesuffix("</w>").lower()
            out += [(r, PART_WORDS[text]) for r in word if text in PART_WORDS]
            word = []
    return out


def part_targets(record: dict, part: str, tubelets: np.ndarray, grid: tuple[int, int]) -> np.ndarray | None:
    """[T', H', W'] bool: the tokens where `part` shows an action unit of the expression that is present there;
    None when no such unit is present in any tubelet (a unit of small weight may never reach PRESENT)."""
    units = [name for name, parts in record["parts"].items() if name not in NUISANCES and part in parts]
    sub = {**record, "parts": {name: [part] for name in units}}
    target = np.any(
        [np.zeros((len(tubelets), *grid), dtype=bool)]
        + [event_tokens(sub, name, tubelets, grid, moving=False) for name in units],
        axis=0,
    )
    return target if target.any() else None


def word_targets(tokens: list[str], record: dict, tubelets: np.ndarray, grid: tuple[int, int]) -> list:
    """[(row, target [T', H', W'] bool)] of a text's part words (tokens as `part_word_rows` takes them) whose part
    shows a present action unit of the clip (record: its region record; `part_targets`)."""
    found = [(row, part_targets(record, part, tubelets, grid)) for row, part in part_word_rows(tokens)]
    return [(row, target) for row, target in found if target is not None]


def pointing_game(
    plan: torch.Tensor, mass: torch.Tensor, kept_index: torch.Tensor, kept_mask: torch.Tensor, words: list
) -> dict[str, list]:
    """Hits of one (clip, text): plan [R, K] and mass q [K] over the K kept tokens (kept_index [K] flat (t, h, w)
    indices, kept_mask [K] bool); words: [(row, target [T', H', W'] bool)] of the text's part words with a target.
    Returns {"rows": [hit per word], "q": [hit] (empty without words), "chance_rows": [target share of the kept
    tokens per word], "chance_q": [that of the union]}; a hit is 1.0 or 0.0 (see `_hit` for ties)."""
    kept = kept_index[kept_mask].numpy()
    if not words:
        return {"rows": [], "q": [], "chance_rows": [], "chance_q": []}
    plan, mass = plan[:, kept_mask].float(), mass[kept_mask].float()
    union = np.any([target for _, target in words], axis=0).reshape(-1)[kept]
    hits, chances = [], []
    for row, target in words:
        on_target = target.reshape(-1)[kept]
        hits.append(_hit(plan[row], on_target))
        chances.append(float(on_target.mean()))
    return {"rows": hits, "q": [_hit(mass, union)], "chance_rows": chances, "chance_q": [float(union.mean())]}


def _hit(values: torch.Tensor, on_target: np.ndarray) -> float:
    """Whether the largest of values [K] is on a target token ([K] bool): 1 or 0, and under a tie (within TIE of the
    peak) the share of the tied tokens on target, a random pick among them. Balanced OT's q is b up to the solver's
    tolerance: with a uniform b every token ties."""
    peak = (values >= (1 - TIE) * values.max()).numpy()
    return float(on_target[peak].mean())


def mean_shares(per_clip: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float | int]]:
    """{weights name: means of `motion_mass` over the clips}: each region's share and area averaged over the clips
    where that region holds a token ("au_clips", "nuisance_clips" count them)."""
    out = {}
    for name in per_clip[0] if per_clip else ():
        out[name] = {}
        for region in ("au", "nuisance"):
            held = [clip[name] for clip in per_clip if clip[name][f"{region}_area"] > 0]
            out[name][region] = float(np.mean([c[region] for c in held])) if held else None
            out[name][f"{region}_area"] = float(np.mean([c[f"{region}_area"] for c in held])) if held else None
            out[name][f"{region}_clips"] = len(held)
    return out


def synthetic_motion_mass(
    clips: int, seed: int, fold: int = 1, *, size: int = 112, frames: int = 16, tubelet: int = 2, patch: int = 8
) -> dict:
    """The motion mass on tokens of pixels over the test fold of `make-synthetic --clips --seed` (clips rendered at
    size x size, no codec), on the grid of a model with frames / tubelet tubelets and patches of `patch` pixels (the
    defaults give the paper's 8 x 14 x 14 grid) -> {"measured", "grid", "weights": `mean_shares`}: measured clips."""
    specs = sample_specs(clips, seed)
    tested = [spec for spec, f in zip(specs, folds(specs, seed), strict=True) if f == fold]
    grid = (size // patch, size // patch)
    per_clip = []
    for spec in tested:
        tubelets = token_frames(spec.frames, frames, tubelet)
        X = pixel_tokens(render_clip(spec, size)[tubelets.ravel()], tubelet, patch)
        per_clip.append(motion_mass(weight_maps(X), moving_regions(region_record(spec), tubelets, grid)))
    return {"measured": len(tested), "grid": [len(tubelets), *grid], "weights": mean_shares(per_clip)}


POINTED = ("ot", "ot_balanced", "cross_attention")  # the alignments with a plan row per text token


@torch.inference_mode()
def model_mechanism(predictor, root, fold: int = 1, split: str = "test", limit: int | None = None) -> dict:
    """The mechanism metrics of a trained model on a `make-synthetic` folder's clips (the split of `fold`):
    {"measured": clips, "motion": `mean_shares` on the model's video tokens, "pointing": {alignment: {"caption",
    "class prompt": `mean_hits`}}}. predictor: a grace_fast.predict.Predictor (its load and forward). The pointing
    game runs for the model's own alignment and, for OT, the other OT on the same weights (semi-relaxed "ot" and
    balanced "ot_balanced" differ by tau_b alone; cross-attention only for a model trained with it, since its
    attention weights are learnt); on a caption's part words, and on those of the prompt of the clip's true class
    (the config's class_prompts in the data set's class order)."""
    model, config = predictor.model, predictor.model.config
    records = {r["clip"]: r for r in map(json.loads, (Path(root) / "annotations.jsonl").read_text().splitlines())}
    own = model.alignment
    swaps = {config.alignment: own} if config.alignment in POINTED else {}
    if config.alignment in ("ot", "ot_balanced"):
        other = "ot_balanced" if config.alignment == "ot" else "ot"
        swaps[other] = ALIGNMENTS[other](config).to(next(model.parameters()).device)
    tubelet, grid = model.video.model.config.tubelet_size, model.video.grid[1:]
    prompts = model.text.class_prompts() if model.text.prompts is not None else None
    clips = load_clips("synthetic", root, fold=fold, split=split).clips[:limit]

    def tokens(ids: torch.Tensor) -> list[str]:
        return model.tokenizer.convert_ids_to_tokens(ids.tolist())

    motion, hits = [], {name: {"caption": [], "class prompt": []} for name in swaps}
    try:
        for clip in clips:
            record = records[clip.id]
            tubelets = token_frames(record["frames"], config.frames, tubelet)
            regions = record["regions"]
            frames = predictor.load(clip.path)[None]
            X = model.video(frames.to(predictor.device))
            motion.append(motion_mass(weight_maps(X), moving_regions(regions, tubelets, grid)))

            for name, alignment in swaps.items():
                model.alignment = alignment
                out = predictor.forward(frames, [clip.caption or ""])
                index, mask = out.selected_index[0].cpu(), out.selected_mask[0].cpu()
                words = word_targets(tokens(out.text_ids[0]), regions, tubelets, grid)
                caption = out.caption
                hits[name]["caption"].append(
                    pointing_game(caption.plan[0].cpu(), caption.mass[0].cpu(), index, mask, words)
                )
                if prompts is not None:
                    c, classes = clip.label, out.classes
                    words = word_targets(tokens(prompts.ids[c]), regions, tubelets, grid)
                    hits[name]["class prompt"].append(
                        pointing_game(classes.plan[0, c].cpu(), classes.mass[0, c].cpu(), index, mask, words)
                    )
    finally:
        model.alignment = own
    return {
        "measured": len(clips),
        "motion": mean_shares(motion),
        "pointing": {
            name: {text: mean_hits(results) for text, results in texts.items()} for name, texts in hits.items()
        },
    }


def mean_hits(results: list[dict[str, list]]) -> dict[str, float | int | None]:
    """Hit rates of `pointing_game` results pooled over (clip, text) pairs: "rows" and "rows_chance" over the part
    words, "q" and "q_chance" over the texts with one, and their counts "words" and "texts"."""
    pooled = {key: [v for r in results for v in r[key]] for key in ("rows", "q", "chance_rows", "chance_q")}
    rate = {key: float(np.mean(values)) if values else None for key, values in pooled.items()}
    return {
        "rows": rate["rows"],
        "rows_chance": rate["chance_rows"],
        "q": rate["q"],
        "q_chance": rate["chance_q"],
        "words": len(pooled["rows"]),
        "texts": len(pooled["q"]),
    }


def pointing_table(pointing: dict[str, dict[str, dict]]) -> str:
    """A markdown table of `model_mechanism`'s "pointing": hit rates and chance per alignment and text."""
    lines = ["| alignment | text | word hits % | chance % | q hits % | chance % | words | texts |"]
    lines.append("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, texts in pointing.items():
        for text, m in texts.items():
            cells = [m["rows"], m["rows_chance"], m["q"], m["q_chance"]]
            shown = " | ".join("-" if v is None else f"{100 * v:.1f}" for v in cells)
            lines.append(f"| {name} | {text} | {shown} | {m['words']} | {m['texts']} |")
    return "\n".join(lines)


def mechanism_report(result: dict) -> str:
    """`model_mechanism`'s result as two markdown tables with a line of explanation each."""
    return "\n".join(
        [
            f"motion mass on the model's video tokens ({result['measured']} test clips; a share of the mass above "
            "the share of the tokens means the weighting favours them):",
            motion_table(result["motion"]),
            "OT pointing game (the largest plan mass of each part word, and of q, on that part where its action "
            "unit shows; chance: the target's share of the kept tokens):",
            pointing_table(result["pointing"]),
        ]
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m grace_fast.eval.mechanism",
        description="The motion mass on action units and nuisances, on tokens of pixels of the synthetic set.",
    )
    parser.add_argument("--clips", type=int, default=1000, help="clips of the synthetic set (default 1000, the demo's)")
    parser.add_argument("--seed", type=int, default=0, help="its seed (default 0)")
    parser.add_argument("--fold", type=int, default=1, help="the fold whose clips are measured (default 1)")
    parser.add_argument("--size", type=int, default=112, help="frame side in pixels (default 112: 14 x 14 patches)")
    parser.add_argument("--out", help="a JSON file to write the record to")
    args = parser.parse_args(argv)
    result = synthetic_motion_mass(args.clips, args.seed, args.fold, size=args.size)
    record = {"measure": "motion mass on pixel tokens (grace_fast.eval.mechanism)", **vars(args), **result}
    record.pop("out")
    print(motion_table(result["weights"]))
    if args.out:
        write_atomic(Path(args.out), (json.dumps(record, indent=1) + "\n").encode())
    return 0


def motion_table(weights: dict[str, dict]) -> str:
    """A markdown table of `mean_shares`: the share of the mass and of the tokens on action units and nuisances."""
    lines = [
        "| weights | mass on AU % | AU tokens % | mass on nuisance % | nuisance tokens % |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, m in weights.items():
        cells = [m["au"], m["au_area"], m["nuisance"], m["nuisance_area"]]
        lines.append(f"| {name} | " + " | ".join("-" if v is None else f"{100 * v:.1f}" for v in cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
