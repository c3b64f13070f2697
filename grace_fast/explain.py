"""`grace-fast explain clip.mp4`: where a trained GRACE model looked. `explain` returns the prediction, the motion
weights, the text-conditioned visual mass q and the plans of one clip as arrays; `plot` draws them into a PNG with
one column per tubelet: its first frame, the motion weights over it, q over it, and for each of the top text tokens
the share of its mass that each patch received. Over a clip of a `make-synthetic` folder (version 2 on), every
picture shows where the generator put the action units present in the tubelet (green boxes) and the nuisances that
move there (cyan, dashed: blinks, talking, a stray unit, the head), from its annotations (eval.mechanism).

The text: by default the class-prompt mode of `grace-fast predict` without --caption, where every class is scored
by its own prompt: the figure shows q of the prompts of the top classes and the tokens of the predicted class's
prompt, and the explanation holds every class's plan. A caption is aligned instead, as `predict --caption` does:
its q and its tokens are shown.

q = P^T 1 is the mass that the text sends to each kept visual token (docs/method.md section 4): with semi-relaxed
OT the text decides it, so it shows where the text found itself in the clip. The top tokens: every content token i
carries the same mass a_i = 1 / n, so they are ranked by how concentrated it is: peak_i = max_j P_ij / sum_j P_ij,
the largest share of it that one kept visual token receives.

>>> from grace_fast.predict import Predictor
>>> predictor = Predictor.from_pretrained("runs/demo/best")  # doctest: +SKIP
>>> explanation = explain(predictor, "clip.mp4", top_k=3)  # doctest: +SKIP
>>> explanation.mass.shape, explanation.class_masses.shape, explanation.token_maps.shape  # doctest: +SKIP
(torch.Size([8, 14, 14]), torch.Size([7, 8, 14, 14]), torch.Size([3, 8, 14, 14]))
>>> plot(explanation, "clip.explain.png", title="clip.mp4")  # doctest: +SKIP
"""

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from grace_fast.arguments import DEVICE_HELP, device, integer
from grace_fast.data.synthetic import clip_record
from grace_fast.eval.mechanism import token_frames, tubelet_boxes
from grace_fast.files import write_figure
from grace_fast.model.alignment import Aligned
from grace_fast.predict import Clip, Prediction, Predictor, add_speed_arguments

CELL, LABEL_WIDTH, HEADER, DPI = 1.5, 1.5, 0.8, 100  # inches: one panel, the row labels, the title; dots per inch
BOX_STYLE = {"au": {"edgecolor": "lime", "linestyle": "-"}, "nuisance": {"edgecolor": "cyan", "linestyle": "--"}}


@dataclass
class Explanation:
    """One clip through the model (T' tubelets of H' x W' patches; K kept visual tokens; C classes).

    prediction: label and class probabilities; text: the aligned caption (None: the class-prompt mode); frames:
    [T', S, S, 3] float32 in [0, 1], the first frame of each tubelet as the model saw it (cropped, resized);
    motion_weights: [T', H', W'] float32; kept_index: [K] long, flat (t, h, w) index of each kept token; kept_mask:
    [K] bool.
    The aligned text (the caption, or the predicted class's prompt): mass: [T', H', W'] float32, its q over the patch
    grid (sums to 1; 0 on the patches that were not kept); plan: [R, K] float32 with a row per text token (R = N;
    R = 1 for "cosine", the pooled text); tokens: R labels of the plan's rows (token_labels, with the class of the
    prompt in class-prompt mode); rows_mask: [R] bool, the content rows (no BOS, EOS, padding); top: [k] long, the
    rows of the top tokens; peak: [k] float32, their peak shares; token_maps: [k, T', H', W'] float32, each top
    token's plan row over the patch grid as shares of its mass. All None or empty for alignment "none".
    Class-prompt mode (else None): class_logits: [C] s(V, U_c) / tau_cls; class_plans: [C, Nc, K] float32, each
    class's plan against its own prompt; class_masses: [C, T', H', W'] their q over the grid; shown_classes: [k]
    long, the top classes by probability, whose q `plot` draws.
    regions: for a clip of a synthetic set, [T'] lists of (kind, event, box) drawn on each tubelet's pictures
    (eval.mechanism.tubelet_boxes: kind "au" or "nuisance", box (x0, y0, x1, y1) fractions of the frame); else None.
    """

    prediction: Prediction
    text: str | None
    frames: torch.Tensor
    motion_weights: torch.Tensor
    kept_index: torch.Tensor
    kept_mask: torch.Tensor
    mass: torch.Tensor | None
    plan: torch.Tensor | None
    tokens: list[str]
    rows_mask: torch.Tensor
    top: torch.Tensor
    peak: torch.Tensor
    token_maps: torch.Tensor
    class_logits: torch.Tensor | None = None
    class_plans: torch.Tensor | None = None
    class_masses: torch.Tensor | None = None
    shown_classes: torch.Tensor | None = None
    regions: list[list[tuple[str, str, list[float]]]] | None = None

    def top_tokens(self) -> list[tuple[str, float]]:
        """(label, peak share) of each top token, the most concentrated first."""
        return [(self.tokens[row], peak) for row, peak in zip(self.top.tolist(), self.peak.tolist(), strict=True)]

    def mass_rows(self) -> list[tuple[str, torch.Tensor]]:
        """(label, q [T', H', W']) of each visual mass `plot` draws: the caption's, or each shown class's prompt's."""
        if self.shown_classes is None:
            return [] if self.mass is None else [("q of the caption", self.mass)]
        names = list(self.prediction.probabilities)
        return [(f"q of {names[c]}'s prompt", self.class_masses[c]) for c in self.shown_classes.tolist()]


