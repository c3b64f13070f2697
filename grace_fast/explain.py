"""`grace-fast explain clip.mp4`: where a trained GRACE model looked. `explain` returns the prediction, the motion
weights and the OT plan of one clip as arrays; `plot` draws them into a PNG with one column per tubelet: its first
frame, the motion weights over it, and for each of the top text tokens the share of its transport mass that
each patch received.

The text: by default the class-prompt mode of `grace-fast predict` without --caption (the prompts of the
auxiliary head's top prompt_top_k classes are aligned with the clip), so the prediction is predict's; a caption
aligns that text instead, as `predict --caption` does.

The top tokens: in the OT plan every content token i carries the same mass a_i = 1 / n (the uniform text
marginal), so they are ranked by how concentrated that mass is: peak_i = max_j P_ij / sum_j P_ij, the largest
share of it that one kept visual token receives.

>>> from grace_fast.predict import Predictor
>>> predictor = Predictor.from_pretrained("runs/demo/best")  # doctest: +SKIP
>>> explanation = explain(predictor, "clip.mp4", top_k=3)  # doctest: +SKIP
>>> explanation.motion_weights.shape, explanation.token_maps.shape  # doctest: +SKIP
(torch.Size([8, 14, 14]), torch.Size([3, 8, 14, 14]))
>>> plot(explanation, "clip.explain.png", title="clip.mp4")  # doctest: +SKIP
"""

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from grace_fast.arguments import DEVICE_HELP, device, integer
from grace_fast.files import write_figure
from grace_fast.predict import Clip, Prediction, Predictor, add_speed_arguments

CELL, LABEL_WIDTH, HEADER, DPI = 1.5, 1.5, 0.8, 100  # inches: one panel, the row labels, the title; dots per inch


@dataclass
class Explanation:
    """One clip through the model (T' tubelets of H' x W' patches; K kept visual tokens; N text tokens).

    prediction: label and class probabilities; text: the aligned caption (None: the class prompts of
    prompt_classes); frames: [T', S, S, 3] float32 in [0, 1], the first frame of each tubelet as the model saw it
    (cropped, resized); motion_weights: [T', H', W'] float32; plan: [R, K] float32, the OT plan with a row per text
    token (R = N; attention weights for "cross_attention"; R = 1 for "cosine", the pooled text; None for "none");
    kept_index: [K] long, flat (t, h, w) index of each kept token; kept_mask: [K] bool; tokens: R labels of the
    plan's rows (token_labels, with the class of its prompt in the class-prompt mode); rows_mask: [R] bool, the
    content rows (no BOS, EOS, padding); top: [k] long, the rows of the top tokens; peak: [k] float32, their peak
    shares; token_maps: [k, T', H', W'] float32, each top token's plan row over the patch grid as shares of its
    mass (summing to 1; 0 on the patches that were not kept).
    """

    prediction: Prediction
    text: str | None
    prompt_classes: list[str] | None
    frames: torch.Tensor
    motion_weights: torch.Tensor
    plan: torch.Tensor | None
    kept_index: torch.Tensor
    kept_mask: torch.Tensor
    tokens: list[str]
    rows_mask: torch.Tensor
    top: torch.Tensor
    peak: torch.Tensor
    token_maps: torch.Tensor

    def top_tokens(self) -> list[tuple[str, float]]:
        """(label, peak share) of each top token, the most concentrated first."""
        return [(self.tokens[row], peak) for row, peak in zip(self.top.tolist(), self.peak.tolist(), strict=True)]