@torch.inference_mode()
def explain(predictor: Predictor, clip: Clip, caption: str | None = None, top_k: int = 3) -> Explanation:
    """Run one clip (a path, uint8 frames [T, H, W, 3] or model-ready frames) through predictor's model and
    collect what `plot` draws; caption None uses the class prompts (predict's default). top_k: how many text tokens
    (and in class-prompt mode classes) are drawn."""
    if not isinstance(top_k, int) or top_k < 0:
        raise ValueError(f"top_k must be an integer >= 0, got {top_k!r}")
    model = predictor.model
    frames = predictor.load(clip)  # [T, 3, S, S]
    out = predictor.forward(frames[None], None if caption is None else [caption])
    prediction = predictor._prediction(out.logits[0].float().softmax(-1).tolist())

    w = out.motion_weights[0].float().cpu()  # [T', H', W']
    normalization = predictor.transform.normalization
    mean, std = torch.tensor(normalization.mean).view(3, 1, 1), torch.tensor(normalization.std).view(3, 1, 1)
    shown = (frames[:: frames.shape[0] // w.shape[0]] * std + mean).clamp(0, 1).permute(0, 2, 3, 1)
    kept_index, kept_mask = out.selected_index[0].cpu(), out.selected_mask[0].cpu()

    def on_grid(values: torch.Tensor) -> torch.Tensor:
        """[..., K] values of the kept tokens -> [..., T', H', W'], 0 on the patches that were not kept."""
        grid = values.new_zeros(*values.shape[:-1], w.numel())
        grid[..., kept_index[kept_mask]] = values[..., kept_mask]
        return grid.view(*values.shape[:-1], *w.shape)

    classes = {}  # class-prompt mode: every class's plan and mass
    aligned, ids, text_mask, prompt_of = out.caption, out.text_ids, out.text_mask, None
    if caption is None and out.classes is not None:  # the predicted class's prompt is the text shown
        c, prompts = prediction.index, model.text.class_prompts()
        aligned = Aligned(*(x[:, c] for x in out.classes))
        ids, text_mask, prompt_of = prompts.ids[c : c + 1], prompts.mask[c : c + 1], prediction.label
        probabilities = torch.tensor(list(prediction.probabilities.values()))
        classes = {
            "class_logits": out.class_logits[0].float().cpu(),
            "class_plans": out.classes.plan[0].float().cpu(),
            "class_masses": on_grid(out.classes.mass[0].float().cpu()),
            "shown_classes": probabilities.topk(min(top_k, len(probabilities))).indices,
        }

    plan = None if aligned is None or aligned.plan is None else aligned.plan[0].float().cpu()  # [R, K]
    if plan is None:
        tokens, rows_mask, plan_rows = [], torch.zeros(0, dtype=torch.bool), torch.zeros(0, kept_index.shape[0])
    else:
        names = token_labels(model.tokenizer, ids[0].cpu().tolist())
        if prompt_of is not None:
            names = [f"{name} ({prompt_of})" for name in names]
        if plan.shape[0] == len(names):
            tokens, rows_mask = names, text_mask[0].cpu()
        else:  # "cosine": the pooled text is the plan's one row
            tokens, rows_mask = ["(pooled text)"], torch.ones(1, dtype=torch.bool)
        plan_rows = plan / plan.sum(dim=1, keepdim=True).clamp_min(torch.finfo(plan.dtype).tiny)
    peak, top = plan_rows.amax(dim=1).masked_fill(~rows_mask, -1).topk(min(top_k, int(rows_mask.sum())))
    record, regions = clip_record(clip) if isinstance(clip, str | os.PathLike) else None, None
    if record is not None:
        tubelets = token_frames(record["frames"], model.config.frames, model.video.model.config.tubelet_size)
        regions = tubelet_boxes(record["regions"], tubelets)
    return Explanation(
        prediction=prediction,
        text=caption,
        frames=shown.contiguous(),
        motion_weights=w,
        kept_index=kept_index,
        kept_mask=kept_mask,
        mass=None if plan is None else on_grid(aligned.mass[0].float().cpu()),
        plan=plan,
        tokens=tokens,
        rows_mask=rows_mask,
        top=top,
        peak=peak,
        token_maps=on_grid(plan_rows[top]),
        regions=regions,
        **classes,
    )


def token_labels(tokenizer, ids: list[int]) -> list[str]:
    """Each token id as text. When the tokenizer marks word ends as CLIP's does ("</w>"), a piece of a longer word
    is shown in its word: bracketed, or numbered where the piece alone is not whole characters.

    >>> import tempfile
    >>> from transformers import AutoTokenizer
    >>> from grace_fast.model.tiny import build_tiny_tokenizer
    >>> tokenizer = AutoTokenizer.from_pretrained(build_tiny_tokenizer(tempfile.mkdtemp()))
    >>> token_labels(tokenizer, tokenizer("brows frowning, déjà").input_ids)[1:7]
    ['brows', '[frown]ing', 'frown[ing]', ',', 'déjà (1/6)', 'déjà (2/6)']
    """
    raw = tokenizer.convert_ids_to_tokens(ids)
    if not any(token.endswith("</w>") for token in raw):
        return [tokenizer.decode([i]).strip() for i in ids]
    labels, word = [], []

    def end_word():
        pieces = [tokenizer.decode([i]).strip() for i in word]
        if len(word) == 1:
            labels.extend(pieces)
        elif "\ufffd" in "".join(pieces):  # a character split over pieces
            whole = tokenizer.decode(word).strip()
            labels.extend(f"{whole} ({n}/{len(word)})" for n in range(1, len(word) + 1))
        else:
            labels.extend("".join([*pieces[:n], f"[{p}]", *pieces[n + 1 :]]) for n, p in enumerate(pieces))
        word.clear()

    for i, token in zip(ids, raw, strict=True):
        if token in tokenizer.all_special_tokens:
            end_word()
            labels.append(token)
        else:
            word.append(i)
            if token.endswith("</w>"):
                end_word()
    end_word()
    return labels


def figure_size(explanation: Explanation) -> tuple[float, float]:
    """(width, height) in inches of the figure `plot` draws: a CELL per panel, T' columns, and a row for the frames,
    the motion weights, each visual mass and each top token."""
    e = explanation
    columns, rows = e.frames.shape[0], 2 + len(e.mass_rows()) + len(e.top)
    return LABEL_WIDTH + CELL * columns, HEADER + CELL * rows


def plot(explanation: Explanation, path: str | os.PathLike, title: str = "", dpi: int = DPI) -> Path:
    """Draw explanation into a PNG at path (written atomically; figure_size x dpi pixels); returns the path.

    Columns are tubelets. Rows: the frame; the motion weights over it; the visual mass q of the caption, or of the
    prompt of each shown class; one row per top token, the share of its transport mass on each patch. Heat maps are
    drawn per patch over the grey frame on one colour scale per row: the motion weights from their minimum to their
    maximum, a mass or a token's shares from 0 to its peak (the row labels name them).
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from matplotlib.patches import Rectangle

    e = explanation
    width, height = figure_size(e)
    columns, size = e.frames.shape[0], e.frames.shape[1]
    w = e.motion_weights
    heats = [(f"motion weight\n({float(w.min()):.2f} to {float(w.max()):.2f})", w, float(w.min()))]
    heats += [(f"{_short(label, 24)}\n(peak {float(q.max()):.2f})", q, 0.0) for label, q in e.mass_rows()]
    heats += [
        (f"{_short(name, 24)}\n(peak {peak:.2f})", token_map, 0.0)
        for (name, peak), token_map in zip(e.top_tokens(), e.token_maps, strict=True)
    ]
    figure, axes = plt.subplots(len(heats) + 1, columns, figsize=(width, height), squeeze=False)
    margin = 0.05
    figure.subplots_adjust(
        left=LABEL_WIDTH / width,
        right=1 - margin / width,
        top=1 - HEADER / height,
        bottom=margin / height,
        wspace=0.05,
        hspace=0.15,
    )
    for row, (_, heat, low) in enumerate(heats, 1):
        scaled = ((heat - low) / max(float(heat.max()) - low, 1e-12)).clamp(0, 1)  # [T', H', W'] in [0, 1]
        for t in range(columns):
            axes[row, t].imshow(e.frames[t].mean(dim=-1).numpy(), cmap="gray", vmin=0, vmax=1)
            axes[row, t].imshow(  # opaque where high, clear where low, so the face shows through
                scaled[t].numpy(),
                cmap="inferno",
                alpha=0.85 * scaled[t].numpy(),
                extent=(-0.5, size - 0.5, size - 0.5, -0.5),  # the patch grid stretched over the frame's pixels
                interpolation="nearest",
                vmin=0,
                vmax=1,
            )
    for t in range(columns):
        axes[0, t].imshow(e.frames[t].numpy())
        axes[0, t].set_title(f"tubelet {t}", fontsize=8)
        for row in range(len(heats) + 1):
            for kind, _, (x0, y0, x1, y1) in e.regions[t] if e.regions else ():
                corner, width, height = (x0 * size - 0.5, y0 * size - 0.5), (x1 - x0) * size, (y1 - y0) * size
                axes[row, t].add_patch(Rectangle(corner, width, height, fill=False, linewidth=0.8, **BOX_STYLE[kind]))
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    frame = "frame\nboxes: action units\n(green), nuisances\n(cyan)" if e.regions else "frame"
    for row, label in enumerate([frame] + [label for label, _, _ in heats]):
        axes[row, 0].set_ylabel(label, fontsize=8)
    figure.suptitle(heading(e, title), fontsize=9)
    return write_figure(figure, path, dpi=dpi)


def heading(explanation: Explanation, title: str = "") -> str:
    """Two lines: the prediction with the three most probable classes, and the text that was aligned."""
    prediction = explanation.prediction
    top = ", ".join(f"{name} {p:.3f}" for name, p in prediction.top(3))
    if explanation.text is None:
        text = "text: every class's prompt"
    else:
        text = f"text: {_short(explanation.text, 90)!r}"
    return f"{title + ': ' if title else ''}{prediction.label}  ({top})\n{text}"


def _short(text: str, length: int) -> str:
    return text if len(text) <= length else text[: length - 1] + "…"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("clip", help="a video file or a frame folder")
    parser.add_argument("--checkpoint", required=True, help="a trained GRACE checkpoint folder (e.g. RUN/best)")
    parser.add_argument("--out", help="the PNG to write (default: <clip stem>.explain.png in the current folder)")
    parser.add_argument("--caption", help="a text to align with the clip (default: the class prompts, as predict)")
    parser.add_argument(
        "--top-k",
        type=integer(0),
        default=3,
        help="text tokens drawn, the most concentrated first (and without --caption, classes whose q is drawn)",
    )
    parser.add_argument("--device", type=device, default="auto", help=DEVICE_HELP)
    add_speed_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """`grace-fast explain`: print the prediction and the top tokens, write the PNG."""
    predictor = Predictor.from_pretrained(args.checkpoint, device=args.device, dtype=args.dtype, compile=args.compile)
    explanation = explain(predictor, args.clip, args.caption, args.top_k)
    out = Path(args.out) if args.out else Path(f"{Path(args.clip).stem}.explain.png")
    plot(explanation, out, title=Path(args.clip).name)
    print(heading(explanation, args.clip))
    if explanation.class_logits is not None:
        names = list(explanation.prediction.probabilities)
        scores = ", ".join(f"{names[c]} {float(s):.2f}" for c, s in enumerate(explanation.class_logits))
        print(f"class logits (each class's prompt): {scores}")
    tokens = ", ".join(f"{name!r} {peak:.2f}" for name, peak in explanation.top_tokens())
    print(f"top tokens (peak share): {tokens or 'none (no alignment plan)'}")
    print(f"wrote {out}")
    return 0