@torch.inference_mode()
def explain(predictor: Predictor, clip: Clip, caption: str | None = None, top_k: int = 3) -> Explanation:
    """Run one clip (a path, uint8 frames [T, H, W, 3] or model-ready frames) through predictor's model and
    collect what `plot` draws; caption None uses the class prompts (predict's default)."""
    if not isinstance(top_k, int) or top_k < 0:
        raise ValueError(f"top_k must be an integer >= 0, got {top_k!r}")
    model = predictor.model
    frames = predictor.load(clip)  # [T, 3, S, S]
    out = predictor.forward(frames[None], None if caption is None else [caption])
    prediction = predictor._prediction(out.logits[0].float().softmax(-1).tolist())

    w = out.motion_weights[0].float().cpu()  # [T', H', W']
    tubelets, grid = w.shape[0], w[0].numel()
    normalization = predictor.transform.normalization
    mean, std = torch.tensor(normalization.mean).view(3, 1, 1), torch.tensor(normalization.std).view(3, 1, 1)
    shown = (frames[:: frames.shape[0] // tubelets] * std + mean).clamp(0, 1).permute(0, 2, 3, 1)

    ids, text_mask = out.text_ids[0].cpu(), out.text_mask[0].cpu()
    names = token_labels(model.tokenizer, ids.tolist())
    prompt_classes = None
    if out.prompt_classes is not None:
        prompt_classes = [predictor.classes[c] for c in out.prompt_classes[0].tolist()]
        per_prompt = len(names) // len(prompt_classes)
        names = [f"{name} ({prompt_classes[p // per_prompt]})" for p, name in enumerate(names)]

    kept_index, kept_mask = out.selected_index[0].cpu(), out.selected_mask[0].cpu()
    plan = None if out.plan is None else out.plan[0].float().cpu()  # [R, K]
    if plan is None:
        tokens, rows_mask, plan_rows = [], torch.zeros(0, dtype=torch.bool), torch.zeros(0, kept_index.shape[0])
    else:
        if plan.shape[0] == len(names):
            tokens, rows_mask = names, text_mask
        else:  # "cosine": the pooled text is the plan's one row
            tokens, rows_mask = ["(pooled text)"], torch.ones(1, dtype=torch.bool)
        plan_rows = plan / plan.sum(dim=1, keepdim=True).clamp_min(torch.finfo(plan.dtype).tiny)
    peak, top = plan_rows.amax(dim=1).masked_fill(~rows_mask, -1).topk(min(top_k, int(rows_mask.sum())))
    token_maps = torch.zeros(len(top), tubelets * grid)
    token_maps[:, kept_index[kept_mask]] = plan_rows[top][:, kept_mask]
    return Explanation(
        prediction=prediction,
        text=caption,
        prompt_classes=prompt_classes,
        frames=shown.contiguous(),
        motion_weights=w,
        plan=plan,
        kept_index=kept_index,
        kept_mask=kept_mask,
        tokens=tokens,
        rows_mask=rows_mask,
        top=top,
        peak=peak,
        token_maps=token_maps.view(len(top), *w.shape),
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
    """(width, height) in inches of the figure `plot` draws: a CELL per panel, T' columns and 2 + k rows."""
    columns, rows = explanation.frames.shape[0], 2 + len(explanation.top)
    return LABEL_WIDTH + CELL * columns, HEADER + CELL * rows


def plot(explanation: Explanation, path: str | os.PathLike, title: str = "", dpi: int = DPI) -> Path:
    """Draw explanation into a PNG at path (written atomically; figure_size x dpi pixels); returns the path.

    Columns are tubelets. Rows: the frame; the motion weights over it; one row per top token, the share of its
    transport mass on each patch. Heat maps are drawn per patch over the grey frame on one colour scale per row:
    the motion weights from their minimum to their maximum, a token's shares from 0 to its peak (the row labels
    name them).
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    e = explanation
    width, height = figure_size(e)
    columns, size = e.frames.shape[0], e.frames.shape[1]
    w = e.motion_weights
    heats = [(f"motion weight\n({float(w.min()):.2f} to {float(w.max()):.2f})", w, float(w.min()))]
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
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    for row, label in enumerate(["frame"] + [label for label, _, _ in heats]):
        axes[row, 0].set_ylabel(label, fontsize=8)
    figure.suptitle(heading(e, title), fontsize=9)
    return write_figure(figure, path, dpi=dpi)


def heading(explanation: Explanation, title: str = "") -> str:
    """Two lines: the prediction with the three most probable classes, and the text that was aligned."""
    prediction = explanation.prediction
    top = ", ".join(f"{name} {p:.3f}" for name, p in prediction.top(3))
    if explanation.text is None:
        text = f"text: the class prompts of {', '.join(explanation.prompt_classes or [])}"
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
    parser.add_argument("--top-k", type=integer(0), default=3, help="text tokens drawn, the most concentrated first")
    parser.add_argument("--device", type=device, default="auto", help=DEVICE_HELP)
    add_speed_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """`grace-fast explain`: print the prediction and the top tokens, write the PNG."""
    predictor = Predictor.from_pretrained(args.checkpoint, device=args.device, dtype=args.dtype, compile=args.compile)
    explanation = explain(predictor, args.clip, args.caption, args.top_k)
    out = Path(args.out) if args.out else Path(f"{Path(args.clip).stem}.explain.png")
    plot(explanation, out, title=Path(args.clip).name)
    print(heading(explanation, args.clip))
    tokens = ", ".join(f"{name!r} {peak:.2f}" for name, peak in explanation.top_tokens())
    print(f"top tokens (peak share): {tokens or 'none (no alignment plan)'}")
    print(f"wrote {out}")
    return 0
